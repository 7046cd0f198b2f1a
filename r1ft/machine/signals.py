"""Graceful stop: SIGTERM (docker stop, Vast) and SIGINT ask training to save and stop at the next step.

A second signal of the same kind falls back to the default behaviour (the process ends at once).
"""

from __future__ import annotations

import logging
import signal
import threading

from r1ft.job import ExitCode

log = logging.getLogger(__name__)

EXIT_CODES = {"SIGTERM": ExitCode.SIGTERM, "SIGINT": ExitCode.SIGINT, "disk": ExitCode.DISK}


class StopFlag:
    """Why the job was asked to stop ('' while it runs on). Set from signal handlers or the watchdog."""

    def __init__(self) -> None:
        self.reason = ""
        self._previous: dict[int, object] = {}

    def request(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
            log.warning("stop requested (%s): saving a checkpoint at the end of this step", reason)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.reason == name:  # second time: give up gracefully stopping
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
