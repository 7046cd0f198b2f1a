"""Settings: parsed once, every problem at once with its fix, unknown names caught, secrets kept out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1ft.settings_load import SettingsError, load_settings, unknown_names

REPO = Path(__file__).resolve().parents[1]


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as err:
        load_settings(env, env_file=None)
    return err.value.problems


def test_defaults_are_the_original_recipe():
    s = load_settings({}, env_file=None)
    assert (s.lora_r, s.lora_alpha, s.lora_dropout, s.lora_targets) == (16, 32, 0.05, "all-linear")
    assert (s.learning_rate, s.epochs, s.global_batch, s.max_seq_len) == (2e-4, 3.0, 16, 2048)
    assert s.lr_scheduler == "cosine" and s.save_total_limit == 3 and s.disk_budget_gb == 16
    assert s.base_model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" and len(s.base_revision) == 40


def test_smoke_preset_and_explicit_values_win():
    s = load_settings({"R1FT_PRESET": "smoke"}, env_file=None)
    assert s.is_tiny and s.mathcodeinstruct_source == "builtin" and s.max_steps > 0
    s = load_settings({"R1FT_PRESET": "smoke", "R1FT_MAX_STEPS": "3", "R1FT_LORA_R": "4"}, env_file=None)
    assert s.max_steps == 3 and s.lora_r == 4


def test_issue_example_names_all_three_problems():
    found = problems({"R1FT_EPOCHS": "-1", "R1FT_LERNING_RATE": "1e-4", "R1FT_OUTPUT": "hf://someone/model"})
    text = "\n".join(found)
    assert len(found) == 3, found
    assert "R1FT_EPOCHS" in text and "greater than 0" in text
    assert "R1FT_LERNING_RATE" in text and "R1FT_LEARNING_RATE" in text  # the suggestion
    assert "HF_TOKEN" in text


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"R1FT_QUANT": "int3"}, "R1FT_QUANT"),
        ({"R1FT_OUTPUT": "ftp://x/y"}, "unknown scheme"),
        ({"R1FT_OUTPUT": "s3://bucket/p"}, "AWS_ACCESS_KEY_ID"),
        ({"R1FT_OUTPUT": "hf://not a repo", "HF_TOKEN": "x"}, "hf://owner/name"),
        ({"R1FT_GGUF": "q2_weird"}, "GGUF"),
        ({"R1FT_RUN_ID": "../escape"}, "R1FT_RUN_ID"),
        ({"R1FT_LORA_R": "sixteen"}, "R1FT_LORA_R"),
        ({"R1FT_PRESET": "huge"}, "R1FT_PRESET"),
        ({"R1FT_BASE_MODEL": "/no/such/model"}, "no such file"),
        ({"R1FT_BASE_MODEL": "justaname"}, "Hub id"),
        ({"R1FT_MATHCODEINSTRUCT_SOURCE": "/no/such/file.jsonl"}, "R1FT_MATHCODEINSTRUCT_SOURCE"),
        ({"R1FT_SCIBENCH_SOURCE": "./missing/*.json"}, "R1FT_SCIBENCH_SOURCE"),
        ({"R1FT_EPOCHS": "inf"}, "R1FT_EPOCHS"),
        ({"R1FT_DISK_BUDGET_GB": "Infinity"}, "finite"),
        ({"R1FT_GPU_HOURLY_USD": "nan"}, "R1FT_GPU_HOURLY_USD"),
        ({"R1FT_OUTPUT": "hf:/someone/model", "HF_TOKEN": "x"}, "hf://someone/model"),
        ({"R1FT_SEED": "-1"}, "R1FT_SEED"),
        ({"R1FT_SEED": str(2**32)}, "R1FT_SEED"),
    ],
)
def test_bad_values_say_what_to_fix(env, needle):
    assert any(needle in p for p in problems(env))


def test_gguf_type_named_twice_is_exported_once():
    s = load_settings({"R1FT_GGUF": "q8_0, Q4_K_M,q8_0,,q4_k_m"}, env_file=None)
    assert s.gguf_types == ["q8_0", "q4_k_m"]


def test_work_dir_with_a_tilde_is_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = load_settings({"R1FT_WORK_DIR": "~/wd"}, env_file=None)
    assert s.work_dir == tmp_path / "home" / "wd"  # every stage writes there, not to ./~/wd


def test_unknown_names_suggest_the_closest():
    (line,) = unknown_names({"R1FT_LORA_RANK": "8", "PATH": "/bin"})
    assert "R1FT_LORA_RANK" in line and "R1FT_LORA_R" in line


def test_env_file_is_read_and_process_env_wins(tmp_path):
    f = tmp_path / ".env"
    f.write_text("R1FT_LORA_R=8\nR1FT_SEED=7\n# comment\n")
    s = load_settings({"R1FT_SEED": "9"}, env_file=f)
    assert s.lora_r == 8 and s.seed == 9


def test_env_file_line_that_cannot_be_parsed_is_a_problem_not_a_silent_default(tmp_path):
    f = tmp_path / ".env"
    f.write_text(
        "R1FT_LORA_R=\"8\nHF_TOKEN='hf_SECRET123\nmy token hf_SECRET456\nR1FT_SEED=7\nR1FT_EPOCHS=-1\n"
    )
    found = problems_with_file(f)
    text = "\n".join(found)
    assert "line 1 (R1FT_LORA_R)" in text and "line 2 (HF_TOKEN)" in text
    assert "R1FT_EPOCHS" in text  # the rest of the file is still checked, every problem at once
    assert "line 3 (?)" in text and "SECRET" not in text


def test_env_file_not_utf8_is_a_problem(tmp_path):
    f = tmp_path / ".env"
    f.write_bytes(b"R1FT_LORA_R=8\nR1FT_RUN_ID=caf\xe9\n")
    (line,) = problems_with_file(f)
    assert "not UTF-8" in line


def problems_with_file(f: Path) -> list[str]:
    with pytest.raises(SettingsError) as err:
        load_settings({}, env_file=f, env_file_required=True)
    return err.value.problems


def test_secrets_never_in_repr_or_public_dict():
    env = {"HF_TOKEN": "hf_SECRET123", "AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "awsSECRET456",
           "CONTAINER_API_KEY": "vastSECRET789", "R1FT_OUTPUT": "hf://me/model"}  # fmt: skip
    s = load_settings(env, env_file=None)
    text = repr(s) + str(s.public_dict())
    for secret in ("hf_SECRET123", "awsSECRET456", "vastSECRET789"):
        assert secret not in text
    assert "hf_token" in s.public_dict()["secrets_set"]


def test_run_id_is_stable_and_shaped_by_training_settings():
    a = load_settings({"R1FT_PRESET": "smoke"}, env_file=None)
    b = load_settings({"R1FT_PRESET": "smoke", "R1FT_OUTPUT": "/elsewhere"}, env_file=None)
    c = load_settings({"R1FT_PRESET": "smoke", "R1FT_LEARNING_RATE": "0.01"}, env_file=None)
    assert a.resolved_run_id("d") == b.resolved_run_id("d") != c.resolved_run_id("d")
    assert a.resolved_run_id("d") != a.resolved_run_id("other data")


def test_cli_plan_with_bad_settings_exits_2_fast_naming_every_problem(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R1FT_", "HF_TOKEN"))}
    env.update(R1FT_EPOCHS="-1", R1FT_LERNING_RATE="1e-4", R1FT_OUTPUT="hf://someone/model")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "r1ft", "plan"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)  # fmt: skip
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    assert elapsed < 3.0
    for needle in ("R1FT_EPOCHS", "R1FT_LEARNING_RATE", "HF_TOKEN"):
        assert needle in proc.stderr
    assert "torch" not in proc.stderr


def test_env_example_lists_every_setting_and_is_current():
    from r1ft.env_example import env_example_text
    from r1ft.settings import Settings

    text = (REPO / ".env.example").read_text()
    assert text == env_example_text(), "regenerate: see r1ft/env_example.py's docstring"
    for name, info in Settings.model_fields.items():
        if info.validation_alias is None:
            assert f"#R1FT_{name.upper()}=" in text
    # the file as shipped parses (all commented out) and so does every line uncommented
    uncommented = "\n".join(line[1:] if line.startswith("#R1FT_") else line for line in text.splitlines())
    f = REPO / ".pytest_cache" / "env-example-uncommented"
    f.parent.mkdir(exist_ok=True)
    f.write_text(uncommented)
    assert load_settings({}, env_file=f).lora_r == 16
