"""The fast path changes speed only: adaptive checkpointing, regional compilation and bf16 LoRA inputs give
the same losses and gradients as the plain model (tiny model, CPU)."""

from __future__ import annotations

import pytest
import torch

from r1ft.machine.gpu import Hardware
from r1ft.model.tiny import base_config
from r1ft.recipe import make_recipe
from r1ft.settings_load import load_settings
from r1ft.training import fastpath
from r1ft.training.adapters import lora_config, sft_config

CPU = Hardware(device="cpu")


def peft_tiny(tiny_base, seed: int = 0):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    s = load_settings({"R1FT_PRESET": "smoke", "R1FT_LORA_DROPOUT": "0"}, env_file=None)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32, attn_implementation="sdpa")
    base.config.use_cache = False
    model = get_peft_model(base, lora_config(s))
    for name, p in model.named_parameters():  # non-zero B so every LoRA gradient is informative
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    model.train()
    return model


def packed_batch(vocab: int, lengths=(37, 52, 29), seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, sum(lengths)), generator=g)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    labels = ids.clone()
    start = 0
    for n in lengths:
        labels[0, start : start + 5] = -100  # a prompt of 5 tokens per sequence
        start += n
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def forward_counter(layer) -> list[int]:
    calls = [0]
    layer.mlp.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_policy_checkpoints_only_what_the_budget_needs():
    policy = fastpath.CheckpointPolicy(
        budget_bytes=10e9, layers=28, act_full=4e6, act_ckpt=0.35e6, slack_bytes=1e9
    )
    assert policy.layers_for(1_000, in_use_bytes=4e9) == 0  # 4 GB of activations fit in 5 GB
    k = policy.layers_for(2_000, in_use_bytes=4e9)  # 8 GB needed, 5 GB room
    assert 0 < k < 28
    kept = 2_000 * (4e6 * (28 - k) + 0.35e6 * k) / 28
    assert kept <= 5e9 < 2_000 * (4e6 * (28 - k + 1) + 0.35e6 * (k - 1)) / 28  # the fewest layers that fit
    assert policy.layers_for(100_000, in_use_bytes=4e9) == 28  # never more than every layer
    assert fastpath.memory_budget_bytes(16) == pytest.approx(12e9)


def test_adaptive_checkpointing_keeps_losses_and_gradients(tiny_base):
    model = peft_tiny(tiny_base)
    batch = packed_batch(model.config.vocab_size)
    loss_plain, grads_plain = loss_and_grads(model, batch)
    layers = fastpath.decoder_layers(model)
    assert len(layers) == 2
    tokens = batch["input_ids"].numel()
    # room for the activations of exactly one of the two layers: the first layer gets checkpointed
    policy = fastpath.CheckpointPolicy(
        budget_bytes=tokens * 1.0, layers=2, act_full=1.5, act_ckpt=0.0, slack_bytes=0
    )
    fastpath.install_adaptive_checkpointing(model, policy, in_use_bytes=lambda: 0)
    calls = forward_counter(layers[0]), forward_counter(layers[1])
    loss_ckpt, grads_ckpt = loss_and_grads(model, batch)
    assert policy.history == [(tokens, 1)]
    assert [layer.gradient_checkpointing for layer in layers] == [True, False]
    assert [c[0] for c in calls] == [2, 1]  # layer 0 ran again in the backward pass, layer 1 did not
    assert loss_ckpt == pytest.approx(loss_plain, rel=1e-6)
    for name, g in grads_plain.items():
        assert torch.allclose(g, grads_ckpt[name], atol=1e-6, rtol=1e-5), name
    with torch.no_grad():  # no gradients, no checkpointing decision
        model(**batch, use_cache=False)
    assert len(policy.history) == 1


def test_compiled_layers_keep_losses_and_gradients(tiny_base, monkeypatch):
    model = peft_tiny(tiny_base)
    batch = packed_batch(model.config.vocab_size)
    loss_plain, grads_plain = loss_and_grads(model, batch)
    assert fastpath.compile_layers(model) == 2
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)  # a failed compile fails the test
    real_checkpoint, checkpointed = torch.utils.checkpoint.checkpoint, []

    def counting_checkpoint(fn, *args, **kwargs):
        checkpointed.append(
            torch.compiler.is_compiling()
        )  # called from eager code, around the compiled layer
        return real_checkpoint(fn, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)
    policy = fastpath.CheckpointPolicy(budget_bytes=0.0, layers=2, act_full=1.0, act_ckpt=0.0, slack_bytes=0)
    fastpath.install_adaptive_checkpointing(model, policy, in_use_bytes=lambda: 0)  # both layers checkpointed
    for lengths in ((37, 52, 29), (61, 17)):  # a second length must not change the result either
        batch = packed_batch(model.config.vocab_size, lengths)
        checkpointed.clear()
        fastpath_loss, fastpath_grads = loss_and_grads(model, batch)
        assert checkpointed == [False, False]  # both layers, each outside Dynamo
        for layer in fastpath.decoder_layers(model):
            layer.gradient_checkpointing = False
        torch._dynamo.reset()
        plain = peft_tiny(tiny_base)
        plain_loss, plain_grads = loss_and_grads(plain, batch)
        assert fastpath_loss == pytest.approx(plain_loss, rel=1e-5)
        for name, g in plain_grads.items():
            assert torch.allclose(g, fastpath_grads[name], atol=1e-5, rtol=1e-4), name
    del loss_plain, grads_plain


def test_every_layer_shares_one_compiled_graph(tiny_base):
    """One compilation for all decoder layers and every sequence length (each one costs minutes on a GPU
    host): the first layer's input requires grad like the others'."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = peft_tiny(tiny_base)
    fastpath.compile_layers(model)
    for lengths in ((37, 52, 29), (61, 17), (10, 20, 30, 40)):
        loss_and_grads(model, packed_batch(model.config.vocab_size, lengths))
    assert counters["stats"]["unique_graphs"] == 1


def test_lora_inputs_keep_the_compute_dtype_under_autocast(tiny_base):
    model = peft_tiny(tiny_base)
    batch = packed_batch(model.config.vocab_size)
    lora = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_peft = model(**batch, use_cache=False).loss.item()  # PEFT's casts to fp32 and back
    fastpath.keep_lora_inputs_in_compute_dtype(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_fast = model(**batch, use_cache=False).loss.item()
    assert lora and not any(m.cast_input_dtype_enabled for m in lora)
    assert loss_fast == loss_peft  # autocast rounds the LoRA input to bf16 either way
    model(**batch, use_cache=False)  # without autocast the cast is PEFT's again
    assert all(m.cast_input_dtype_enabled for m in lora)


def test_sft_config_compiles_regionally_not_through_the_trainer(tmp_path):
    s = load_settings({"R1FT_TORCH_COMPILE": "true", "R1FT_GRADIENT_CHECKPOINTING": "true"}, env_file=None)
    args = sft_config(s, tmp_path, make_recipe(s, CPU, 1, base_config()), has_eval=False)
    assert args.torch_compile is False  # regional compilation replaces the Trainer's whole-model compile
    assert args.gradient_checkpointing  # forced on: every layer, set by the Trainer
