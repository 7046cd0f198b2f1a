"""The plan printed before any download or GPU minute: disk item by item against the budget and the real
free space, VRAM, training time and cost. Pure arithmetic over the settings, the recipe and the model's
config.

The memory model is the recipe's (`r1ft.recipe`). A training step takes the longer of the host's time to
launch it and the GPU's time to run its tokens (STEP_MODEL, from `scripts/bench` on the full-size model,
docs/performance.md): at the recipe's 16 sequences the host is the longer, which is also why splitting
those 16 over several GPUs hardly shortens a step.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from r1ft.export.gguf import estimate_gguf_bytes
from r1ft.files import GB, dir_bytes, format_gb, free_bytes
from r1ft.machine.gpu import Hardware
from r1ft.model.tiny import TINY_SHAPE, base_config
from r1ft.recipe import (
    Layout,
    ModelShape,
    Recipe,
    batch_layout,
    checkpoint_gb,
    kv_cache_bytes_per_token,
    make_recipe,
    model_shape,
    vram_peak_gb,
)
from r1ft.settings import Settings

MEAN_TOKENS_PER_EXAMPLE = 470  # the MathCodeInstruct-format sample's mean, R1 rendering
# Seconds per micro-batch = max(host seconds to launch it, its tokens / the GPU's tokens per second), on an
# H200, by (quant, compiled). Measured (docs/performance.md): bf16 compiled 0.184 and 0.191 s a step for
# about 7.2k tokens on one GPU (c, machine otherwise idle, 2026-11-28, two runs), of which the GPU ran
# kernels for 0.126 s (the profile: 57k tokens/s); the same c took 0.197 s on an H100 (16-core host). NF4
# compiled 0.234 s and bf16 eager 0.312 s beside other runs on the same host, where c took 0.230 s, so 0.19
# and 0.25 alone. The GPU rates of NF4 and eager, and everything about eager NF4, are estimates.
STEP_MODEL = {
    ("none", True): (0.187, 57_000),
    ("nf4", True): (0.19, 45_000),
    ("none", False): (0.25, 50_000),
    ("nf4", False): (0.33, 40_000),
}
# Several processes: a step waits for the slowest rank. c with 16 sequences per GPU (one flat all-reduce of
# the adapter gradients a step) took 0.189 s on two H200s and 0.217 s on four, against 0.191 s on one.
DDP_HOST_S_PER_EXTRA_PROCESS = 0.008
STEP_MODEL_GPU = "H200"  # the card the step model was measured on
# A plan for a card of unknown size (a laptop planning a rental) bounds memory by the largest card rented
# today (B200 / MI300X class).
LARGEST_GPU_GB = 192.0
# The evaluation's prompts: a problem and the instruction, rendered (SciBench's longest are about 400 tokens).
EVAL_PROMPT_TOKENS = 512
EVAL_RESERVE_GB = 2.5  # the engine's prefill activations and allocator margin (r1ft.evaluation.kv_cache)
# First step with torch.compile (one graph for the 28 layers): 64-71 s on 64-core H200 hosts, 164 s under
# torchrun with 4 processes, 176 s on a 16-core H100 host (no compile cache in any of them).
COMPILE_WARMUP_S = 120
GPU_REL_SPEED = {
    "H200": 1.1,
    "H100": 1.0,
    "A100": 0.45,
    "L40S": 0.5,
    "RTX 6000 Ada": 0.45,
    "RTX 4090": 0.4,
    "RTX 3090": 0.18,
    "A6000": 0.2,
    "L4": 0.15,
    "A10": 0.17,
}


@dataclass
class DiskItem:
    name: str
    gb: float
    note: str = ""


@dataclass
class Plan:
    """The disk, VRAM, time and cost of a run with its recipe; `fits` is False when `problems` say why.
    `settings_problems` are settings the hardware cannot run at all (exit 2); `warnings` are settings that
    run but may not do what was meant."""

    recipe: Recipe
    disk_items: list[DiskItem]
    disk_peak_gb: float
    disk_budget_gb: float
    free_gb: float
    fits: bool
    adaptations: list[str] = field(default_factory=list)
    keep_checkpoints: int = 3
    stream_merged: bool = False
    minimum_gb: float = 0.0  # the smallest peak the plan can adapt to (1 checkpoint kept, merge streamed)
    vram_peak_gb: float = 0.0
    min_gpu_ram_gb: float = 0.0
    train_tokens: int = 0
    train_hours: float = 0.0
    cost_usd: float = 0.0
    problems: list[str] = field(default_factory=list)
    settings_problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    learning_rate: float = 0.0
    one_gpu_hours: float = 0.0  # with several processes: the same training on one of the GPUs

    @property
    def recommended_disk_gb(self) -> int:
        return math.ceil(max(self.disk_peak_gb * 1.25, self.disk_budget_gb) + 4)

    def to_json(self) -> str:
        """`r1ft plan --json`: the plan, its recipe, and the flat keys scripts/vast-launch reads."""
        data = asdict(self)
        data["recommended_disk_gb"] = self.recommended_disk_gb
        data["quant"] = self.recipe.quant
        data["base_precision"] = self.recipe.base_precision
        data["optimizer"] = self.recipe.optimizer
        data["compiled"] = self.recipe.compiled
        data["checkpointing"] = self.recipe.sized_checkpointed
        data["layout"] = asdict(self.recipe.layout)
        return json.dumps(data, indent=2)


def training_seconds(total_tokens: float, layout: Layout, quant: str, compiled: bool, gpu_name: str) -> float:
    """Optimizer steps x micro-batches per step x the longer of the host's launch time and the GPU's time for
    the micro-batch's tokens, scaled from the measured card by relative speed. Several GPUs share a step's
    sequences, so with the recipe's 16 a step the host, not the tokens, sets each GPU's time."""
    host_s, gpu_rate = STEP_MODEL[(quant, compiled)]
    global_batch = layout.per_device * layout.accum * layout.processes
    steps = total_tokens / (global_batch * MEAN_TOKENS_PER_EXAMPLE)
    host_s += DDP_HOST_S_PER_EXTRA_PROCESS * (layout.processes - 1)
    micro_s = max(host_s, layout.per_device * MEAN_TOKENS_PER_EXAMPLE / gpu_rate)
    return steps * layout.accum * micro_s * gpu_speed(STEP_MODEL_GPU) / gpu_speed(gpu_name or "H100")


def gpu_speed(gpu_name: str) -> float:
    for key, rel in GPU_REL_SPEED.items():
        if key.lower() in gpu_name.lower():
            return rel
    return 0.4 if gpu_name else 1.0


def make_plan(
    settings: Settings,
    config: dict,
    recipe: Recipe,
    free_gb: float,
    gpu_name: str = "",
    train_tokens: int | None = None,
    base_on_disk_outside_work: bool = False,
    gguf_bytes: dict[str, int] | None = None,
    gpu_mem_gb: float = 0.0,
) -> Plan:
    """The whole job's disk, VRAM, time and cost plan; adapts keep count and streaming to fit the budget."""
    layout = recipe.layout
    shape = model_shape(config, settings.lora_r)
    micro_tokens = layout.per_device * settings.max_seq_len  # the worst case: every sequence at full length
    vram = vram_peak_gb(shape, recipe.quant, recipe.sized_checkpointed, micro_tokens)

    dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    base_gb = 0.0 if base_on_disk_outside_work else shape.params * (4 if dtype == "float32" else 2) / GB
    merged_gb = shape.params * 2 / GB
    ckpt = checkpoint_gb(shape, recipe.optimizer)
    if settings.mathcodeinstruct_source in ("builtin", "none"):
        examples = 60
    else:
        examples = settings.mathcodeinstruct_samples or 80_000
    tokens = train_tokens or int(examples * MEAN_TOKENS_PER_EXAMPLE * (1 - settings.eval_fraction))
    raw_gb = 0.19 if settings.mathcodeinstruct_source.startswith("MathLLMs/") else 0.0
    data_gb = 0.01 + raw_gb + tokens * 24 / GB  # raw files + arrow cache (ids + labels) + rendered text
    gguf = max((gguf_bytes or {}).values(), default=0) / GB
    keep = settings.save_total_limit
    # Room for what no item counts (Hub metadata, tokenizer caches, log growth, filesystem slack).
    fixed = 0.3 if shape.params > 1e8 else 0.002

    def peak(keep_n: int, stream: bool) -> tuple[list[DiskItem], float]:
        items = [
            DiskItem(
                "base model (Hub cache)", base_gb, "already on disk" if base_on_disk_outside_work else ""
            ),
            DiskItem("datasets + prepared data", data_gb),
            DiskItem(f"checkpoints ({keep_n} kept + 1 being written)", (keep_n + 1) * ckpt),
            DiskItem("adapter", shape.lora_params * 4 / GB),
            DiskItem(
                "merged bf16 model",
                min(merged_gb, 2.0) if stream else merged_gb,
                "written, published and deleted one 2 GB shard at a time" if stream else "",
            ),
            DiskItem("GGUF (one file at a time)", gguf),
            DiskItem("logs, report, eval", 0.05 if shape.params > 1e8 else 0.002),
        ]
        subtotal = sum(i.gb for i in items)
        items.append(DiskItem("margin", fixed + 0.05 * subtotal))
        return items, sum(i.gb for i in items)

    adaptations: list[str] = []
    items, total = peak(keep, False)
    stream = False
    if total > settings.disk_budget_gb:
        stream = True
        items, total = peak(keep, True)
        adaptations.append("merged model streamed shard by shard to the destination")
    while total > settings.disk_budget_gb and keep > 1:
        keep -= 1
        items, total = peak(keep, stream)
        adaptations.append(f"keep {keep} checkpoint(s) instead of {settings.save_total_limit}")
    _, minimum = peak(1, True)
    problems = []
    if stream and settings.gguf_types:
        problems.append(
            f"R1FT_GGUF needs the merged model on disk, which this budget cannot hold: raise "
            f"R1FT_DISK_BUDGET_GB to {_round_up(peak(keep, False)[1]):g} or leave R1FT_GGUF empty"
        )
    if total > settings.disk_budget_gb:
        problems.append(
            f"the job needs about {format_gb(total)} but R1FT_DISK_BUDGET_GB is {settings.disk_budget_gb:g}: "
            f"raise the budget (and the instance disk) to at least {_round_up(minimum):g} GB"
        )
    if total + settings.disk_free_floor_gb > free_gb + 1e-9:
        problems.append(
            f"the work dir's filesystem has {format_gb(free_gb)} free; the job needs {format_gb(total)} plus "
            f"the {format_gb(settings.disk_free_floor_gb)} floor: free space or rent a larger disk"
        )
    epochs = settings.epochs if not settings.max_steps else None
    if epochs is not None:
        total_tokens = tokens * epochs
    else:
        total_tokens = settings.max_steps * settings.global_batch * MEAN_TOKENS_PER_EXAMPLE
    quant, compiled = recipe.quant, recipe.compiled
    warmup = COMPILE_WARMUP_S if compiled else 0
    seconds = training_seconds(total_tokens, layout, quant, compiled, gpu_name)
    hours = (seconds + warmup) / 3600
    steps = settings.max_steps or math.ceil(total_tokens / (layout.global_batch * MEAN_TOKENS_PER_EXAMPLE))
    one_gpu = 0.0
    if layout.processes > 1 and not settings.is_tiny:  # the real model (the tiny one's step is all host)
        one_gpu = (
            training_seconds(total_tokens, batch_layout(settings, 1), quant, compiled, gpu_name) + warmup
        ) / 3600
    return Plan(
        recipe=recipe,
        disk_items=items,
        disk_peak_gb=_round_up(total),
        minimum_gb=_round_up(minimum),
        disk_budget_gb=settings.disk_budget_gb,
        free_gb=round(free_gb, 1),
        fits=not problems,
        adaptations=adaptations,
        keep_checkpoints=keep,
        stream_merged=stream,
        vram_peak_gb=round(vram, 1),
        min_gpu_ram_gb=round(vram_peak_gb(shape, "nf4", True, micro_tokens), 1),
        train_tokens=int(total_tokens),
        train_hours=round(hours, 2),
        cost_usd=round(hours * settings.gpu_hourly_usd, 2),
        problems=problems,
        settings_problems=memory_problems(settings, config, shape, recipe, micro_tokens, gpu_mem_gb),
        warnings=checkpoint_warnings(settings, steps),
        learning_rate=settings.learning_rate,
        one_gpu_hours=round(one_gpu, 2),
    )


def memory_problems(
    settings: Settings, config: dict, shape: ModelShape, recipe: Recipe, micro_tokens: int, gpu_mem_gb: float
) -> list[str]:
    """Batch and length settings no card can run: training's micro-batch even with every layer checkpointed,
    and the evaluation's smallest batch (the weights and one full-length answer), against this card's memory (or the largest
    card's, when the card is not known yet). Nothing is checked on the CPU (the tiny model)."""
    if recipe.device != "cuda":
        return []
    card = gpu_mem_gb or LARGEST_GPU_GB
    which = f"this GPU's {card:.0f} GB" if gpu_mem_gb else f"the {card:.0f} GB of the largest GPUs"
    problems = []
    train_gb = vram_peak_gb(shape, recipe.quant, True, micro_tokens)
    if train_gb > card:
        problems.append(
            f"a micro-batch of {recipe.layout.per_device} x R1FT_MAX_SEQ_LEN={settings.max_seq_len} tokens needs "
            f"about {train_gb:,.0f} GB of GPU memory even with every layer checkpointed, more than {which}: "
            "lower R1FT_MAX_SEQ_LEN, or R1FT_BATCH_SIZE (the accumulation makes up R1FT_GLOBAL_BATCH)"
        )
    # The evaluation engine sizes its batch from the memory left after loading (R1FT_EVAL_BATCH_SIZE only
    # caps it), so what must fit is the weights and one full-length answer's KV cache beside the margins.
    tokens = settings.eval_max_new_tokens + EVAL_PROMPT_TOKENS
    eval_gb = (shape.params * 2 + tokens * kv_cache_bytes_per_token(config)) / GB + EVAL_RESERVE_GB
    if eval_gb > card:
        problems.append(
            f"the evaluation needs about {eval_gb:,.1f} GB of GPU memory for the bf16 model and one answer of up "
            f"to {tokens} tokens (R1FT_EVAL_MAX_NEW_TOKENS plus the prompt) in its KV cache, more than {which}: "
            "lower R1FT_EVAL_MAX_NEW_TOKENS, or skip the evaluation (R1FT_EVAL_MATH500_SAMPLES, "
            "R1FT_EVAL_SCIBENCH_SAMPLES and R1FT_EVAL_SAMPLES at 0)"
        )
    return problems


def checkpoint_warnings(settings: Settings, steps: int) -> list[str]:
    """A run whose R1FT_SAVE_STEPS exceeds its steps writes no periodic checkpoint: it still runs (a stop and
    the end of training each save one, and a short run may want no others), but a crash or kill -9 before
    the end loses all of its training."""
    if settings.save_steps <= steps:
        return []
    about = "" if settings.max_steps else "about "
    return [
        f"R1FT_SAVE_STEPS={settings.save_steps} is more than the run's {about}{steps} steps: no periodic "
        "checkpoint will exist (only the final one, or one at a SIGTERM), so a crash or kill -9 loses the whole "
        f"run; set R1FT_SAVE_STEPS to a fraction of the steps (e.g. {max(1, steps // 4)}) to be able to resume"
    ]


def _round_up(gb: float) -> float:
    """A planned size rounded up to the MB: a plan must never promise less than it computed."""
    return math.ceil(gb * 1000) / 1000


_CHECKPOINTING = {"off": "off", "all": "on", "adaptive": "only where a batch needs it"}


def render_plan(plan: Plan, gpu_name: str = "") -> str:
    """The plan as the human-readable table printed at start."""
    lines = ["Plan", "  disk (work dir):"]
    for item in plan.disk_items:
        note = f"  ({item.note})" if item.note else ""
        lines.append(f"    {item.name:<44} {format_gb(item.gb):>10}{note}")
    lines.append(
        f"    {'expected peak':<44} {format_gb(plan.disk_peak_gb):>10} of {plan.disk_budget_gb:g} GB budget, "
        f"{plan.free_gb:g} GB free"
    )
    for a in plan.adaptations:
        lines.append(f"    adapted: {a}")
    r = plan.recipe
    lines.append(
        f"  base weights: {r.base_precision}; optimizer {r.optimizer}; gradient checkpointing "
        f"{_CHECKPOINTING[r.checkpointing]}; torch.compile "
        f"{'on (about 2 min before the first step)' if r.compiled else 'off'}; "
        f"predicted peak VRAM {plan.vram_peak_gb:g} GB"
        + (
            " at the longest batch with every layer checkpointed (a card with room keeps more activations)"
            if r.sized_checkpointed
            else ""
        )
    )
    lay = r.layout
    lines.append(
        f"  batch: {lay.global_batch} sequences per optimizer step = {lay.per_device} per device x {lay.accum} "
        f"accumulation x {lay.processes} process(es); learning rate {plan.learning_rate:g} "
        "(never rescaled with the batch: set R1FT_LEARNING_RATE yourself if you change R1FT_GLOBAL_BATCH)"
    )
    procs = lay.processes
    card = gpu_name or "H100"
    where = f" on {procs} x {card}" if procs > 1 else f" on one {card}"
    cost = f", about ${plan.cost_usd:.2f}" if plan.cost_usd else ""
    lines.append(
        f"  training: about {plan.train_tokens / 1e6:.1f}M tokens, {plan.train_hours:.2f} h{where}{cost}"
    )
    if procs > 1 and plan.one_gpu_hours and plan.one_gpu_hours < 1.25 * plan.train_hours:
        total = lay.global_batch
        lines.append(
            f"  note: {plan.one_gpu_hours:.2f} h on one of these GPUs: at {total} sequences a step each GPU's "
            "share is too small to shorten a step (the host, not the GPU, sets its pace), so "
            + ("the other GPU adds" if procs == 2 else f"the other {procs - 1} add")
            + f" cost, not speed. R1FT_GLOBAL_BATCH={16 * procs} gives each GPU 16 sequences "
            "(fewer, larger steps: set R1FT_LEARNING_RATE for them), or rent one GPU"
        )
    for p in [*plan.settings_problems, *plan.problems]:
        lines.append(f"  PROBLEM: {p}")
    for w in plan.warnings:
        lines.append(f"  WARNING: {w}")
    return "\n".join(lines)


def config_for(settings: Settings, base_path: Path | None = None) -> dict:
    """The base model's config: the local one when present, else the shipped real config."""
    if base_path is not None and (Path(base_path) / "config.json").is_file():
        return json.loads((Path(base_path) / "config.json").read_text())
    if settings.is_tiny:
        return {**TINY_SHAPE, "vocab_size": 640, "dtype": "float32"}
    return base_config()


def plan_for(settings: Settings, hw: Hardware, processes: int = 1) -> Plan:
    """The recipe and plan for these settings on this machine: the ones `r1ft plan` prints and `r1ft run`
    trains with.

    Space the work dir already uses (a cached base model, a previous attempt) counts as available to the job,
    and a local base model outside the work dir costs nothing."""
    work = Path(settings.work_dir)
    local_base = (
        Path(settings.base_model) if not settings.is_tiny and Path(settings.base_model).exists() else None
    )
    config = config_for(settings, local_base)
    used_gb = dir_bytes(work) / GB if work.exists() else 0.0
    gguf_bytes = {}
    if settings.gguf_types:
        gguf_bytes = {t: estimate_gguf_bytes(config, t) for t in settings.gguf_types}
    return make_plan(
        settings,
        config,
        make_recipe(settings, hw, processes, config),
        free_gb=free_bytes(work) / GB + used_gb,
        gpu_name=hw.gpu_name,
        base_on_disk_outside_work=local_base is not None and not _inside(local_base, work),
        gguf_bytes=gguf_bytes,
        gpu_mem_gb=hw.gpu_mem_gb,
    )


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False
