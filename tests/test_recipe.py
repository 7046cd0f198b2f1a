"""The recipe: every training decision made once, from the settings and the hardware, used by the plan
and by training alike."""

from __future__ import annotations

import json
from typing import get_args

import pytest

from r1ft.machine.gpu import Hardware
from r1ft.model.tiny import base_config
from r1ft.plan import make_plan, render_plan
from r1ft.recipe import Layout, batch_layout, make_recipe
from r1ft.settings import Optimizer
from r1ft.settings_load import SettingsError, load_settings

H100 = Hardware(device="cuda", gpu_name="NVIDIA H100 80GB HBM3", gpu_mem_gb=85.0, gpu_count=1, bf16=True)
RTX4090 = Hardware(device="cuda", gpu_name="NVIDIA GeForce RTX 4090", gpu_mem_gb=25.3, gpu_count=1, bf16=True)
L40S = Hardware(device="cuda", gpu_name="NVIDIA L40S", gpu_mem_gb=48.3, gpu_count=1, bf16=True)
CPU = Hardware(device="cpu")


def recipe(env: dict[str, str], hw: Hardware, processes: int = 1):
    return make_recipe(load_settings(env, env_file=None), hw, processes, base_config())


def test_checkpointing_compile_and_liger_by_hardware_and_settings():
    assert recipe({}, H100).checkpointing == "adaptive" and recipe({}, CPU).checkpointing == "off"
    assert recipe({"R1FT_GRADIENT_CHECKPOINTING": "true"}, H100).checkpointing == "all"
    on = recipe({"R1FT_TORCH_COMPILE": "true"}, H100)
    assert on.compiled and not on.liger  # Inductor fuses what Liger would
    assert not recipe({}, CPU).compiled
    assert recipe({}, H100).compiled and not recipe({}, RTX4090).compiled  # auto: benchmarked on large cards
    assert not recipe({}, L40S).compiled
    assert recipe({"R1FT_TORCH_COMPILE": "true"}, RTX4090).compiled
    assert not recipe({"R1FT_TORCH_COMPILE": "false"}, H100).compiled


def test_base_precision_and_optimizer_follow_the_card():
    big = recipe({}, H100)
    assert (big.quant, big.optimizer, big.attention) == ("none", "adamw_torch_fused", "flex_attention")
    tiny_card = recipe({}, Hardware(device="cuda", gpu_name="T4", gpu_mem_gb=8.0, bf16=False))
    assert (tiny_card.quant, tiny_card.optimizer) == ("nf4", "paged_adamw_8bit")
    assert recipe({"R1FT_PRESET": "smoke"}, CPU).optimizer == "adamw_torch"
    assert recipe({"R1FT_OPTIM": "adamw_torch"}, H100).optimizer == "adamw_torch"


def test_a_rental_of_unknown_size_plans_bf16_checkpointed_and_compiled():
    r = recipe({}, Hardware.rental())
    assert (r.device, r.quant, r.sized_checkpointed, r.compiled) == ("cuda", "none", True, True)


def test_the_plan_and_training_share_one_decision():
    s = load_settings({}, env_file=None)
    r = make_recipe(s, RTX4090, 1, base_config())
    plan = make_plan(s, base_config(), r, free_gb=500, gpu_name=RTX4090.gpu_name)
    assert plan.recipe is r and not plan.recipe.compiled


def test_batch_layout_keeps_the_global_batch():
    s = load_settings({}, env_file=None)
    for procs in (1, 2, 4, 8, 16):
        assert batch_layout(s, procs).global_batch == 16
    assert batch_layout(load_settings({"R1FT_BATCH_SIZE": "2"}, env_file=None), 1) == Layout(2, 8, 1)


# --- the original preset and the optimizer setting ---------------------------------------------------------


@pytest.fixture
def cuda_bf16_args(monkeypatch):
    """TrainingArguments refuses bf16 without a bf16 GPU; these tests build a GPU run's arguments on the CPU."""
    import transformers.training_args

    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)


def test_original_preset_plans_and_trains_the_notebooks_recipe(tmp_path, cuda_bf16_args):
    """R1FT_PRESET=original: an NF4 double-quant base with bf16 compute, paged AdamW 8-bit, LoRA r16/alpha 32/
    dropout 0.05 on all linear layers, lr 2e-4 cosine, 3 epochs, 16 sequences a step, max length 2048, 3
    checkpoints kept; computed r1ft's way (padding-free, compiled on a large card)."""
    import torch

    from r1ft.training.adapters import bnb_config, lora_config, sft_config

    s = load_settings({"R1FT_PRESET": "original"}, env_file=None)
    for hw in (H100, RTX4090, Hardware.rental()):  # whatever the card, the base stays 4-bit
        r = make_recipe(s, hw, 1, base_config())
        assert (r.quant, r.optimizer) == ("nf4", "paged_adamw_8bit")
        assert r.base_precision == "4-bit NF4 (QLoRA), bf16 compute"
    r = make_recipe(s, H100, 1, base_config())
    plan = json.loads(make_plan(s, base_config(), r, free_gb=500, gpu_name=H100.gpu_name).to_json())
    assert plan["base_precision"] == "4-bit NF4 (QLoRA), bf16 compute"
    assert plan["optimizer"] == plan["recipe"]["optimizer"] == "paged_adamw_8bit"
    assert plan["quant"] == "nf4" and plan["keep_checkpoints"] == 3 and plan["compiled"]
    args = sft_config(s, tmp_path, r)
    assert args.optim == "paged_adamw_8bit" and args.bf16
    assert (args.learning_rate, args.lr_scheduler_type, args.num_train_epochs) == (2e-4, "cosine", 3.0)
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 16
    assert args.padding_free and args.warmup_steps == 0.03 and args.weight_decay == 0.0
    q = bnb_config()
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    lora = lora_config(s)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.target_modules) == (16, 32, 0.05, "all-linear")
    assert (s.max_seq_len, s.save_total_limit, s.length_policy) == (2048, 3, "truncate")
    assert s.interpreter_output_loss and s.dedup == "pair"


def test_the_original_preset_pins_its_values_and_explicit_ones_still_win():
    s = load_settings({"R1FT_PRESET": "original", "R1FT_LEARNING_RATE": "1e-4"}, env_file=None)
    assert s.learning_rate == 1e-4 and s.quant == "nf4"
    full = load_settings({}, env_file=None)
    assert (full.quant, full.optim, full.length_policy) == ("auto", "auto", "drop")  # what full changes
    assert full.resolved_run_id("d") != load_settings(
        {"R1FT_PRESET": "original"}, env_file=None
    ).resolved_run_id("d")


@pytest.mark.parametrize("name", [n for n in get_args(Optimizer) if n != "auto"])
def test_the_optimizer_setting_reaches_the_trainer(name, tmp_path, cuda_bf16_args):
    from transformers.training_args import OptimizerNames

    from r1ft.training.adapters import sft_config

    assert name in {o.value for o in OptimizerNames}  # a name transformers knows
    s = load_settings({"R1FT_OPTIM": name}, env_file=None)
    for hw in (H100, RTX4090):
        r = make_recipe(s, hw, 1, base_config())
        assert r.optimizer == name and sft_config(s, tmp_path, r).optim == name
        plan = make_plan(s, base_config(), r, free_gb=500, gpu_name=hw.gpu_name)
        assert f"optimizer {name}" in render_plan(plan) and json.loads(plan.to_json())["optimizer"] == name


def test_an_unknown_or_cpu_unfit_optimizer_is_refused_with_the_choices():
    with pytest.raises(SettingsError) as err:
        load_settings({"R1FT_OPTIM": "adamw_torch_fusd"}, env_file=None)
    assert "R1FT_OPTIM" in str(err.value) and "adamw_torch_fused" in str(err.value)
    with pytest.raises(SettingsError) as err:
        load_settings({"R1FT_PRESET": "smoke", "R1FT_OPTIM": "paged_adamw_8bit"}, env_file=None)
    assert "needs a CUDA GPU" in str(err.value)
    with pytest.raises(SettingsError, match="R1FT_QUANT=nf4"):
        load_settings({"R1FT_PRESET": "original", "R1FT_BASE_MODEL": "tiny"}, env_file=None)


def test_the_optimizer_and_the_mix_choices_shape_the_run_id():
    base = load_settings({}, env_file=None).resolved_run_id("d")
    for env in ({"R1FT_OPTIM": "adamw_torch"}, {"R1FT_DEDUP": "problem"},
                {"R1FT_INTERPRETER_OUTPUT_LOSS": "false"}):  # fmt: skip
        assert load_settings(env, env_file=None).resolved_run_id("d") != base, env
