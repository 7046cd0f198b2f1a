"""scripts/collect: fetch a published run (a local directory stands in for the Hub or S3) through
`r1ft collect`, verified against its manifest, then print the report's summary."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "collect"
REPORT = {
    "run_id": "r1ft-full-0123456789",
    "settings": {"base_model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "preset": "full"},
    "training": {
        "global_step": 4218,
        "metrics": {"train_loss": 0.41234, "eval_loss": 0.4567},
        "resumed_from": "",
    },
    "evaluation": {
        "accuracy": {
            "scibench-test": {
                "before": {"correct": 40, "n": 200, "accuracy": 0.2, "ci95": [0.15, 0.26]},
                "after": {"correct": 60, "n": 200, "accuracy": 0.3, "ci95": [0.24, 0.37]},
            }
        }
    },
    "timings_s": {"train": 3600.0, "evaluate": 600.0},
}


def publish_by_hand(root: Path, files: dict[str, bytes]) -> Path:
    """A published run's layout: the files plus manifest.json listing their sizes and sha256."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    entries = [
        {"path": rel, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for rel, d in files.items()
    ]
    manifest = {"format": "r1ft-manifest/1", "files": entries, "total_files": len(entries),
                "total_bytes": sum(len(d) for d in files.values())}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def collect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env_file = tmp_path / "none.env"  # an empty settings file: nothing from the caller's ./.env
    env_file.touch()
    cmd = [sys.executable, str(SCRIPT), *args, "--env-file", str(env_file)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_collect_fetches_verifies_and_summarises(tmp_path):
    files = {"report.json": json.dumps(REPORT).encode(), "adapter/adapter_model.safetensors": b"\0" * 64}
    src = publish_by_hand(tmp_path / "published", files)
    result = collect(tmp_path, str(src), str(tmp_path / "results"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "results" / "adapter" / "adapter_model.safetensors").read_bytes() == b"\0" * 64
    out = result.stdout.splitlines()
    assert "run r1ft-full-0123456789  (base deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B, preset full)" in out
    assert "training: steps 4218; train_loss 0.4123, eval_loss 0.4567" in out
    assert "  scibench-test                20.0% of 200 [15%, 26%] -> 30.0% of 200 [24%, 37%]" in out
    assert "timings (s): train 3600, evaluate 600; total 4200" in out


def test_collect_without_an_env_file_takes_credentials_from_the_environment(tmp_path):
    """No ./.env and no --env-file (credentials in the environment): the collect runs."""
    src = publish_by_hand(tmp_path / "published", {"report.json": json.dumps(REPORT).encode()})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R1FT_", "HF_TOKEN", "AWS_"))}
    cmd = [sys.executable, str(SCRIPT), str(src), str(tmp_path / "results")]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "results" / "report.json").is_file() and "run r1ft-full-0123456789" in result.stdout


def test_a_damaged_file_fails_the_collect_with_r1fts_exit_code(tmp_path):
    src = publish_by_hand(tmp_path / "published", {"report.json": json.dumps(REPORT).encode()})
    (src / "report.json").write_text("{}")  # no longer what the manifest says
    result = collect(tmp_path, str(src), str(tmp_path / "results"))
    assert result.returncode == 3
    assert "run r1ft" not in result.stdout


def test_collect_into_a_file_is_refused_with_exit_2_before_any_download(tmp_path):
    src = publish_by_hand(tmp_path / "published", {"report.json": json.dumps(REPORT).encode()})
    (tmp_path / "f").write_text("mine")
    for dest, said in ((tmp_path / "f", "f is a file"), (tmp_path / "f" / "sub", "which is a file")):
        result = collect(tmp_path, str(src), str(dest))
        assert result.returncode == 2, result.stderr
        assert said in result.stderr and "collect into a directory" in result.stderr
        assert "Traceback" not in result.stderr and "Retry with" not in result.stderr
    assert (tmp_path / "f").read_text() == "mine"


def test_summary_of_a_partial_report_prints_what_exists(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text(
        json.dumps({"run_id": "r1", "error": "publish failed: 503"})
    )
    result = collect(tmp_path, "--summary", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["run r1  (base ?, preset ?)", "ERROR: publish failed: 503"]


def test_summary_of_a_directory_without_a_report_says_so(tmp_path):
    result = collect(tmp_path, "--summary", str(tmp_path))
    assert result.returncode == 1
    assert (
        f"cannot read {tmp_path / 'report.json'}" in result.stderr
        and "a collected r1ft run?" in result.stderr
    )


def test_collect_from_an_unreachable_hub_fails_within_seconds_with_a_clear_message(tmp_path):
    """No network (here: a Hub endpoint where nothing listens): a bounded first contact, not minutes of
    retries inside retries."""
    import os
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "R1FT_", "AWS_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_OFFLINE="0")
    (tmp_path / "none.env").touch()  # an empty settings file: nothing from the caller's ./.env
    cmd = [sys.executable, "-m", "r1ft", "--env-file", str(tmp_path / "none.env"), "collect", "hf://someone/run",
           str(tmp_path / "got")]  # fmt: skip
    t0 = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    elapsed = time.monotonic() - t0
    assert result.returncode == 3, result.stderr[-2000:]
    assert elapsed < 40, elapsed
    assert "could not read hf://someone/run" in result.stderr and "check the network" in result.stderr
    assert "Traceback" not in result.stderr


def test_huggingface_hub_warnings_are_logged_once(tmp_path):
    """huggingface_hub's own stderr handler is taken off: its warnings reach the console once, through r1ft's
    handler (and job.log), not twice."""
    code = (  # in the order of a real command: set-up first, the library's modules imported when used
        "import logging, r1ft.cli\n"
        "from r1ft.machine.logs import setup_console\n"
        "setup_console()\n"
        "import huggingface_hub.file_download\n"
        "logging.getLogger('huggingface_hub.file_download').warning('a warning from the hub library')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("a warning from the hub library") == 1, result.stderr
