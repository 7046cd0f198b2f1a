"""Preemption and faults on the smoke preset: SIGTERM, resume locally and from the destination, kill -9
mid-save, a truncated checkpoint file, and a destination that is down during a periodic push."""

from __future__ import annotations

import json
import shutil
import signal
import textwrap
from pathlib import Path

import pytest
import torch
from jobrun import job_env, run_dir_of, run_job, run_job_until
from s3server import job_bucket, s3_server
from safetensors.torch import load_file

pytestmark = pytest.mark.slow
STEPS = 12


def report_of(tmp: Path) -> dict:
    return json.loads((run_dir_of(tmp) / "report.json").read_text())


def losses(tmp: Path) -> dict[int, float]:
    return {int(k): v for k, v in report_of(tmp)["training"]["loss_by_step"].items()}


def adapter(tmp: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir_of(tmp) / "adapter" / "adapter_model.safetensors"))


def assert_same_trajectory(resumed: Path, straight: Path, after_step: int) -> None:
    a, b = losses(resumed), losses(straight)
    assert max(a) == max(b) == STEPS
    for step in range(after_step + 1, STEPS + 1):
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-5), step
    wa, wb = adapter(resumed), adapter(straight)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("straight")
    result = run_job(job_env(tmp), tmp)
    assert result.rc == 0, result.output[-3000:]
    return tmp


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, int]:
    """A run stopped by SIGTERM during step 5 (it finishes the step, saves, pushes, exits 143)."""
    tmp = tmp_path_factory.mktemp("interrupted")
    result = run_job_until(job_env(tmp), tmp, "train: step 5/")
    assert result.rc == 143, result.output[-3000:]
    (entry,) = report_of(tmp)["history"]["interruptions"]
    assert entry["reason"] == "SIGTERM" and entry["checkpoint_pushed"]
    k = entry["step"]
    assert 5 <= k < STEPS
    assert (tmp / "published" / "last-checkpoint" / "adapter_model.safetensors").is_file()
    return tmp, k


def clone(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_sigterm_then_resume_follows_the_same_trajectory(straight, interrupted, tmp_path):
    src, k = interrupted
    tmp = clone(src, tmp_path / "local")
    result = run_job(job_env(tmp), tmp)
    assert result.rc == 0, result.output[-3000:]
    assert f"resuming from local checkpoint-{k} (step {k})" in result.output
    assert_same_trajectory(tmp, straight, k)
    (resume,) = report_of(tmp)["history"]["resumes"]
    assert resume == {**resume, "source": "local", "step": k, "steps_redone": 0}


@pytest.fixture(scope="module")
def fresh(interrupted, tmp_path_factory):
    """A new instance after the interrupted run: only its destination survives."""
    src, k = interrupted
    tmp = tmp_path_factory.mktemp("fresh")
    shutil.copytree(src / "published", tmp / "published")
    result = run_job(job_env(tmp), tmp)
    assert result.rc == 0, result.output[-3000:]
    return tmp, k, result


def test_fresh_work_dir_resumes_from_the_destination(straight, fresh):
    tmp, k, result = fresh
    assert f"resuming from the destination's last-checkpoint/ (step {k})" in result.output
    assert_same_trajectory(tmp, straight, k)


def test_fresh_instance_publishes_the_whole_runs_logs_and_history(interrupted, fresh):
    """The first part's TensorBoard file is fetched and published again beside the second part's: the loss
    curve and "training loss falls" cover every step, and the interruption stays in the history."""
    from r1ft.evaluation.losses import read_scalars

    src, k = interrupted
    tmp, _, _ = fresh
    pub = tmp / "published"
    first = {p.name for p in (src / "published" / "logs").glob("events.out.tfevents.*")}
    events = {p.name for p in (pub / "logs").glob("events.out.tfevents.*")}
    assert len(first) == 1 and first < events and len(events) == 2
    listed = {f["path"] for f in json.loads((pub / "manifest.json").read_text())["files"]}
    assert {f"logs/{name}" for name in events} <= listed
    steps = [step for step, _ in read_scalars(pub / "logs")["train/loss"]]
    assert steps == list(range(1, STEPS + 1))
    report = json.loads((pub / "report.json").read_text())
    assert report["evaluation"]["losses"]["train_points"] == STEPS
    (interruption,) = report["history"]["interruptions"]
    assert interruption["reason"] == "SIGTERM" and interruption["step"] == k
    (resume,) = report["history"]["resumes"]
    assert resume["source"] == "destination" and resume["step"] == k


def test_truncated_checkpoint_file_is_skipped_for_the_previous_one(straight, interrupted, tmp_path):
    src, _ = interrupted
    tmp = clone(src, tmp_path / "truncated")
    ckpts = sorted(
        (run_dir_of(tmp) / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )
    newest, previous = ckpts[-1], ckpts[-2]
    weights = newest / "adapter_model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    result = run_job(job_env(tmp), tmp)
    assert result.rc == 0, result.output[-3000:]
    assert f"skipping {newest.name}" in result.output and "truncated" in result.output
    assert f"resuming from local {previous.name}" in result.output
    assert_same_trajectory(tmp, straight, int(previous.name.split("-")[1]))


KILL_MID_SAVE = textwrap.dedent(
    """
    # Loaded at start-up of the job's process: SIGKILL it in the middle of writing checkpoint-8, after the
    # weights and optimizer state but while the RNG state is being written.
    import os, signal
    import torch
    _save = torch.save
    def save(obj, f, *args, **kwargs):
        if isinstance(f, str) and f.endswith("rng_state.pth") and "checkpoint-8" in f:
            with open(f, "wb") as out:
                out.write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        return _save(obj, f, *args, **kwargs)
    torch.save = save
    """
)


def test_kill_9_mid_save_resumes_from_the_previous_complete_checkpoint(straight, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_MID_SAVE)
    env = job_env(tmp_path, PYTHONPATH=str(hook))
    killed = run_job(env, tmp_path)
    assert killed.rc == -signal.SIGKILL, killed.output[-3000:]
    assert (run_dir_of(tmp_path) / "checkpoints" / "checkpoint-8").is_dir()  # the torn save is there
    result = run_job(job_env(tmp_path), tmp_path)
    assert result.rc == 0, result.output[-3000:]
    assert "skipping checkpoint-8" in result.output
    assert "resuming from local checkpoint-4 (step 4)" in result.output
    assert_same_trajectory(tmp_path, straight, 4)
    (resume,) = report_of(tmp_path)["history"]["resumes"]
    assert resume["steps_redone"] == 4  # steps 5-8 were trained, then lost with the torn save


def test_s3_down_during_a_push_then_sigterm_and_a_fresh_instance_resumes_from_s3(straight, tmp_path):
    with s3_server() as (endpoint, faults):
        s3 = job_bucket(endpoint)
        first = tmp_path / "first"
        first.mkdir()
        # The store answers the preflight's test write, then refuses every upload: the first periodic push
        # fails. (A store down from the start stops the job before it trains: tests/test_preflight.py.)
        faults.fail_after, faults.fail_uploads = 1, 10_000

        def recover(proc):
            faults.fail_uploads = 0

        # training goes on through the failed push, the store recovers, a later push succeeds
        first_env = job_env(first, **{**s3, "R1FT_OUTPUT": "s3://results/runs/first"})
        failed = run_job_until(first_env, first, "checkpoint push failed", after=recover)
        assert failed.rc == 0, failed.output[-3000:]  # the run finished despite the failed push
        assert "training goes on" in failed.output
        assert "pushed checkpoint-8" in failed.output or "pushed checkpoint-12" in failed.output

        second = tmp_path / "second"
        second.mkdir()
        stopped = run_job_until(job_env(second, **s3), second, "train: step 9/")
        assert stopped.rc == 143, stopped.output[-3000:]
        k = report_of(second)["history"]["interruptions"][0]["step"]

        fresh = tmp_path / "fresh"
        fresh.mkdir()
        resumed = run_job(job_env(fresh, **s3), fresh)
        assert resumed.rc == 0, resumed.output[-3000:]
        assert f"resuming from the destination's last-checkpoint/ (step {k})" in resumed.output
        assert_same_trajectory(fresh, straight, k)
