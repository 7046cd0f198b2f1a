"""Disk watchdog: keeps the whole job inside its disk budget.

It measures the directory the job actually writes (the work dir: Hub caches, data, checkpoints, outputs)
and the free space of the filesystem under it, from a thread every few seconds and at every save. It
prunes checkpoints beyond the keep count; above the high-water mark it keeps only the newest complete
one; if usage still exceeds the budget, it asks the Trainer to save and stop, and the job exits 4 after
publishing what exists.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from r1ft.checkpoints import markers as checkpoints
from r1ft.files import GB, dir_bytes, format_bytes, free_bytes

log = logging.getLogger(__name__)


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
            return (
                f"work dir uses {format_bytes(used)}, over the {format_bytes(self.state.budget_bytes)} budget"
            )
        free = free_bytes(self.work_dir)
        if free < self.state.floor_bytes:
            return (
                f"only {format_bytes(free)} free on the work dir's filesystem, under the "
                f"{format_bytes(self.state.floor_bytes)} floor (R1FT_DISK_FREE_FLOOR_GB)"
            )
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


def trainer_callback(watchdog: DiskWatchdog, stop_flag):
    """A TrainerCallback: prunes after each save, and stops training cleanly when over budget. Put it after
    `r1ft.checkpoints.markers.completion_callback`, so the save it prunes around is already marked."""
    from transformers import TrainerCallback

    class DiskWatchdogCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if watchdog.state.over_budget and not stop_flag.reason:
                stop_flag.request("disk")
            return control

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero and watchdog.enforce() and not stop_flag.reason:
                # Only request: the stop-agreement callback stops every rank at the next step's end
                # (setting should_training_stop here, on rank 0 alone, would hang the others).
                stop_flag.request("disk")
            return control

    return DiskWatchdogCallback()
