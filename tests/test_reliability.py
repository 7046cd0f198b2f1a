"""Run integrity (issue 18), on the smoke preset through the real `python -m r1ft`: changed settings under one
run id, stops honoured in every stage, a full disk inside a checkpoint save, and the stage commands on a run
that never finished. Real signals to the job's process; a real small filesystem (tmpfs) where it can be
mounted, else a writer that fails as a full disk does."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from jobrun import job_env, published_dir, run_dir_of, run_job, run_job_until

from r1ft.checkpoints import markers
from r1ft.report.card import write_model_card
from r1ft.report.schema import RunReport
from r1ft.report.summary import summary_lines

pytestmark = pytest.mark.slow
RUN_ID = "integrity"


def report_of(tmp: Path) -> dict:
    return json.loads((run_dir_of(tmp) / "report.json").read_text())


def hooked(tmp: Path, code: str, **env: str) -> dict[str, str]:
    """The job's environment with `code` run at interpreter start-up (a sitecustomize module)."""
    hook = tmp / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(textwrap.dedent(code))
    return job_env(
        tmp, PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])), **env
    )


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A run with R1FT_RUN_ID set, stopped by SIGTERM during step 5 (it saves checkpoint-6 and exits 143)."""
    tmp = tmp_path_factory.mktemp("interrupted")
    result = run_job_until(job_env(tmp, R1FT_RUN_ID=RUN_ID), tmp, "train: step 5/")
    assert result.rc == 143, result.output[-3000:]
    return tmp


def clone(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("hook"))
    return dst


# --- 1. changed settings under the same run id ------------------------------------------------------------


def test_a_changed_lora_rank_or_learning_rate_is_refused_naming_both(interrupted, tmp_path):
    tmp = clone(interrupted, tmp_path / "changed")
    run_dir = run_dir_of(tmp)
    report_before = (run_dir / "report.json").read_bytes()
    env = job_env(tmp, R1FT_RUN_ID=RUN_ID, R1FT_LORA_R="4", R1FT_LEARNING_RATE="0.0001")
    result = run_job(env, tmp)
    assert result.rc == 2, result.output[-3000:]
    assert "refusing to resume run integrity from checkpoint-6" in result.output
    assert "R1FT_LORA_R: 16 in the checkpoint, 4 now" in result.output
    assert "R1FT_LEARNING_RATE: 0.003 in the checkpoint, 0.0001 now" in result.output
    assert "Use a new R1FT_RUN_ID" in result.output and "restore the settings" in result.output
    assert "Traceback" not in result.output and "== base model" not in result.output  # before any download
    assert (run_dir / "report.json").read_bytes() == report_before  # the run is left as it was
    assert not markers.check_complete(run_dir / "checkpoints" / "checkpoint-6")


def test_a_checkpoint_fetched_from_the_destination_is_checked_too(interrupted, tmp_path):
    tmp = tmp_path / "fresh"
    tmp.mkdir()
    shutil.copytree(published_dir(interrupted), published_dir(tmp))  # a new instance: the destination only
    result = run_job(job_env(tmp, R1FT_RUN_ID=RUN_ID, R1FT_LEARNING_RATE="0.0001"), tmp)
    assert result.rc == 2, result.output[-3000:]
    assert "resuming from the destination's last-checkpoint/ (step 6)" in result.output
    assert "R1FT_LEARNING_RATE: 0.003 in the checkpoint, 0.0001 now" in result.output
    assert "== train" not in result.output


# --- 2. one job per run directory -----------------------------------------------------------------------


def test_a_second_job_on_the_same_run_directory_exits_2_and_the_first_finishes(tmp_path):
    env = job_env(tmp_path, R1FT_RUN_ID="shared")
    first = subprocess.Popen([sys.executable, "-m", "r1ft", "run"], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert first.stdout is not None
    lines = []
    for line in first.stdout:
        lines.append(line)
        if "== train" in line:
            break
    try:
        second = run_job(env, tmp_path, timeout=120)
        publish = run_job(env, tmp_path, "publish", "--run-dir", str(run_dir_of(tmp_path)), timeout=120)
    finally:
        rest = first.communicate(timeout=300)[0]
    assert second.rc == 2, second.output[-2000:]
    assert (
        f"in use by another r1ft job (pid {first.pid} on" in second.output and "`r1ft run`" in second.output
    )
    assert "Traceback" not in second.output and "== train" not in second.output
    assert publish.rc == 2 and f"pid {first.pid}" in publish.output  # stage commands take the lock too
    assert first.returncode == 0, "".join(lines)[-2000:] + rest[-3000:]
    assert "published to" in rest


def test_after_kill_9_mid_training_the_next_job_takes_the_run_over_and_resumes(tmp_path):
    env = job_env(tmp_path, R1FT_RUN_ID="killed")
    proc = subprocess.Popen([sys.executable, "-m", "r1ft", "run"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "pushed checkpoint-4" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    time.sleep(0.2)
    result = run_job(env, tmp_path)
    assert result.rc == 0, result.output[-3000:]
    assert "resuming from local checkpoint-4" in result.output


# --- 7. what an interrupted run says, and the stage commands on it -----------------------------------------


def test_an_interrupted_report_says_the_steps_and_epochs_of_the_plan(interrupted, tmp_path):
    """The smoke data makes two steps an epoch, so step 6 of 12 is epoch 3 of 6: the report and the card
    say "of how many" (a bare "epoch 3.0" read as the three epochs of R1FT_EPOCHS being done)."""
    training = report_of(interrupted)["training"]
    assert (training["global_step"], training["max_steps"], training["interrupted"]) == (6, 12, "SIGTERM")
    assert (training["epoch"], training["epochs"]) == (3.0, 6.0)
    report = RunReport.load(run_dir_of(interrupted) / "report.json")
    card = write_model_card(tmp_path, report).read_text()
    assert "| optimizer steps | 6 of 12 (stopped early: SIGTERM) |" in card and "| epochs | 3 of 6 |" in card
    assert "training: steps 6 of 12, epoch 3 of 6;" in "\n".join(summary_lines(report))


def test_gguf_without_a_merged_model_says_to_merge_first(interrupted, tmp_path):
    tmp = clone(interrupted, tmp_path / "gguf")
    run_dir = run_dir_of(tmp)
    result = run_job(job_env(tmp, R1FT_GGUF="f16"), tmp, "gguf", "--run-dir", str(run_dir))
    assert result.rc == 2, result.output[-2000:]
    assert f"r1ft merge --run-dir {run_dir}" in result.output and "Traceback" not in result.output


def test_publish_and_merge_on_a_run_killed_before_its_report_say_how_to_resume(interrupted, tmp_path):
    tmp = clone(interrupted, tmp_path / "killed")
    run_dir = run_dir_of(tmp)
    (run_dir / "report.json").unlink()  # what kill -9 mid-training leaves on a first attempt
    for command in ("publish", "merge"):
        result = run_job(job_env(tmp), tmp, command, "--run-dir", str(run_dir))
        assert result.rc == 2, result.output[-2000:]
        assert (
            "is a run that never finished" in result.output and "is it a run directory" not in result.output
        )
        assert f"R1FT_RUN_ID={RUN_ID}" in result.output and "checkpoint-6" in result.output
        assert f"R1FT_WORK_DIR={tmp / 'work'}" in result.output and "Traceback" not in result.output
    moved = tmp_path / "elsewhere" / RUN_ID  # a run directory copied out of WORK_DIR/runs/
    shutil.copytree(run_dir, moved)
    result = run_job(job_env(tmp), tmp, "merge", "--run-dir", str(moved))
    assert result.rc == 2 and f"move {moved} there" in result.output, result.output[-2000:]
    assert (
        f"WORK_DIR/runs/{RUN_ID}" in result.output
        and f"R1FT_WORK_DIR={moved.parent.parent}" not in result.output
    )


@pytest.mark.parametrize("text", ["[]", '{"schema_version": "2"}'])
def test_stage_command_on_a_report_that_is_not_a_report_says_so(tmp_path, text):
    run_dir = tmp_path / "work" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "report.json").write_text(text)
    result = run_job(job_env(tmp_path), tmp_path, "publish", "--run-dir", str(run_dir))
    assert result.rc == 2, result.output[-2000:]
    assert "is not a readable r1ft report" in result.output and "Traceback" not in result.output


# --- 6. every stage honours a stop -----------------------------------------------------------------------


def test_sigterm_during_data_preparation_stops_it_and_records_the_stage(tmp_path):
    sample = (
        Path(__file__).resolve().parents[1] / "r1ft" / "assets" / "samples" / "mathcodeinstruct_sample.jsonl"
    )
    lines = sample.read_text(encoding="utf-8").splitlines()
    big = tmp_path / "big.jsonl"
    with open(big, "w", encoding="utf-8") as f:  # 40,000 distinct records: about 10 s to prepare
        for i in range(40_000):
            record = json.loads(lines[i % len(lines)])
            record["messages"][0]["content"][0]["content"] += f" (variant {i})"
            f.write(json.dumps(record) + "\n")
    env = job_env(tmp_path, R1FT_MATHCODEINSTRUCT_SOURCE=str(big), R1FT_MATHCODEINSTRUCT_SAMPLES="0")
    result = run_job_until(env, tmp_path, "== data")
    assert result.rc == 143, result.output[-3000:]
    assert "train rows" not in result.output and "== train" not in result.output  # stopped mid-preparation
    (entry,) = report_of(tmp_path)["history"]["interruptions"]
    assert (entry["reason"], entry["stage"], entry["step"]) == ("SIGTERM", "data", 0)
    assert not (run_dir_of(tmp_path) / "data" / "key.json").exists()  # no half-built cache


def test_sigterm_during_gguf_export_stops_between_files_and_publishes_what_exists(tmp_path):
    result = run_job_until(job_env(tmp_path, R1FT_GGUF="f16,q8_0"), tmp_path, "gguf f16: wrote")
    assert result.rc == 143, result.output[-3000:]
    pub = published_dir(tmp_path)
    assert (pub / "gguf" / "model-f16.gguf").is_file() and not (pub / "gguf" / "model-q8_0.gguf").exists()
    assert (pub / "manifest.json").is_file()
    (entry,) = report_of(tmp_path)["history"]["interruptions"]
    assert (entry["reason"], entry["stage"], entry["step"]) == ("SIGTERM", "gguf", 12)
    published_history = json.loads((pub / "report.json").read_text())["history"]["interruptions"]
    assert [e["stage"] for e in published_history] == ["gguf"]


SLOW_DECODE = """
    # A slow card: each decode step of the evaluation engine takes 0.2 s (a smoke answer would take ~10 s).
    import time
    import r1ft.evaluation.engine as engine
    _decode = engine._Run._decode
    def _slow(self, rows):
        time.sleep(0.2)
        return _decode(self, rows)
    engine._Run._decode = _slow
"""


def test_sigterm_during_evaluation_ends_generation_within_seconds_and_publishes(tmp_path):
    env = hooked(tmp_path, SLOW_DECODE, R1FT_GGUF="f16")
    sent = {}

    def stop_soon(proc):  # once the base model's generation has begun
        time.sleep(1.0)
        sent["at"] = time.monotonic()
        proc.send_signal(signal.SIGTERM)

    result = run_job_until(env, tmp_path, "answers, before", after=stop_soon)
    ended = time.monotonic()
    assert result.rc == 143, result.output[-3000:]
    assert ended - sent["at"] < 30, "the evaluation did not stop promptly"
    report = report_of(tmp_path)
    (entry,) = report["history"]["interruptions"]
    assert (entry["reason"], entry["stage"], entry["step"]) == ("SIGTERM", "evaluate", 12)
    models = report["evaluation"]["models"]
    assert models["base"]["interrupted"] == "SIGTERM" and models["base"]["generation"]["stopped"]
    assert models["finetuned"]["interrupted"] == "SIGTERM" and models["finetuned"]["load_s"] == 0.0
    assert "not evaluated: stopped by SIGTERM" in result.output  # the fine-tune is never loaded
    pub = published_dir(tmp_path)
    assert (pub / "manifest.json").is_file() and (pub / "merged").is_dir()
    assert not (pub / "gguf").exists() and report["gguf"] == []  # what was left is skipped
    assert "A stop request (SIGTERM) ended it early." in (pub / "README.md").read_text()
    assert result.output.count("train: step 12/12, eval_loss") == 1  # step 12 was an eval step: not twice

    # The rerun: training had ended, so the last checkpoint's adapter is used as it is. A Trainer resumed at
    # its last step would train a 13th step (transformers 5.24) and load the model to train for nothing.
    run_dir, first = run_dir_of(tmp_path), report["training"]
    last = (run_dir / "checkpoints" / "checkpoint-12" / "adapter_model.safetensors").read_bytes()
    again = run_job(job_env(tmp_path, R1FT_GGUF="f16"), tmp_path)
    assert again.rc == 0, again.output[-3000:]
    assert "training already ended at step 12 (checkpoint-12): its adapter is used as it is" in again.output
    assert "train: step 13" not in again.output and not (run_dir / "checkpoints" / "checkpoint-13").exists()
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == last
    report = report_of(tmp_path)
    assert report["training"]["global_step"] == report["training"]["max_steps"] == 12
    for key in ("train_loss", "train_runtime", "eval_loss"):  # the ended process's figures are kept
        assert report["training"]["metrics"][key] == first["metrics"][key]
    assert report["training"]["eval_loss_base"] == first["eval_loss_base"] is not None
    assert report["evaluation"]["models"]["finetuned"]["load_s"] > 0  # this time both models are evaluated
    assert report["publish"]["verified"] and (pub / "gguf").is_dir()


SLOW_PUBLISH = """
    # A slow link: each file of the final publish takes 0.3 s.
    import time
    import r1ft.publish.local as local
    _stage = local.LocalDestination.stage_file
    def stage_file(self, path, remote, *args, **kwargs):
        if not remote.startswith("last-checkpoint"):
            time.sleep(0.3)
        return _stage(self, path, remote, *args, **kwargs)
    local.LocalDestination.stage_file = stage_file
"""


def test_sigterm_during_the_publish_stops_between_files_and_a_retry_completes_it(tmp_path):
    result = run_job_until(hooked(tmp_path, SLOW_PUBLISH), tmp_path, "== publish")
    assert result.rc == 143, result.output[-3000:]
    pub = published_dir(tmp_path)
    assert not (pub / "manifest.json").exists()  # visibly incomplete
    assert "r1ft publish --run-dir" in result.output
    (entry,) = report_of(tmp_path)["history"]["interruptions"]
    assert (entry["reason"], entry["stage"]) == ("SIGTERM", "publish")
    retry = run_job(job_env(tmp_path), tmp_path, "publish", "--run-dir", str(run_dir_of(tmp_path)))
    assert retry.rc == 0, retry.output[-3000:]
    assert (pub / "manifest.json").is_file()


# --- 4. a full disk inside a checkpoint save ----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs at tmp_path/disk (needs root), unmounted after the test."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill the filesystem to the last byte, as another process would between two watchdog samples."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


def test_a_disk_filled_during_training_stops_cleanly_with_exit_4_and_resumes(small_disk, tmp_path):
    env = job_env(tmp_path, R1FT_WORK_DIR=str(small_disk / "work"), R1FT_DISK_FREE_FLOOR_GB="0")
    ballast: list[Path] = []
    result = run_job_until(
        env, tmp_path, "train: step 7/", after=lambda proc: ballast.append(fill(small_disk))
    )
    assert result.rc == 4, result.output[-4000:]
    assert "the disk is full during train" in result.output and "Traceback" not in result.output
    (run_dir,) = (small_disk / "work" / "runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert "disk is full" in report["error"]
    (entry,) = report["history"]["interruptions"]
    assert (entry["reason"], entry["stage"], entry["step"]) == ("disk", "train", 4)
    ckpts = {p.name: markers.check_complete(p) for p in markers.checkpoint_dirs(run_dir / "checkpoints")}
    assert ckpts == {"checkpoint-4": ""}  # the torn checkpoint-8 was never counted complete, and is gone
    ballast[0].unlink()
    rerun = run_job(env, tmp_path)
    assert rerun.rc == 0, rerun.output[-3000:]
    assert "resuming from local checkpoint-4 (step 4)" in rerun.output


FULL_AT_THE_MARKER = """
    # The disk fills exactly while checkpoint-8's completion marker is being written.
    import errno, os
    _fsync = os.fsync
    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("checkpoint-8/r1ft-complete.json.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _fsync(fd)
    os.fsync = fsync
"""


def test_enospc_writing_the_completion_marker_never_counts_the_checkpoint_complete(tmp_path):
    result = run_job(hooked(tmp_path, FULL_AT_THE_MARKER), tmp_path)
    assert result.rc == 4, result.output[-4000:]
    assert "No space left on device" in result.output and "Traceback" not in result.output
    run_dir = run_dir_of(tmp_path)
    assert not (run_dir / "checkpoints" / "checkpoint-8").exists()
    assert not list((run_dir / "checkpoints").glob("*/r1ft-complete.json.tmp"))
    report = report_of(tmp_path)
    (entry,) = report["history"]["interruptions"]
    assert (entry["reason"], entry["step"]) == ("disk", 4)
    assert (
        json.loads((published_dir(tmp_path) / "last-checkpoint" / markers.MARKER).read_text())["global_step"]
        == 4
    )  # the newest complete checkpoint is what the destination holds


# --- 5. `r1ft data` prints the rows ---------------------------------------------------------------------


def test_data_prints_every_row_by_default_and_limit_0_means_all(tmp_path):
    env = job_env(tmp_path)
    everything = run_job(env, tmp_path, "data")
    assert everything.rc == 0, everything.output[-2000:]
    rows = [json.loads(line) for line in everything.stdout.splitlines()]
    assert rows and all({"source", "text", "loss_text"} <= set(r) for r in rows)
    assert len(rows) == report_rows(tmp_path)
    zero = run_job(env, tmp_path, "data", "--json", "--limit", "0")
    assert zero.rc == 0 and len(zero.stdout.splitlines()) == len(rows)


def report_rows(tmp: Path) -> int:
    stats = json.loads((run_dir_of(tmp) / "data" / "stats.json").read_text())
    return stats["counts"]["train_rows"]
