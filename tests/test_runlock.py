"""One job per run directory (issue 18): an OS-level lock that dies with its process; a second holder is
refused with the holder's pid, host and start time. (The job-level cases are in tests/test_reliability.py.)"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from r1ft.exits import JobError
from r1ft.machine.runlock import RunLock

HOLD = textwrap.dedent(
    """
    import sys, time
    from r1ft.machine.runlock import RunLock
    lock = RunLock(sys.argv[1]).acquire("r1ft run")
    print("held", flush=True)
    time.sleep(600)
    """
)


def hold(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_with_the_holders_pid_host_and_start(tmp_path):
    holder = hold(tmp_path)
    try:
        with pytest.raises(JobError) as err:
            RunLock(tmp_path).acquire("r1ft run")
        message = str(err.value)
        assert err.value.exit_code == 2 and err.value.leave_run
        assert f"pid {holder.pid} on {socket.gethostname()}" in message and "started 20" in message
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_leaves_no_stale_lock(tmp_path):
    holder = hold(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = RunLock(tmp_path).acquire("r1ft run")  # the kernel dropped the dead process's lock
    assert lock.held
    lock.release()
    RunLock(tmp_path).acquire("r1ft merge").release()  # and a released lock can be taken again
