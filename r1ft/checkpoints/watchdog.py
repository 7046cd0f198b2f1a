"""Disk watchdog: keeps the whole job inside its disk budget.

It measures the directory the job actually writes (the work dir: Hub caches, data, checkpoints, outputs)
and the free space of the filesystem under it, from a thread every few seconds and at every save. It
prunes checkpoints beyond the keep count; above the high-water mark it keeps only the newest complete
one; if usage still exceeds the budget, it asks the Trainer to save and stop, and the job exits 4 after
publishing what exists.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from r1ft.checkpoints import markers as checkpoints

log = logging.getLogger(__name__)
GB = 1e9


def dir_bytes(root: Path) -> int:
    """Bytes allocated under root (files only; links not followed); vanishing files are ignored."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            total += max(st.st_size, getattr(st, "st_blocks", 0) * 512)
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds path (its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


@dataclass
class DiskState:
    budget_bytes: int
    floor_bytes: int
    peak_bytes: int = 0
    last_bytes: int = 0
    over_budget: bool = False
    reason: str = ""
    pruned: list[str] = field(default_factory=list)
    emergency_prunes: int = 0


class DiskWatchdog:
    """Measures the work dir; prunes under checkpoints_dir; flags when the budget cannot be kept."""

    def __init__(
        self,
        work_dir: Path,
        checkpoints_dir: Path,
        budget_gb: float,
        floor_gb: float,
        keep: int,
        interval_s: float = 2.0,
        high_water: float = 0.9,
    ):
        self.work_dir = Path(work_dir)
        self.checkpoints_dir = Path(checkpoints_dir)
        self.keep = keep
        self.interval_s = interval_s
        self.high_water = high_water
        self.state = DiskState(budget_bytes=int(budget_gb * GB), floor_bytes=int(floor_gb * GB))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- measuring --------------------------------------------------------------------------------
    def measure(self) -> int:
        used = dir_bytes(self.work_dir)
        with self._lock:
            self.state.last_bytes = used
            self.state.peak_bytes = max(self.state.peak_bytes, used)
        return used

    def _over(self, used: int) -> str:
        if used > self.state.budget_bytes:
            return f"work dir uses {used / GB:.2f} GB, over the {self.state.budget_bytes / GB:.2f} GB budget"
        free = free_bytes(self.work_dir)
        if free < self.state.floor_bytes:
            return f"only {free / GB:.2f} GB free on the work dir's filesystem (floor {self.state.floor_bytes / GB:.2f} GB)"
        return ""

    # --- acting -----------------------------------------------------------------------------------
    def enforce(self) -> str:
        """Measure, prune, and return '' if within budget, else why not (also sets state.over_budget)."""
        used = self.measure()
        self._prune(self.keep)
        used = self.measure()
        near = used > self.high_water * self.state.budget_bytes or self._over(used)
        if near:
            self.state.emergency_prunes += 1
            self._prune(1)
            used = self.measure()
        reason = self._over(used)
        with self._lock:
            if reason and not self.state.over_budget:
                log.error("disk watchdog: %s after pruning", reason)
            self.state.over_budget = bool(reason)
            self.state.reason = reason
        return reason

    def _prune(self, keep: int) -> None:
        for p in checkpoints.prune(self.checkpoints_dir, keep):
            log.info("disk watchdog: pruned %s", p.name)
            self.state.pruned.append(p.name)

    # --- thread -----------------------------------------------------------------------------------
    def start(self) -> DiskWatchdog:
        self._thread = threading.Thread(target=self._run, name="r1ft-disk-watchdog", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                used = self.measure()
                reason = self._over(used)
                if reason:
                    # Between saves only the dead/surplus checkpoints can go; a save-and-stop follows.
                    self._prune(1)
                    reason = self._over(self.measure())
                with self._lock:
                    self.state.over_budget = bool(reason)
                    self.state.reason = reason
            except Exception:  # the watchdog must never kill training
                log.exception("disk watchdog measurement failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.measure()


def trainer_callback(watchdog: DiskWatchdog, stop_flag, marker_extra: dict | None = None):
    """A TrainerCallback: marks each save complete, prunes, and stops training cleanly when over budget."""
    from transformers import TrainerCallback

    class DiskWatchdogCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if watchdog.state.over_budget and not stop_flag.reason:
                stop_flag.request("disk")
            return control

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    checkpoints.mark_complete(
                        ckpt, {"global_step": state.global_step, **(marker_extra or {})}
                    )
                if watchdog.enforce() and not stop_flag.reason:
                    # Only request: the stop-agreement callback stops every rank at the next step's end
                    # (setting should_training_stop here, on rank 0 alone, would hang the others).
                    stop_flag.request("disk")
            return control

    return DiskWatchdogCallback()
