"""Run the real job (`python -m r1ft ...`) in a subprocess, as a user would, and watch it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def job_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a smoke run with its work dir and output under tmp."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("R1FT_", "HF_TOKEN", "AWS_", "CONTAINER_"))
    }
    env.update(
        R1FT_PRESET="smoke",
        R1FT_WORK_DIR=str(tmp / "work"),
        R1FT_OUTPUT=str(tmp / "published"),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
    )
    env.update(extra)
    return env


@dataclass
class JobResult:
    rc: int
    output: str  # stdout and stderr together
    stdout: str = ""

    def report(self, run_dir: Path) -> dict:
        return json.loads((run_dir / "report.json").read_text())


def run_job(env: dict[str, str], cwd: Path, *args: str, timeout: float = 600) -> JobResult:
    """Run the job to its end; on a timeout, its whole process group (torchrun workers too) is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "r1ft", *(args or ("run",))],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the job did not end in {timeout} s:\n{(out + err)[-3000:]}") from None
    return JobResult(proc.returncode, out + err, out)


def run_job_until(
    env: dict[str, str], cwd: Path, needle: str, sig: int = signal.SIGTERM, timeout: float = 600, after=None
) -> JobResult:
    """Start the job, send `sig` when `needle` first appears in its output (or call `after(proc)`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "r1ft", "run"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    fired = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not fired.is_set() and needle in line:
                fired.set()
                if after is not None:
                    after(proc)
                else:
                    proc.send_signal(sig)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    t.join(timeout=10)
    return JobResult(proc.wait(), "".join(lines))


def published_dir(tmp: Path) -> Path:
    return tmp / "published"


def run_dir_of(tmp: Path) -> Path:
    runs = sorted((tmp / "work" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]
