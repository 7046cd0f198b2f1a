"""Resume and remote checkpoints: where a run starts from, and `last-checkpoint/` pushes during training.

A run resumes from the newest complete checkpoint in its own run directory (the run id is derived from
the settings that shape training and the data, or set with R1FT_RUN_ID, so a directory only ever holds
one run's checkpoints); else from `last-checkpoint/` at the destination when it belongs to the same run
(a fresh instance after preemption). Pushes happen every R1FT_PUSH_CHECKPOINT_EVERY saves in a background
thread; a failed push is logged and retried at the next interval, never stopping training.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from r1ft.checkpoints import markers as checkpoints
from r1ft.settings import Settings

log = logging.getLogger("r1ft")


@dataclass
class ResumePoint:
    checkpoint: Path | None = None
    source: str = ""  # "", "local", "destination"
    step: int = 0

    def as_dict(self) -> dict:
        return {"checkpoint": str(self.checkpoint or ""), "source": self.source, "step": self.step}


def marker_run_id(ckpt: Path) -> str:
    try:
        return json.loads((ckpt / checkpoints.MARKER).read_text()).get("run_id", "")
    except (OSError, ValueError):
        return ""


def find_resume_point(settings: Settings, run_dir: Path, run_id: str | None = None) -> ResumePoint:
    """The newest complete local checkpoint, else the destination's `last-checkpoint/` of the same run."""
    run_id = run_id or run_dir.name
    local = checkpoints.newest_complete(run_dir / "checkpoints")
    if local is not None:
        point = ResumePoint(local, "local", checkpoints.step_of(local) or 0)
        log.info("resuming from local %s (step %d)", local.name, point.step)
        return point
    remote = _fetch_remote(settings, run_dir, run_id)
    if remote is not None:
        point = ResumePoint(remote, "destination", checkpoints.step_of(remote) or 0)
        log.info("resuming from the destination's last-checkpoint/ (step %d)", point.step)
        return point
    log.info("starting from scratch: no complete checkpoint of run %s here or at the destination", run_id)
    return ResumePoint()


def _fetch_remote(settings: Settings, run_dir: Path, run_id: str) -> Path | None:
    from r1ft.publish.destinations import fetch_last_checkpoint

    staging = run_dir / "checkpoints" / ".remote"
    try:
        got = fetch_last_checkpoint(settings, staging, run_id=run_id)
    except Exception as e:  # an unreachable destination must not stop a fresh start
        log.warning("could not look for last-checkpoint/ at the destination: %s", e)
        return None
    if got is None:
        return None
    if checkpoints.check_complete(got) or marker_run_id(got) != run_id:
        log.warning("the destination's last-checkpoint/ belongs to another run or is incomplete; ignoring it")
        shutil.rmtree(staging, ignore_errors=True)
        return None
    step = json.loads((got / checkpoints.MARKER).read_text()).get("global_step", 0)
    final = run_dir / "checkpoints" / f"checkpoint-{step}"
    shutil.rmtree(final, ignore_errors=True)
    got.replace(final)
    shutil.rmtree(staging, ignore_errors=True)
    return final


class CheckpointPusher:
    """Pushes the newest complete checkpoint as `last-checkpoint/` every N saves, off the training thread."""

    def __init__(self, settings: Settings, run_dir: Path, every: int):
        self.settings, self.run_dir, self.every = settings, run_dir, every
        self.saves = 0
        self.pushed_step = -1
        self.failures = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def on_save(self) -> None:
        self.saves += 1
        if self.every and self.saves % self.every == 0:
            self.push_async()

    def push_async(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            log.info("previous checkpoint push still running; will push at the next interval")
            return
        self._thread = threading.Thread(target=self.push_now, name="r1ft-checkpoint-push", daemon=True)
        self._thread.start()

    def push_now(self, retry=None) -> bool:
        """Push the newest complete checkpoint unless it is already there. Periodic pushes use a short retry
        policy (the next interval is their retry); the push after an interruption uses the full one."""
        from r1ft.publish.destinations import RetryPolicy, push_checkpoint

        retry = retry or RetryPolicy(attempts=2, initial_s=1.0, max_s=5.0, sdk_attempts=2)

        with self._lock:
            ckpt = checkpoints.newest_complete(self.run_dir / "checkpoints", deep=False)
            if ckpt is None or checkpoints.step_of(ckpt) == self.pushed_step:
                return ckpt is not None
            try:
                push_checkpoint(self.settings, ckpt, run_id=self.run_dir.name, retry=retry)
            except Exception as e:
                self.failures += 1
                log.warning("checkpoint push failed (%s); training goes on, retrying at the next interval", e)
                return False
            self.pushed_step = checkpoints.step_of(ckpt) or 0
            return True

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def pusher_callback(pusher: CheckpointPusher):
    from transformers import TrainerCallback

    class CheckpointPushCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                pusher.on_save()
            return control

    return CheckpointPushCallback()


def push_latest(pusher: CheckpointPusher) -> bool:
    """Push the newest checkpoint now (after an interruption), waiting for any push in flight."""
    from r1ft.publish.destinations import DEFAULT_RETRY

    pusher.wait()
    return pusher.push_now(retry=DEFAULT_RETRY)
