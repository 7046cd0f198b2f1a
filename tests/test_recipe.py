"""The recipe: every training decision made once, from the settings and the hardware, used by the plan
and by training alike."""

from __future__ import annotations

from r1ft.machine.gpu import Hardware
from r1ft.model.tiny import base_config
from r1ft.plan import make_plan
from r1ft.recipe import Layout, batch_layout, make_recipe
from r1ft.settings import load_settings

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
