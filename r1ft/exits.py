"""How a job ends: the exit codes r1ft promises, the error that carries one, and the time stamp of each
recorded event (the report's history, the run lock).

This module imports nothing of r1ft, so any module can raise `JobError(..., ExitCode.PUBLISH)` without
reaching up into the job or the orchestrator.
"""

from __future__ import annotations

import datetime
import enum


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


def utc_now() -> str:
    """The time stamps of the report's history and of the run lock: ISO 8601, UTC, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
