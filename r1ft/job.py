"""What every stage of a run shares: the job itself (its exit codes and errors are `r1ft.exits`).

This module sits below the orchestrator and the stages (they import it; it imports none of them at run
time: the types of the live objects it holds are imported for annotations only).
"""

from __future__ import annotations

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
