"""What every stage of a run shares: the exit codes, the error a stage raises, and the job itself.

This module sits below the orchestrator and the stages (they import it; it imports none of them), so a
stage can raise `JobError(..., ExitCode.PUBLISH)` without reaching up into `r1ft.pipeline`.
"""

from __future__ import annotations

import datetime
import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from r1ft.settings import Settings

if TYPE_CHECKING:  # types only: the stages below import this module, never the other way round
    from r1ft.checkpoints.pusher import CheckpointPusher
    from r1ft.machine.runlock import RunLock
    from r1ft.machine.signals import StopFlag
    from r1ft.publish.destination import Destination
    from r1ft.report.schema import RunReport

log = logging.getLogger(__name__)


class ExitCode(enum.IntEnum):
    """The process exit codes r1ft promises (README, "Exit codes")."""

    OK = 0
    FAILED = 1  # an unforeseen failure: what exists is kept, the report says what happened
    SETTINGS = 2  # invalid settings, inputs or data: nothing was spent, fix and rerun
    PUBLISH = 3  # training done, the outputs could not be delivered: they are kept, retry the publish
    DISK = 4  # the disk budget cannot be kept
    SIGINT = 130
    SIGTERM = 143


class JobError(Exception):
    """A failure with the exit code it maps to and a message that says what to do.

    `leave_run`: the job never took the run over (its directory is locked by another job, or its checkpoints
    were trained with other settings), so the run's report and the instance are left as they are."""

    def __init__(self, message: str, exit_code: ExitCode, *, leave_run: bool = False):
        super().__init__(message)
        self.exit_code = ExitCode(exit_code)
        self.leave_run = leave_run


@dataclass
class Job:
    """What the stages share: the settings, where the run lives, rank, timings and the growing report.

    `main` is rank 0 (or the only process), the one that owns side effects. `report` is the typed run
    report the stages fill (`r1ft.report.schema.RunReport`); `base` is the base model's local directory
    once it has been fetched; `destination` is opened once (streamed merge shards, GGUF files and the final
    publish share it); `pusher` pushes `last-checkpoint/` during training; `stop` is the job's stop flag
    (each `step` tells it which stage runs); `lock` is the run directory's lock, held by rank 0.
    """

    settings: Settings
    run_id: str
    run_dir: Path
    report: RunReport
    base: Path | None = None
    main: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    destination: Destination | None = None
    pusher: CheckpointPusher | None = None
    stop: StopFlag | None = None
    lock: RunLock | None = None

    def step(self, name: str) -> StageTimer:
        """A context manager that logs the stage's start, tells the stop flag it runs, and records its wall
        time in `timings`."""
        if self.stop is not None:
            self.stop.enter(name)
        return StageTimer(self.timings, name)


class StageTimer:
    def __init__(self, timings: dict[str, float], name: str):
        self.timings, self.name = timings, name

    def __enter__(self) -> StageTimer:
        log.info("== %s", self.name)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = round(time.perf_counter() - self.t0, 2)


def utc_now() -> str:
    """The time stamps of the report's history and of the run lock: ISO 8601, UTC, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
