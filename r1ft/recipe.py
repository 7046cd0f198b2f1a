"""The recipe: every training decision, made once from the settings, the hardware and the model's shape.

The plan (`r1ft.plan`) prints it and sizes the disk and time from it; training (`r1ft.training`) builds the
library configs from it; the report records it. Nothing else decides quantization, checkpointing,
compilation, attention, Liger or the batch layout.

The memory model behind the decisions comes from `scripts/bench` on the full-size model
(docs/performance.md; H100 and H200, 2026-11-28): bf16 weights 2 bytes a parameter, NF4 about 0.52, and
activations per token of a micro-batch 3.1 MB with no layer checkpointed and 0.25 MB with every layer
checkpointed (compiled path; Qwen2-1.5B, LoRA r=16 on all linear layers).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

from r1ft.exits import ExitCode, JobError
from r1ft.files import GB
from r1ft.machine.gpu import Hardware
from r1ft.settings import Settings
from r1ft.validation import batch_problem

NF4_BYTES_PER_PARAM = 0.52  # 4 bits + an 8-bit absmax per 64 weights + its fp32 scale per 256 blocks
# Activation MB per micro-batch token, by (every layer checkpointed, decoder layers compiled); the
# adaptive checkpointing policy (r1ft.training.fastpath) interpolates between the two columns layer by layer.
# Compiled: measured (b: 3.12 MB/token over 30 steps of 6-8k tokens, peak 19-26 GiB on an H200; b_max16:
# 0.25 MB/token, 9.3 GiB at 16 x 2048 on an H100). Eager: estimates, not yet benchmarked.
ACT_MB_PER_TOKEN_PATH = {(False, False): 4.8, (False, True): 3.1, (True, False): 0.35, (True, True): 0.25}
# The plan's VRAM figure, by gradient checkpointing: the measured (compiled) column.
ACT_MB_PER_TOKEN = {ckpt: ACT_MB_PER_TOKEN_PATH[(ckpt, True)] for ckpt in (False, True)}
# `auto` compiles on cards this large (the H100/A100 80 GB, H200): a typical 16-sequence batch (about 22 GB
# of activations at 3.1 MB a token) and nearly every long one keep all their activations, the compiled path
# the benchmark measured (H100 and H200, 2026-11-28). The compiled path with checkpointed layers also ran
# (b_16g: an H200 held to a 16 GB card's budget, 13.5x the original recipe), but the smaller cards are other
# architectures (Ada, consumer Ampere), where Inductor's flex-attention kernels have not been run.
COMPILE_MIN_GPU_GB = 60.0
# A planned VRAM peak must leave this share of the card free (allocator fragmentation, other processes).
VRAM_HEADROOM = 0.85
# Optimizer state bytes per trainable parameter (two moments).
OPTIMIZER_STATE_BYTES = {"8bit": 2, "32bit": 8}

Checkpointing = Literal["off", "all", "adaptive"]


@dataclass(frozen=True)
class ModelShape:
    """Parameter counts of a Qwen2 model and of its LoRA adapter."""

    params: int
    lora_params: int
    vocab: int
    hidden: int
    layers: int


@dataclass(frozen=True)
class Layout:
    """How the global batch is spread: per-device micro-batch x accumulation x processes."""

    per_device: int
    accum: int
    processes: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accum * self.processes


@dataclass(frozen=True)
class Recipe:
    """Every decision of how training runs. `quant` is the base's precision in training ("none": bf16 on a
    GPU, fp32 on the CPU; "nf4": 4-bit NF4 with bf16 compute); `checkpointing` is how activations are
    recomputed ("adaptive": per micro-batch, only the layers its token count needs); `sized_checkpointed`
    says whether the plan's VRAM figure assumes every layer checkpointed."""

    device: str
    quant: str
    optimizer: str
    attention: str
    checkpointing: Checkpointing
    sized_checkpointed: bool
    compiled: bool
    liger: bool
    bf16: bool
    layout: Layout

    @property
    def base_precision(self) -> str:
        if self.quant == "nf4":
            return "4-bit NF4 (QLoRA), bf16 compute"
        return "fp32 (CPU)" if self.device == "cpu" else "bf16"

    @property
    def trainer_checkpointing(self) -> bool:
        """Whether the Trainer itself checkpoints every layer (adaptive checkpointing is set on the model)."""
        return self.checkpointing == "all"


# --- the memory model ---------------------------------------------------------------------------------


def model_shape(config: dict, lora_r: int) -> ModelShape:
    """Parameter counts from a Qwen2 config dict (no torch)."""
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or h // heads
    vocab = config["vocab_size"]
    q, kvd = heads * head_dim, kv * head_dim
    attn = h * q + q + 2 * (h * kvd + kvd) + q * h
    mlp = 3 * h * inter
    per_layer = attn + mlp + 2 * h
    params = layers * per_layer + 2 * vocab * h + h
    lora = layers * lora_r * ((h + q) + 2 * (h + kvd) + (q + h) + 3 * (h + inter))
    return ModelShape(params=params, lora_params=lora, vocab=vocab, hidden=h, layers=layers)


def act_bytes_per_token(checkpointing: bool, compiled: bool) -> float:
    """Activation bytes per micro-batch token (the same for bf16 and NF4 bases: same shapes)."""
    return ACT_MB_PER_TOKEN_PATH[(checkpointing, compiled)] * 1e6


def optimizer_state_bytes(optimizer: str) -> int:
    """Bytes of optimizer state per trainable parameter: 8-bit optimizers keep two 1-byte moments."""
    return OPTIMIZER_STATE_BYTES["8bit" if "8bit" in optimizer else "32bit"]


def checkpoint_gb(shape: ModelShape, optimizer: str) -> float:
    """A Trainer checkpoint: the fp32 adapter, the optimizer's state and small files."""
    return (shape.lora_params * (4 + optimizer_state_bytes(optimizer)) + 2e6) / GB


def kv_cache_bytes_per_token(config: dict) -> int:
    """Bytes of bf16 KV cache one generated or prompt token holds (keys and values of every layer)."""
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv * head_dim * 2


def vram_peak_gb(shape: ModelShape, quant: str, checkpointing: bool, micro_batch_tokens: int) -> float:
    """Predicted peak GPU memory of training at a micro-batch of `micro_batch_tokens` tokens."""
    if quant == "nf4":  # 4-bit linear weights + double-quantized scales; embeddings and LM head stay bf16
        unquantized = 2 * shape.vocab * shape.hidden
        weights = (shape.params - unquantized) * NF4_BYTES_PER_PARAM + unquantized * 2.0
    else:
        weights = shape.params * 2.0
    lora_state = shape.lora_params * 16  # fp32 weights, grads, two Adam moments
    scale = (shape.hidden * shape.layers) / (1536 * 28)  # activations grow with width x depth
    acts = micro_batch_tokens * ACT_MB_PER_TOKEN[checkpointing] * 1e6 * scale
    return (weights + lora_state + acts) / GB + 1.5  # CUDA context, allocator slack


# --- the decisions ------------------------------------------------------------------------------------


def batch_layout(settings: Settings, processes: int) -> Layout:
    """Exactly R1FT_GLOBAL_BATCH sequences per optimizer step on `processes` processes; a JobError (exit 2)
    when the settings cannot give it (`r1ft.validation.batch_problem`), never a rounded batch."""
    problem = batch_problem(settings.global_batch, settings.batch_size, settings.grad_accum, processes)
    if problem:
        raise JobError(problem, ExitCode.SETTINGS)
    per_process = settings.global_batch // processes
    if settings.batch_size:
        return Layout(settings.batch_size, per_process // settings.batch_size, processes)
    accum = settings.grad_accum or 1
    return Layout(per_process // accum, accum, processes)


def compiles(settings: Settings, device: str, gpu_mem_gb: float) -> bool:
    """Regional torch.compile of the decoder layers: `true`, or `auto` on a GPU of 60 GB or more."""
    value = str(settings.torch_compile).lower()
    if value != "auto":
        return value == "true"
    return device == "cuda" and gpu_mem_gb >= COMPILE_MIN_GPU_GB


def _quant(settings: Settings, shape: ModelShape, micro_tokens: int, hw: Hardware) -> str:
    """bf16 where the checkpointed bf16 peak fits the card, else NF4; an unknown card plans bf16."""
    if settings.quant != "auto":
        return settings.quant
    if not hw.gpu_mem_gb:
        return "none"
    bf16_peak = vram_peak_gb(shape, "none", True, micro_tokens)
    return "none" if bf16_peak <= VRAM_HEADROOM * hw.gpu_mem_gb else "nf4"


def _sized_checkpointed(settings: Settings, shape: ModelShape, quant: str, micro_tokens: int, hw: Hardware):
    """Whether the VRAM plan must assume every layer checkpointed (the card cannot hold the activations)."""
    if settings.gradient_checkpointing != "auto":
        return settings.gradient_checkpointing == "true"
    if not hw.gpu_mem_gb:  # a laptop planning a rental: size for checkpointing, applied only where needed
        return not settings.is_tiny
    return vram_peak_gb(shape, quant, False, micro_tokens) > VRAM_HEADROOM * hw.gpu_mem_gb


def _checkpointing(settings: Settings, device: str) -> Checkpointing:
    if settings.gradient_checkpointing != "auto":
        return "all" if settings.gradient_checkpointing == "true" else "off"
    return "adaptive" if device == "cuda" else "off"


def _optimizer(settings: Settings, quant: str, device: str) -> str:
    if settings.optim != "auto":
        return settings.optim
    if quant == "nf4":
        return "paged_adamw_8bit"
    return "adamw_torch_fused" if device == "cuda" else "adamw_torch"


def _attention(settings: Settings, device: str) -> str:
    if settings.attn_implementation != "auto":
        return settings.attn_implementation
    return "flex_attention" if device == "cuda" else "sdpa"


def _liger(settings: Settings, device: str, compiled: bool) -> bool:
    if settings.liger != "auto":
        return settings.liger == "true"
    if device != "cuda" or compiled:
        return False  # under torch.compile, Inductor fuses the same ops (Liger's kernels would break graphs)
    return importlib.util.find_spec("liger_kernel") is not None


def make_recipe(settings: Settings, hw: Hardware, processes: int, config: dict) -> Recipe:
    """The recipe for these settings on this hardware. A CUDA card of unknown size (`Hardware.rental()`, a
    laptop planning a rental) is planned in bf16, sized for checkpointing and compiled as an 80 GB card."""
    device = hw.device
    layout = batch_layout(settings, processes)
    shape = model_shape(config, settings.lora_r)
    micro_tokens = layout.per_device * settings.max_seq_len  # the worst case: every sequence at full length
    quant = _quant(settings, shape, micro_tokens, hw)
    compiled = compiles(settings, device, hw.gpu_mem_gb or (80.0 if device == "cuda" else 0.0))
    return Recipe(
        device=device,
        quant=quant,
        optimizer=_optimizer(settings, quant, device),
        attention=_attention(settings, device),
        checkpointing=_checkpointing(settings, device),
        sized_checkpointed=_sized_checkpointed(settings, shape, quant, micro_tokens, hw),
        compiled=compiled,
        liger=_liger(settings, device, compiled),
        bf16=hw.bf16 if hw.device == "cuda" else device == "cuda",
        layout=layout,
    )
