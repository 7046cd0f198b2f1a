"""LoRA / QLoRA training with TRL's SFTTrainer: thin pure adapters from settings to library configs,
model loading, and the training call.

The dataset arrives pre-tokenized (`input_ids` + `labels`, from `r1ft.chat.tokenize_example`), so TRL
uses our labels as they are: loss on the completion only, its EOS included, one BOS.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1ft.settings import Settings

log = logging.getLogger("r1ft")


@dataclass(frozen=True)
class Hardware:
    """What training runs on (read once by the pipeline, passed down)."""

    device: str  # "cuda" or "cpu"
    gpu_name: str = ""
    gpu_mem_gb: float = 0.0
    gpu_count: int = 0
    bf16: bool = False


@dataclass(frozen=True)
class Layout:
    """How the global batch is spread: per-device micro-batch x accumulation x processes."""

    per_device: int
    accum: int
    processes: int

    @property
    def global_batch(self) -> int:
        return self.per_device * self.accum * self.processes


@dataclass
class TrainResult:
    adapter_dir: Path
    global_step: int
    interrupted: str = ""  # "", "SIGTERM", "SIGINT", "disk"
    resumed_from: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)


def detect_hardware() -> Hardware:
    import torch

    if not torch.cuda.is_available():
        return Hardware(device="cpu")
    props = torch.cuda.get_device_properties(0)
    return Hardware(
        device="cuda",
        gpu_name=props.name,
        gpu_mem_gb=props.total_memory / 1e9,
        gpu_count=torch.cuda.device_count(),
        bf16=torch.cuda.is_bf16_supported(),
    )


def batch_layout(settings: Settings, processes: int) -> Layout:
    """Keep the recipe's sequences per optimizer step, whatever the number of processes."""
    if settings.batch_size and settings.grad_accum:
        return Layout(settings.batch_size, settings.grad_accum, processes)
    if settings.batch_size:
        accum = max(1, math.ceil(settings.global_batch / (settings.batch_size * processes)))
        return Layout(settings.batch_size, accum, processes)
    per_process = max(1, settings.global_batch // processes)
    accum = settings.grad_accum or 1
    return Layout(max(1, per_process // accum), accum, processes)


def bnb_config(settings: Settings):
    """The original recipe's 4-bit NF4 with double quantization and bf16 compute."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def lora_config(settings: Settings):
    from peft import LoraConfig

    targets = settings.lora_targets
    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        bias="none",
        task_type="CAUSAL_LM",
    )


def optimizer_name(settings: Settings, quant: str, hw: Hardware) -> str:
    if settings.optim != "auto":
        return settings.optim
    if quant == "nf4":
        return "paged_adamw_8bit"
    return "adamw_torch_fused" if hw.device == "cuda" else "adamw_torch"


def checkpoint_mode(settings: Settings, hw: Hardware) -> str:
    """`all`, `off`, or `adaptive`: auto on a GPU checkpoints, per micro-batch, only the decoder layers that
    its token count needs to stay under the memory budget (none for a typical batch on a large card)."""
    if settings.gradient_checkpointing != "auto":
        return "all" if settings.gradient_checkpointing == "true" else "off"
    return "adaptive" if hw.device == "cuda" else "off"


# `auto` compiles on cards this large (the H100/A100 80 GB, H200): a typical 16-sequence batch (about 22 GB
# of activations at 3.1 MB a token) and nearly every long one keep all their activations, the compiled path
# the benchmark measured (H100 and H200, 2026-11-28). The compiled path with checkpointed layers also ran
# (b_16g: an H200 held to a 16 GB card's budget, 13.5x the original recipe), but the smaller cards are other
# architectures (Ada, consumer Ampere), where Inductor's flex-attention kernels have not been run.
COMPILE_MIN_GPU_GB = 60.0


def compiles(settings: Settings, device: str, gpu_mem_gb: float) -> bool:
    """Regional torch.compile of the decoder layers (`true`, or `auto` on a GPU of 60 GB or more); shared
    by training and the plan, which may know the card only by its memory."""
    value = str(settings.torch_compile).lower()
    if value != "auto":
        return value == "true"
    return device == "cuda" and gpu_mem_gb >= COMPILE_MIN_GPU_GB


def use_compile(settings: Settings, hw: Hardware) -> bool:
    return compiles(settings, hw.device, hw.gpu_mem_gb)


def attn_implementation(settings: Settings, hw: Hardware) -> str:
    if settings.attn_implementation != "auto":
        return settings.attn_implementation
    return "flex_attention" if hw.device == "cuda" else "sdpa"


def use_liger(settings: Settings, hw: Hardware) -> bool:
    if settings.liger != "auto":
        return settings.liger == "true"
    if hw.device != "cuda" or use_compile(settings, hw):
        return False  # under torch.compile, Inductor fuses the same ops (Liger's kernels would break graphs)
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def sft_config(
    settings: Settings,
    run_dir: Path,
    layout: Layout,
    hw: Hardware,
    quant: str,
    checkpointing: bool,
    liger: bool = False,
    has_eval: bool = True,
):
    """TRL's SFTConfig for this run. Checkpoint rotation is ours (the disk watchdog), not the Trainer's."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio in transformers 5
        weight_decay=settings.weight_decay,
        per_device_train_batch_size=layout.per_device,
        per_device_eval_batch_size=layout.per_device,
        gradient_accumulation_steps=layout.accum,
        # adaptive checkpointing is set per micro-batch on the model (load_base_model), not by the Trainer
        gradient_checkpointing=checkpointing and checkpoint_mode(settings, hw) != "adaptive",
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        optim=optimizer_name(settings, quant, hw),
        bf16=hw.bf16,
        max_length=None,  # sequences are already within max_seq_len (data length policy)
        padding_free=settings.padding_free,
        completion_only_loss=None,
        use_liger_kernel=liger,
        torch_compile=False,  # regional compilation of the decoder layers instead (load_base_model)
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # its isnan/isinf check is a host sync every micro-batch; a NaN shows as NaN
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient each step: no graph walk for unused ones
        eval_strategy="steps" if has_eval else "no",
        eval_steps=settings.eval_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=None,
        report_to="none",  # the TensorBoard callback is added explicitly with our log dir
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=0 if hw.device == "cpu" else 2,
        dataloader_pin_memory=hw.device == "cuda",
        dataloader_persistent_workers=hw.device == "cuda",
        dataloader_prefetch_factor=4 if hw.device == "cuda" else None,
        remove_unused_columns=True,
        disable_tqdm=not sys.stderr.isatty(),  # off a TTY the log callback prints one line per log step
        use_cpu=hw.device == "cpu",
    )


def load_base_model(base: str | Path, settings: Settings, hw: Hardware, quant: str, attn: str):
    """The base model in bf16 (GPU) or fp32 (CPU), or 4-bit NF4 with bf16 non-quantized weights, on this
    process's GPU, with the speed-only patches of `r1ft.training.fastpath` (see `apply_fastpath`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from r1ft.training import distributed, fastpath

    kwargs: dict[str, Any] = {"attn_implementation": attn}
    if not Path(str(base)).exists():
        kwargs["revision"] = settings.base_revision
    if hw.device == "cuda":
        fastpath.set_expandable_segments()
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = distributed.device_map()
    else:
        kwargs["dtype"] = torch.float32
    if quant == "nf4":
        kwargs["quantization_config"] = bnb_config(settings)
    model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    model.config.use_cache = False  # also what lets transformers build the packed-sequence mask
    apply_fastpath(model, settings, hw, quant)
    return model


def apply_fastpath(model, settings: Settings, hw: Hardware, quant: str) -> dict[str, Any]:
    """Regional compilation, adaptive checkpointing and bf16 LoRA inputs where they apply; what was done."""
    from r1ft.plan import act_bytes_per_token
    from r1ft.training import fastpath

    done: dict[str, Any] = {}
    if hw.device == "cuda" and checkpoint_mode(settings, hw) == "adaptive":
        compiled = use_compile(settings, hw)
        policy = fastpath.CheckpointPolicy(
            budget_bytes=fastpath.memory_budget_bytes(hw.gpu_mem_gb),
            layers=len(fastpath.decoder_layers(model)),
            act_full=act_bytes_per_token(quant, checkpointing=False, compiled=compiled),
            act_ckpt=act_bytes_per_token(quant, checkpointing=True, compiled=compiled),
        )
        fastpath.install_adaptive_checkpointing(model, policy)
        done["checkpoint_policy"] = policy
    if hw.device == "cuda":
        fastpath.keep_lora_inputs_in_compute_dtype(model)
    if use_compile(settings, hw):
        done["compiled_layers"] = fastpath.compile_layers(model)
    model._r1ft_fastpath = done
    return done


@contextmanager
def module_patches_undone(model):
    """Restore the model's modeling module (e.g. `modeling_qwen2`) as it was, on leaving.

    Liger patches that module's classes and functions (RMSNorm, SwiGLU MLP, rotary) for the whole
    process, so every model built later in the job (merge, evaluation, the GGUF check on CPU) would run
    Triton kernels, which fail on CPU tensors. The trained model keeps its own patched modules."""
    module = sys.modules.get(type(model).__module__)
    if module is None:
        yield
        return
    saved = dict(vars(module))
    try:
        yield
    finally:
        for name in [n for n in vars(module) if n not in saved]:
            delattr(module, name)
        for name, value in saved.items():
            if vars(module).get(name) is not value:
                setattr(module, name, value)


def run_training(
    settings: Settings,
    run_dir: Path,
    base: str | Path,
    tokenizer,
    train_ds,
    eval_ds,
    hw: Hardware,
    choices: dict[str, Any],
    callbacks: list,
    resume_from: Path | None = None,
    stop_flag=None,
) -> TrainResult:
    """Train the LoRA adapter with TRL's SFTTrainer and save it (with the tokenizer) to run_dir/adapter.

    `choices` holds the plan's decisions: quant, layout (Layout), checkpointing, attn, liger.
    """
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    from r1ft.training.trainer import LeanSFTTrainer

    quant, layout = choices["quant"], choices["layout"]
    model = load_base_model(base, settings, hw, quant, choices["attn"])
    has_eval = eval_ds is not None and len(eval_ds) > 0
    args = sft_config(
        settings, run_dir, layout, hw, quant, choices["checkpointing"], choices["liger"], has_eval=has_eval
    )
    from r1ft.training import distributed

    if distributed.is_main():  # one event file, written by rank 0
        tb = TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run_dir / "logs")))
        callbacks = [tb, log_callback(), *callbacks]
    with module_patches_undone(model):  # Liger swaps classes in transformers' modeling module
        trainer = LeanSFTTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds if has_eval else None,
            processing_class=tokenizer,
            peft_config=lora_config(settings),
            callbacks=callbacks,
        )
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # its raw dicts are replaced by the log callback's lines
        out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        adapter_dir = run_dir / "adapter"
        if trainer.is_world_process_zero():
            trainer.model.save_pretrained(str(adapter_dir))
            tokenizer.save_pretrained(str(adapter_dir))
        metrics = dict(out.metrics)
        stopped = stop_flag is not None and stop_flag.reason
        if trainer.eval_dataset is not None and not stopped:
            final_eval = trainer.evaluate()
            metrics.update(final_eval)
    return TrainResult(
        adapter_dir=adapter_dir,
        global_step=trainer.state.global_step,
        resumed_from=str(resume_from or ""),
        metrics=metrics,
        log_history=list(trainer.state.log_history),
    )


def log_callback():
    """One readable log line per logging step: step, loss, learning rate, tokens/s, time left."""
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0, self.tokens0 = time.perf_counter(), state.global_step, None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            elapsed = time.perf_counter() - self.t0
            done = max(1, state.global_step - self.step0)
            left = (state.max_steps - state.global_step) * elapsed / done
            parts = [f"step {state.global_step}/{state.max_steps}"]
            for key, fmt in (
                ("loss", ".4f"),
                ("eval_loss", ".4f"),
                ("learning_rate", ".2e"),
                ("grad_norm", ".3f"),
            ):
                if key in logs:
                    parts.append(f"{key} {logs[key]:{fmt}}")
            tokens = logs.get("num_tokens")
            if tokens is not None:
                self.tokens0 = tokens if self.tokens0 is None else self.tokens0
                if elapsed > 0 and tokens > self.tokens0:
                    parts.append(f"{(tokens - self.tokens0) / elapsed:,.0f} tokens/s")
            if "train_runtime" in logs:
                parts.append(f"done in {logs['train_runtime']:.0f} s")
            elif state.global_step < state.max_steps:
                parts.append(f"~{left / 60:.1f} min left")
            log.info("train: %s", ", ".join(parts))

    return LogCallback()
