"""Graceful stop: SIGTERM (docker stop, Vast) and SIGINT ask the job to stop at the next safe point.

`StopFlag` is the job's one stop flag. The signal handlers (and the disk watchdog) set it; the pipeline tells
it which stage runs (`enter`, called by `Job.step`), so it knows where a stop came. Each stage honours it
between two units of work, never in the middle of one:

- training: at the end of the optimizer step (a Trainer callback), then a checkpoint is saved;
- data preparation: between records and between tokenization chunks;
- evaluation: between decode steps (the engine's `should_stop`); what finished is scored, marked stopped;
- GGUF export: between tensors (the file being written is deleted) and between files;
- publishing: between files (only a stop that came during the publish: the publish after a stop is how
  what exists gets delivered).

A stage that stops raises `Stopped` (`stop.check()`). It is a BaseException, like KeyboardInterrupt, so the
`except Exception` of a stage that keeps going after one bad item (a GGUF type, a publish retry) does not
swallow it. A second signal of the same kind falls back to the default behaviour (the process ends at once),
and so does SIGINT during any stop (Ctrl-C while a SIGTERM or disk stop saves and publishes: the person at
the keyboard means now); SIGTERM during a SIGINT stop lets that stop finish.
"""

from __future__ import annotations

import logging
import signal
import threading

from r1ft.exits import ExitCode

log = logging.getLogger(__name__)

EXIT_CODES = {"SIGTERM": ExitCode.SIGTERM, "SIGINT": ExitCode.SIGINT, "disk": ExitCode.DISK}


class Stopped(BaseException):
    """A stage stopped early because a stop was requested: why, and the stage the stop came in."""

    def __init__(self, reason: str, stage: str):
        super().__init__(f"stopped by {reason} during {stage or 'start-up'}")
        self.reason, self.stage = reason, stage


class StopFlag:
    """Why the job was asked to stop ('' while it runs on), and the stage that was running when it came.
    Set from signal handlers or the disk watchdog."""

    def __init__(self) -> None:
        self.reason = ""
        self.stage = ""  # the stage running when the stop was requested
        self.running = ""  # the stage running now (`enter`)
        self._previous: dict[int, object] = {}

    def enter(self, stage: str) -> None:
        """The pipeline says which stage runs now (`Job.step` calls it)."""
        self.running = stage

    def request(self, reason: str) -> None:
        if not self.reason:
            self.reason, self.stage = reason, self.running
            if self.running == "train":
                log.warning("stop requested (%s): saving a checkpoint at the end of this step", reason)
            else:
                log.warning(
                    "stop requested (%s) during %s: stopping at the next safe point, then publishing what "
                    "exists",
                    reason,
                    self.running or "start-up",
                )

    def is_set(self) -> bool:
        """Whether a stop was requested: the `should_stop` callable a long loop polls."""
        return bool(self.reason)

    def came_during(self, stage: str) -> bool:
        """Whether the stop was requested while `stage` ran (the publish honours only those)."""
        return bool(self.reason) and self.stage == stage

    def check(self) -> None:
        """Raise `Stopped` if a stop was requested: a stage calls this between two units of work."""
        if self.reason:
            raise Stopped(self.reason, self.stage)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason == name or (self.reason and name == "SIGINT"):  # give up stopping gracefully
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.request(name)

    def install(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    @property
    def exit_code(self) -> ExitCode:
        return EXIT_CODES.get(self.reason, ExitCode.FAILED)
