"""The stop flag under real signals: the first SIGTERM or SIGINT asks for a graceful stop; a second signal of
the same kind, or SIGINT during any stop, ends the process at once; SIGTERM during a SIGINT stop does not."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    from r1ft.machine.signals import StopFlag
    stop = StopFlag().install()
    if sys.argv[1] == "disk":
        stop.request("disk")
    else:
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(0.2)
    print("first:", stop.reason, flush=True)
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
    time.sleep(0.2)
    print("still running:", stop.reason, flush=True)
    """
)


def run(first: str, second: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, first, second], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    ("first", "second"),
    [("SIGTERM", "SIGTERM"), ("SIGINT", "SIGINT"), ("SIGTERM", "SIGINT"), ("disk", "SIGINT")],
)
def test_a_second_signal_of_the_same_kind_or_ctrl_c_during_a_stop_ends_the_process(first, second):
    result = run(first, second)
    assert result.returncode == -getattr(signal, second), result.stdout + result.stderr
    assert f"first: {first}" in result.stdout and "still running" not in result.stdout


def test_sigterm_during_a_sigint_stop_lets_the_stop_finish():
    result = run("SIGINT", "SIGTERM")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "still running: SIGINT" in result.stdout
