"""Speed-only changes to the model before training; none changes what is computed.

- **Regional compilation**: each decoder layer's `forward` is compiled in place, so names and the
  saved adapter stay the same, the 28 identical layers share one compiled graph, and sequence lengths are
  dynamic from the start (one compilation instead of one per length). Inductor fuses the norms, rotary,
  SwiGLU, LoRA dropout/scale/add and residuals that otherwise each take a pass over memory. Activation
  checkpointing wraps the compiled forward from outside: Dynamo never traces `torch.utils.checkpoint`,
  whose graphs Inductor (torch 2.11) failed to partition on an H100 ("Node mm_42 was invalid").
- **Adaptive activation checkpointing**: before every forward, the number of decoder layers to checkpoint
  is chosen from the micro-batch's token count and the memory left under the budget, so a typical batch
  keeps all activations (fast), and only a rare long batch, or a small card, recomputes some layers.
- **LoRA inputs stay in the compute dtype under autocast**: PEFT casts each LoRA input to the adapter's
  fp32 before dropout, and autocast casts it back to bf16 for the matmul; under autocast the result is the
  same without the two copies.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MIB = 2**20
BUDGET_FRACTION = 0.75  # of the card's memory: 12 GB on a 16 GB card, headroom for the allocator elsewhere
SLACK_BYTES = 1.0e9  # LM-head tiles, dequantization buffers, allocator fragmentation


@dataclass
class CheckpointPolicy:
    """How many decoder layers a micro-batch of `tokens` tokens must checkpoint to stay under the budget.

    `act_full` / `act_ckpt`: activation bytes per token with no layer / every layer checkpointed
    (measured; `r1ft.plan.ACT_MB_PER_TOKEN`). The memory already in use when the forward starts (weights,
    adapter, gradients, optimizer state) is read from the allocator at that moment.
    """

    budget_bytes: float
    layers: int
    act_full: float
    act_ckpt: float
    slack_bytes: float = SLACK_BYTES
    history: list[tuple[int, int]] = field(default_factory=list)  # (tokens, layers checkpointed)

    def layers_for(self, tokens: int, in_use_bytes: float) -> int:
        room = self.budget_bytes - in_use_bytes - self.slack_bytes
        need = tokens * self.act_full
        if need <= room:
            return 0
        saving_per_layer = tokens * (self.act_full - self.act_ckpt) / self.layers
        return min(self.layers, math.ceil((need - room) / saving_per_layer))


def decoder_layers(model) -> list:
    """The repeated decoder blocks (transformers' `GradientCheckpointingLayer`s), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def memory_budget_bytes(gpu_mem_gb: float) -> float:
    """The activation budget's ceiling on a card of `gpu_mem_gb` GB."""
    return BUDGET_FRACTION * gpu_mem_gb * 1e9


def compile_layers(model) -> int:
    """Compile every decoder layer in place, with dynamic sequence length; returns how many."""
    import torch

    # 28 layers share one graph; a few variants (train/eval, checkpointed or not) each need an entry.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    # A compilation failure must cost speed, never the run: fall back to eager for that frame.
    torch._dynamo.config.suppress_errors = True
    # Under DDP, Dynamo would split each layer's graph at gradient-bucket boundaries (for overlap that
    # per-layer graphs already give): other graphs than on one GPU, compiled again and launched in pieces.
    torch._dynamo.config.optimize_ddp = False
    # The first layer's input (the frozen embedding's output) would not require grad while every other
    # layer's does; Dynamo guards on that, so the layers would take two compilations (each 1.5-3 min on an
    # H100 host). An input that requires grad keeps one graph for all 28; it costs the first layer's input
    # gradient, about 1% of a step's arithmetic.
    model.enable_input_require_grads()
    layers = decoder_layers(model)
    for layer in layers:
        layer.forward = checkpointed_outside(layer, torch.compile(_plain_forward(layer), dynamic=True))
    return len(layers)


def _plain_forward(layer):
    """The layer's forward without transformers' checkpointing wrapper (5.x wraps `forward` itself)."""
    import types

    forward = type(layer).forward
    return types.MethodType(getattr(forward, "__wrapped__", forward), layer)


def checkpointed_outside(layer, compiled):
    """An eager forward that checkpoints around the compiled one when the layer is marked for it (as
    transformers' own wrapper does), so Dynamo never traces `torch.utils.checkpoint`."""
    import torch

    def forward(*args, **kwargs):
        if layer.gradient_checkpointing and layer.training and torch.is_grad_enabled():
            kwargs.pop("use_cache", None)
            return layer._gradient_checkpointing_func(functools.partial(compiled, **kwargs), *args)
        return compiled(*args, **kwargs)

    return forward


def install_adaptive_checkpointing(model, policy: CheckpointPolicy, in_use_bytes=None):
    """Before each forward of the decoder, checkpoint the first k layers that `policy` asks for.

    `in_use_bytes()` reads the memory already allocated (default: `torch.cuda.memory_allocated`).
    Returns the hook handle.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    layers = decoder_layers(model)
    ckpt = functools.partial(checkpoint, use_reentrant=False)
    read_in_use = in_use_bytes or torch.cuda.memory_allocated

    def choose(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None or not (module.training and torch.is_grad_enabled()):
            return
        tokens = ids.shape[0] * ids.shape[1]
        k = policy.layers_for(tokens, float(read_in_use()))
        for i, layer in enumerate(layers):
            layer._gradient_checkpointing_func = ckpt
            layer.gradient_checkpointing = i < k
        policy.history.append((tokens, k))

    return _decoder(model).register_forward_pre_hook(choose, with_kwargs=True)


def keep_lora_inputs_in_compute_dtype(model):
    """Under autocast, skip PEFT's cast of each LoRA input to the adapter's dtype (set per forward)."""
    import torch

    lora_layers: list = []  # found at the first forward: PEFT injects the adapters after loading

    def toggle(module, args, kwargs):
        if not lora_layers:
            lora_layers.extend(m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))
        under_autocast = torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu")
        for m in lora_layers:
            m.cast_input_dtype_enabled = not under_autocast

    return _decoder(model).register_forward_pre_hook(toggle, with_kwargs=True)


def _decoder(model):
    """The module that runs the decoder layers (Qwen2Model inside Qwen2ForCausalLM)."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and decoder_layers(inner) else model


def dtype_census(model) -> dict[str, int]:
    """Parameter elements by dtype (checks that no unquantized weight was upcast to fp32)."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        key = str(p.dtype).replace("torch.", "")
        counts[key] = counts.get(key, 0) + p.numel()
    return counts


def set_expandable_segments() -> None:
    """Fewer fragmented blocks when every micro-batch has another length (before big allocations)."""
    import torch

    try:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (RuntimeError, AttributeError) as e:  # older drivers or allocators: keep the default
        log.warning("could not set expandable_segments (%s); continuing with the default allocator", e)
