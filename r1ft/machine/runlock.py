"""One job at a time on a run directory: an OS-level lock (`flock`) on `RUN_DIR/.r1ft.lock`.

The kernel drops a `flock` when its holder's file is closed, which happens when the process ends however it
ends (kill -9 included), so a dead job never leaves a stale lock behind and nothing has to clean one up. The
file's content only names the holder (pid, host, start time, command) for the message a second job prints;
the file itself stays (removing it would let two jobs lock two different files of the same name).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from r1ft.exits import ExitCode, JobError, utc_now

LOCK_FILE = ".r1ft.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds a run directory's lock."""

    pid: int
    host: str
    started: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, `{self.command}` started {self.started}"


class RunLock:
    """The lock of one run directory, held from `acquire` until `release` (or the process ends)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self, command: str) -> RunLock:
        """Take the lock, or raise JobError (exit 2) naming the job that holds it."""
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held open: the lock lives with the file)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise JobError(self._busy_message(), ExitCode.SETTINGS, leave_run=True) from None
        me = Holder(os.getpid(), socket.gethostname(), utc_now(), command)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(asdict(me)) + "\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.truncate(0)  # still held: the next holder's details are the only ones ever read
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def _busy_message(self) -> str:
        holder = read_holder(self.path)
        who = holder.describe() if holder is not None else "a process that has not yet written its details"
        return (
            f"the run directory {self.run_dir} is in use by another r1ft job ({who}). Two jobs on one run "
            "directory would train, merge and publish over each other: wait for that job to end (or stop it), "
            "or give this one its own R1FT_RUN_ID or R1FT_WORK_DIR"
        )


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in a lock file, if it is readable."""
    try:
        return Holder(**json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
