"""Validation up front (issue 18): settings that `r1ft plan` accepted and that failed later, or trained
something other than what was asked, are errors before any download or GPU minute, each with its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1ft.exits import JobError
from r1ft.machine.gpu import Hardware
from r1ft.model.tiny import base_config
from r1ft.plan import config_for, make_plan
from r1ft.recipe import Layout, batch_layout, make_recipe
from r1ft.settings_load import SettingsError, load_settings
from r1ft.validation import LR_SCHEDULERS, LR_SCHEDULERS_NEEDING_KWARGS

REPO = Path(__file__).resolve().parents[1]
H100 = Hardware(device="cuda", gpu_name="NVIDIA H100 80GB HBM3", gpu_mem_gb=85.0, gpu_count=1, bf16=True)


def problems(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as err:
        load_settings(env, env_file=None)
    return "\n".join(err.value.problems)


def plan_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("R1FT_", "HF_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "r1ft", *args],
        env={**clean, "R1FT_WORK_DIR": str(tmp_path / "work"), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- names transformers must know ------------------------------------------------------------------------


def test_the_scheduler_list_is_transformers_own():
    """The list is kept in r1ft so `r1ft plan` does not import transformers; it must not drift."""
    from transformers.trainer_utils import SchedulerType

    assert set(LR_SCHEDULERS) | set(LR_SCHEDULERS_NEEDING_KWARGS) == {t.value for t in SchedulerType}


def test_every_accepted_scheduler_builds_without_extra_arguments():
    import torch
    from transformers import get_scheduler

    for name in LR_SCHEDULERS:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
        get_scheduler(name, opt, num_warmup_steps=1, num_training_steps=10)


def test_unknown_scheduler_and_optimizer_are_settings_errors():
    text = problems({"R1FT_LR_SCHEDULER": "foo", "R1FT_OPTIM": "adamw_torch_fussed"})
    assert "R1FT_LR_SCHEDULER='foo' is not a transformers scheduler" in text and "cosine" in text
    assert "did you mean adamw_torch_fused?" in text
    assert "needs scheduler arguments" in problems({"R1FT_LR_SCHEDULER": "cosine_with_min_lr"})


# --- the work dir ---------------------------------------------------------------------------------------


def test_work_dir_that_is_a_file_or_under_a_file_is_an_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file, not a directory" in problems({"R1FT_WORK_DIR": str(a_file)})
    assert f"{a_file} is a file" in problems({"R1FT_WORK_DIR": str(a_file / "work")})
    load_settings({"R1FT_WORK_DIR": str(tmp_path / "new" / "work")}, env_file=None)  # creatable: fine


def test_work_dir_on_a_read_only_filesystem_is_an_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    try:
        assert "read-only" in problems({"R1FT_WORK_DIR": str(ro)})
        assert "cannot be created" in problems({"R1FT_WORK_DIR": str(ro / "work")})
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_plan_refuses_a_work_dir_that_is_a_file_before_anything(tmp_path):
    (tmp_path / "work").write_text("not a directory")
    result = plan_cli(tmp_path, "plan")
    assert result.returncode == 2 and "R1FT_WORK_DIR" in result.stderr and "Traceback" not in result.stderr


# --- bounds from the model and the hardware ---------------------------------------------------------------


def test_max_seq_len_is_bounded_by_the_models_context(tmp_path):
    context = base_config()["max_position_embeddings"]
    assert f"context of {context} tokens" in problems({"R1FT_MAX_SEQ_LEN": "999999999999"})
    assert "context of 4096" in problems({"R1FT_PRESET": "smoke", "R1FT_MAX_SEQ_LEN": "5000"})
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
    assert "context of 1024" in problems({"R1FT_BASE_MODEL": str(local), "R1FT_MAX_SEQ_LEN": "2048"})
    assert "R1FT_EVAL_MAX_NEW_TOKENS" in problems({"R1FT_BASE_MODEL": str(local), "R1FT_MAX_SEQ_LEN": "512",
                                                    "R1FT_EVAL_MAX_NEW_TOKENS": "4096"})  # fmt: skip


def test_a_lora_target_the_model_lacks_is_refused_before_any_download(tmp_path):
    """PEFT skips a target that matches no module without a word: q_proj,k_prj would train q_proj alone."""
    found = problems({"R1FT_PRESET": "smoke", "R1FT_LORA_TARGETS": "q_proj,k_prj"})
    assert "R1FT_LORA_TARGETS: 'k_prj' is not a module of the base model; did you mean k_proj?" in found
    assert "'q_proj'" not in found
    assert "'gate'" in problems({"R1FT_LORA_TARGETS": "gate"})  # the default model's shipped config
    assert "names no module" in problems({"R1FT_PRESET": "smoke", "R1FT_LORA_TARGETS": " , "})
    for fine in ("all-linear", "q_proj, v_proj", "self_attn.o_proj,mlp.down_proj,lm_head"):
        load_settings({"R1FT_PRESET": "smoke", "R1FT_LORA_TARGETS": fine}, env_file=None)
    result = plan_cli(tmp_path, "plan", R1FT_PRESET="smoke", R1FT_LORA_TARGETS="qproj")
    assert result.returncode == 2 and "did you mean q_proj?" in result.stderr, result.stdout + result.stderr


def test_lora_targets_are_checked_against_the_loaded_model_of_an_unlisted_type(tmp_path):
    """A model type r1ft has no table for is checked once loaded: its own module names, before training."""
    from transformers import AutoModelForCausalLM

    from r1ft.model.tiny import build_tiny_base
    from r1ft.validation import lora_target_problems

    model = AutoModelForCausalLM.from_pretrained(str(build_tiny_base(tmp_path / "tiny")))
    names = [name for name, _ in model.named_modules()]
    assert lora_target_problems("q_proj,up_proj,model.layers.0.mlp.down_proj", names) == []
    (problem,) = lora_target_problems("q_proj,wq", names)
    assert "'wq' is not a module of the base model" in problem and "use one of" in problem


def test_a_downloaded_hub_model_is_checked_before_training(tmp_path, monkeypatch):
    """A Hub model other than the default: its config is first seen after the download, and checked then."""
    import r1ft.stages as stages
    from r1ft.job import Job
    from r1ft.report.schema import RunReport

    model = tmp_path / "hub-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2", "max_position_embeddings": 2048}))
    monkeypatch.setattr(stages, "fetch_base_model", lambda settings: model)
    s = load_settings({"R1FT_BASE_MODEL": "someone/other-qwen", "R1FT_LORA_TARGETS": "q_proj,k_prj",
                       "R1FT_MAX_SEQ_LEN": "4096", "R1FT_WORK_DIR": str(tmp_path / "w")}, env_file=None)  # fmt: skip
    job = Job(s, "r", tmp_path / "run", RunReport(run_id="r"))
    with pytest.raises(JobError) as err:
        stages.fetch_base(job)
    assert err.value.exit_code == 2
    assert "'k_prj' is not a module" in str(err.value) and "context of 2048" in str(err.value)


def test_a_micro_batch_no_card_can_hold_is_a_settings_error(tmp_path):
    result = plan_cli(tmp_path, "plan", R1FT_MAX_SEQ_LEN="131072")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "lower R1FT_MAX_SEQ_LEN" in result.stdout and "largest GPUs" in result.stdout
    s = load_settings({"R1FT_MAX_SEQ_LEN": "32768"}, env_file=None)
    plan = make_plan(
        s, base_config(), make_recipe(s, H100, 1, base_config()), 500, H100.gpu_name, gpu_mem_gb=85
    )
    assert plan.settings_problems and "this GPU's 85 GB" in plan.settings_problems[0]


def test_the_evaluation_batch_is_bounded_and_sized_from_memory():
    """R1FT_EVAL_BATCH_SIZE=100000000 is refused by its bound; a large cap is fine (the engine fits the batch
    to the card's free memory); a card that cannot hold the model and one full-length answer is refused."""
    assert "R1FT_EVAL_BATCH_SIZE" in problems({"R1FT_EVAL_BATCH_SIZE": "100000000"})
    s = load_settings({"R1FT_EVAL_BATCH_SIZE": "4096", "R1FT_EVAL_SAMPLES": "20000"}, env_file=None)
    plan = make_plan(
        s, base_config(), make_recipe(s, H100, 1, base_config()), 500, H100.gpu_name, gpu_mem_gb=85
    )
    assert not plan.settings_problems
    s = load_settings({"R1FT_EVAL_MAX_NEW_TOKENS": "32768", "R1FT_MAX_SEQ_LEN": "1024"}, env_file=None)
    plan = make_plan(
        s, base_config(), make_recipe(s, H100, 1, base_config()), 500, H100.gpu_name, gpu_mem_gb=6
    )
    assert any("R1FT_EVAL_MAX_NEW_TOKENS" in p and "this GPU's 6 GB" in p for p in plan.settings_problems)


# --- batch arithmetic: the batch asked for is the batch trained, or an error --------------------------------


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"R1FT_GLOBAL_BATCH": "16", "R1FT_BATCH_SIZE": "3"}, "15 or 18"),  # trained 18 a step
        ({"R1FT_GRAD_ACCUM": "5"}, "15 or 20"),  # trained 15
        ({"R1FT_BATCH_SIZE": "3", "R1FT_GRAD_ACCUM": "2", "R1FT_GLOBAL_BATCH": "16"}, "= 6 sequences"),  # 6
        ({"R1FT_NUM_PROCESSES": "3"}, "cannot be split evenly over 3 processes"),  # trained 15
        ({"R1FT_BATCH_SIZE": "4", "R1FT_NUM_PROCESSES": "3"}, "R1FT_BATCH_SIZE=4 x 3 processes = 12"),
    ],
)
def test_inconsistent_batch_settings_are_errors(env, needle):
    assert needle in problems(env)


def test_both_training_sources_none_is_refused_with_the_settings():
    text = problems(
        {"R1FT_PRESET": "smoke", "R1FT_MATHCODEINSTRUCT_SOURCE": "none", "R1FT_SCIBENCH_SOURCE": "None"}
    )
    assert "nothing to train on" in text
    load_settings(
        {"R1FT_PRESET": "smoke", "R1FT_MATHCODEINSTRUCT_SOURCE": "none"}, env_file=None
    )  # one is fine


def test_the_recipe_checks_the_batch_once_the_processes_are_known():
    s = load_settings({"R1FT_BATCH_SIZE": "4"}, env_file=None)  # fine on one process (4 x 4)
    assert batch_layout(s, 1) == Layout(4, 4, 1) and batch_layout(s, 2) == Layout(4, 2, 2)
    with pytest.raises(JobError) as err:
        batch_layout(s, 3)
    assert err.value.exit_code == 2 and "x 3 processes = 12" in str(err.value)
    with pytest.raises(JobError):
        batch_layout(load_settings({}, env_file=None), 3)
    for procs in (1, 2, 4, 8, 16):
        assert batch_layout(load_settings({}, env_file=None), procs).global_batch == 16


def test_plan_on_more_gpus_than_the_batch_splits_over_exits_2_without_traceback(tmp_path):
    result = plan_cli(tmp_path, "plan", R1FT_BATCH_SIZE="3", R1FT_GLOBAL_BATCH="16")
    assert result.returncode == 2 and "15 or 18" in result.stderr and "Traceback" not in result.stderr


# --- checkpoints, env file, locations ------------------------------------------------------------------------


def test_save_steps_beyond_the_run_warn_that_no_checkpoint_will_exist():
    s = load_settings({"R1FT_PRESET": "smoke", "R1FT_SAVE_STEPS": "50"}, env_file=None)
    cpu = Hardware(device="cpu")
    plan = make_plan(s, config_for(s), make_recipe(s, cpu, 1, config_for(s)), 500)
    (warning,) = plan.warnings
    assert "R1FT_SAVE_STEPS=50 is more than the run's 12 steps" in warning and "kill -9" in warning
    assert plan.fits and not plan.settings_problems  # it runs: a stop and the end still save
    s = load_settings({"R1FT_PRESET": "smoke"}, env_file=None)
    assert not make_plan(s, config_for(s), make_recipe(s, cpu, 1, config_for(s)), 500).warnings


def test_a_named_env_file_must_exist_and_dot_env_is_read_by_default(tmp_path):
    result = plan_cli(tmp_path, "--env-file", str(tmp_path / "missing.env"), "plan")
    assert result.returncode == 2 and "missing.env: no such file" in result.stderr
    (tmp_path / ".env").write_text("R1FT_LR_SCHEDULER=foo\n")  # ./.env, read without --env-file
    result = plan_cli(tmp_path, "plan")
    assert result.returncode == 2 and "R1FT_LR_SCHEDULER='foo'" in result.stderr


@pytest.mark.parametrize(
    ("output", "needle"),
    [
        ("file://", "names no directory"),
        ("file://somehost/x", "file:///"),
        ("hf://a/b@", "empty revision"),
        ("s3://bucket/../x", "plain names"),
        ("s3://192.168.1.1/x", "not a valid bucket name"),
    ],
)
def test_locations_are_checked_through_the_one_parser(output, needle):
    env = {"R1FT_OUTPUT": output, "HF_TOKEN": "x", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    assert needle in problems(env)


def test_s3_endpoint_must_be_an_http_url():
    env = {"R1FT_OUTPUT": "s3://bucket/x", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    assert "AWS_ENDPOINT_URL" in problems({**env, "AWS_ENDPOINT_URL": "minio:9000"})
    load_settings({**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}, env_file=None)
