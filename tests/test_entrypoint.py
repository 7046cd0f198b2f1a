"""The image's entrypoint, run outside Docker: default command, exit-code passthrough, signals reach Python
(the script execs it: same PID), and a whole smoke job through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import smoke_env

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "entrypoint"

SIGTERM_SCRIPT = """
import os, signal, sys, time
def on_term(signum, frame):
    print("python got SIGTERM", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
print("ready", os.getpid(), flush=True)
time.sleep(60)
sys.exit(1)
"""


def run_entrypoint(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
):
    return subprocess.run(
        [str(ENTRYPOINT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


def test_given_command_runs_and_its_exit_code_passes_through():
    result = run_entrypoint(
        sys.executable, "-c", "import sys; print('hello', sys.argv[1:]); sys.exit(7)", "a b"
    )
    assert result.returncode == 7
    assert result.stdout == "hello ['a b']\n"  # arguments with spaces arrive intact


def test_without_arguments_it_runs_the_job(tmp_path):
    """No command: `python -m r1ft run`, found on PATH (the image's venv comes first on PATH)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_python = fake_bin / "python"
    fake_python.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_FILE"\nexit 3\n')
    fake_python.chmod(0o755)
    argv_file = tmp_path / "argv"
    env = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "ARGV_FILE": str(argv_file)}
    result = run_entrypoint(env=env)
    assert result.returncode == 3
    assert argv_file.read_text().splitlines() == ["-m", "r1ft", "run"]


def test_missing_command_fails_with_127():
    result = run_entrypoint("r1ft-no-such-command")
    assert result.returncode == 127
    assert "r1ft-no-such-command" in result.stderr


def test_sigterm_sent_to_the_entrypoint_reaches_python():
    """exec replaces the shell: Python has the entrypoint's PID, so `docker stop` / Vast's SIGTERM (which
    tini forwards to that PID) lands in the job's handler, and its exit code 143 is the container's."""
    proc = subprocess.Popen(
        [str(ENTRYPOINT), sys.executable, "-c", SIGTERM_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready == ["ready", str(proc.pid)], "the entrypoint did not exec Python"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "python got SIGTERM" in out


@pytest.mark.slow
def test_smoke_job_through_the_entrypoint_completes_and_publishes(tmp_path):
    """`./entrypoint python -m r1ft run` with the smoke preset: the whole job on CPU, exit code 0 passed
    on, outputs published to R1FT_OUTPUT with their manifest."""
    try:
        import r1ft.pipeline  # noqa: F401
    except ImportError as e:
        pytest.skip(f"r1ft.pipeline does not import yet ({e}): the whole job cannot run")
    env = {
        **smoke_env(tmp_path),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
    }
    result = run_entrypoint("python", "-m", "r1ft", "run", env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    published = Path(env["R1FT_OUTPUT"])
    manifest = json.loads((published / "manifest.json").read_text())
    paths = {entry["path"] for entry in manifest["files"]}
    assert "report.json" in paths
    assert any(p.startswith("adapter/") for p in paths) and any(p.startswith("merged/") for p in paths)
    assert json.loads((published / "report.json").read_text())["training"]["global_step"] > 0
