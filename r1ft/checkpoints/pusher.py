"""`last-checkpoint/` at the destination, pushed during training: every R1FT_PUSH_CHECKPOINT_EVERY saves,
in a background thread; a failed push is logged and retried at the next interval, never stopping
training. A save that comes while a push is still running is not pushed then: `push_latest`, after
training and after a stop, waits for the push in flight and pushes the newest checkpoint, so that
`last-checkpoint/` always ends at it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from r1ft.checkpoints import markers as checkpoints
from r1ft.publish.checkpoint import push_checkpoint
from r1ft.publish.retry import DEFAULT_RETRY, RetryPolicy
from r1ft.settings import Settings

log = logging.getLogger(__name__)


class CheckpointPusher:
    """Pushes the newest complete checkpoint as `last-checkpoint/` every N saves, off the training thread."""

    def __init__(self, settings: Settings, run_dir: Path, every: int):
        self.settings, self.run_dir, self.every = settings, run_dir, every
        self.saves = 0
        self.pushed_step = -1
        self.failures = 0
        self.last_error = ""  # why the latest push failed ('' after a success)
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
        retry = retry or RetryPolicy(attempts=2, initial_s=1.0, max_s=5.0, sdk_attempts=2)

        with self._lock:
            ckpt = checkpoints.newest_complete(self.run_dir / "checkpoints", deep=False)
            if ckpt is None or checkpoints.step_of(ckpt) == self.pushed_step:
                return ckpt is not None
            try:
                push_checkpoint(self.settings, ckpt, run_id=self.run_dir.name, retry=retry)
            except Exception as e:
                self.failures += 1
                self.last_error = str(e)
                log.warning("checkpoint push failed (%s); training goes on, retrying at the next interval", e)
                return False
            self.pushed_step = checkpoints.step_of(ckpt) or 0
            self.last_error = ""
            return True

    def newest_step(self) -> int:
        """The step of the newest complete checkpoint on disk (0: none)."""
        ckpt = checkpoints.newest_complete(self.run_dir / "checkpoints", deep=False)
        return (checkpoints.step_of(ckpt) or 0) if ckpt is not None else 0

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
    """Push the newest checkpoint now (after training or an interruption), waiting for any push in flight;
    whether last-checkpoint/ now holds it (also with R1FT_PUSH_CHECKPOINT_EVERY=0, which only turns off the
    pushes during training)."""
    pusher.wait()
    return pusher.push_now(retry=DEFAULT_RETRY)
