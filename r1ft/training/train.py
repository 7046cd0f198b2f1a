"""LoRA / QLoRA training with TRL's SFTTrainer: the base model loaded as the recipe says, the speed-only
patches applied, and the training call.

The dataset arrives pre-tokenized (`input_ids` + `labels`, from `r1ft.chat.tokenize_example`), so TRL
uses our labels as they are: loss on the completion only, its EOS included, one BOS.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1ft.exits import ExitCode, JobError
from r1ft.machine.gpu import Hardware
from r1ft.recipe import Recipe, act_bytes_per_token
from r1ft.settings import Settings
from r1ft.training import distributed, fastpath
from r1ft.training.adapters import bnb_config, lora_config, sft_config
from r1ft.validation import lora_target_problems

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    adapter_dir: Path
    global_step: int
    max_steps: int = 0  # the steps the run was to train (the Trainer's, from max_steps or the epochs)
    epoch: float = 0.0  # epochs trained so far (fractional)
    epochs: float = 0.0  # epochs the run was to train
    interrupted: str = ""  # "", "SIGTERM", "SIGINT", "disk"
    resumed_from: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    eval_loss_base: float | None = None  # the base model's eval loss at step 0 (None when resumed)


def load_base_model(base: str | Path, settings: Settings, recipe: Recipe, hw: Hardware):
    """The base model in bf16 (GPU) or fp32 (CPU), or 4-bit NF4 with bf16 non-quantized weights, on this
    process's GPU, with the speed-only patches of `r1ft.training.fastpath` (see `apply_fastpath`)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"attn_implementation": recipe.attention}
    if not Path(str(base)).exists():
        kwargs["revision"] = settings.base_revision
    if recipe.device == "cuda":
        fastpath.set_expandable_segments()
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = distributed.device_map()
    else:
        kwargs["dtype"] = torch.float32
    if recipe.quant == "nf4":
        kwargs["quantization_config"] = bnb_config()
    model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    problems = lora_target_problems(settings.lora_targets, (name for name, _ in model.named_modules()))
    if problems:  # a model type whose modules were not known before it was loaded
        raise JobError(
            "these settings do not fit the base model:\n  " + "\n  ".join(problems), ExitCode.SETTINGS
        )
    model.config.use_cache = False  # also what lets transformers build the packed-sequence mask
    apply_fastpath(model, recipe, hw)
    return model


def apply_fastpath(model, recipe: Recipe, hw: Hardware) -> dict[str, Any]:
    """Regional compilation, adaptive checkpointing and bf16 LoRA inputs where they apply; what was done."""
    done: dict[str, Any] = {}
    if recipe.device == "cuda" and recipe.checkpointing == "adaptive":
        policy = fastpath.CheckpointPolicy(
            budget_bytes=fastpath.memory_budget_bytes(hw.gpu_mem_gb),
            layers=len(fastpath.decoder_layers(model)),
            act_full=act_bytes_per_token(checkpointing=False, compiled=recipe.compiled),
            act_ckpt=act_bytes_per_token(checkpointing=True, compiled=recipe.compiled),
        )
        fastpath.install_adaptive_checkpointing(model, policy)
        done["checkpoint_policy"] = policy
    if recipe.device == "cuda":
        fastpath.keep_lora_inputs_in_compute_dtype(model)
    if recipe.compiled:
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
    recipe: Recipe,
    hw: Hardware,
    callbacks: list,
    resume_from: Path | None = None,
    stop_flag=None,
) -> TrainResult:
    """Train the LoRA adapter with TRL's SFTTrainer as the recipe says and save it (with the tokenizer) to
    run_dir/adapter."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import PrinterCallback

    from r1ft.training.trainer import LeanSFTTrainer  # imports torch and TRL at module level

    model = load_base_model(base, settings, recipe, hw)
    has_eval = eval_ds is not None and len(eval_ds) > 0
    args = sft_config(settings, run_dir, recipe, has_eval=has_eval)
    # Step 0 of a fresh run: the adapter's B matrices are zero, so this eval loss is the base model's, the
    # point the eval-loss indicator is read against (and the first point of the eval curve).
    args.eval_on_start = has_eval and resume_from is None
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
        trainer.remove_callback(PrinterCallback)  # its raw dicts are replaced by the log callback's lines
        out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        adapter_dir = run_dir / "adapter"
        if trainer.is_world_process_zero():
            trainer.model.save_pretrained(str(adapter_dir))
            tokenizer.save_pretrained(str(adapter_dir))
        metrics = dict(out.metrics)
        stopped = stop_flag is not None and stop_flag.reason
        last = _eval_at(trainer.state.log_history, trainer.state.global_step)
        if last is not None:  # the last step was an evaluation step: the same loss again would cost its time
            metrics.update(last)
        elif trainer.eval_dataset is not None and not stopped:
            metrics.update(trainer.evaluate())
    return TrainResult(
        adapter_dir=adapter_dir,
        global_step=trainer.state.global_step,
        max_steps=trainer.state.max_steps,
        epoch=round(float(trainer.state.epoch or 0.0), 4),
        epochs=float(trainer.state.num_train_epochs),
        resumed_from=str(resume_from or ""),
        metrics=metrics,
        eval_loss_base=_base_eval_loss(trainer.state.log_history),
        log_history=list(trainer.state.log_history),
    )


def finished_run(checkpoint: Path, run_dir: Path, tokenizer, main: bool = True) -> TrainResult | None:
    """The run's result when `checkpoint` is its last step (training ended, and a later stage was interrupted),
    with the adapter copied from it to run_dir/adapter (by the main process); None while steps remain. Every
    process decides alike, from the same file.

    Resuming the Trainer there is wrong as well as slow: transformers 5.24's loop checks for the end after
    each step, so a Trainer resumed at max_steps trains one step past it (checkpoint-11 of a 10-step run);
    and the base model would be loaded (and compiled, about 2 min) for nothing. The checkpoint's settings
    were checked against this job's before (`check_resume_identity`), so its max_steps is this run's."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    step, max_steps = int(state.get("global_step", 0)), int(state.get("max_steps", 0))
    if max_steps <= 0 or step < max_steps:
        return None
    adapter_dir = run_dir / "adapter"
    if main:
        _copy_adapter(checkpoint, adapter_dir, tokenizer)
    history = list(state.get("log_history", []))
    return TrainResult(
        adapter_dir=adapter_dir,
        global_step=step,
        max_steps=max_steps,
        epoch=round(float(state.get("epoch") or 0.0), 4),
        epochs=float(state.get("num_train_epochs") or 0.0),
        resumed_from=str(checkpoint),
        metrics=_eval_at(history, step) or {},
        eval_loss_base=_base_eval_loss(history),
        log_history=history,
    )


def _copy_adapter(checkpoint: Path, adapter_dir: Path, tokenizer) -> None:
    """The checkpoint's adapter as `trainer.model.save_pretrained` would write it, with the tokenizer;
    staged beside, so an interrupted copy never leaves a half adapter."""
    if not (checkpoint / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"{checkpoint} holds no adapter_model.safetensors")
    staging = adapter_dir.with_name(adapter_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        if (checkpoint / name).is_file():
            shutil.copy2(checkpoint / name, staging / name)
    tokenizer.save_pretrained(str(staging))
    shutil.rmtree(adapter_dir, ignore_errors=True)
    staging.replace(adapter_dir)


def _base_eval_loss(history: list[dict[str, Any]]) -> float | None:
    """The eval loss at step 0 (the base model's), when this run measured it."""
    return next((h["eval_loss"] for h in history if h.get("step") == 0 and "eval_loss" in h), None)


def _eval_at(history: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    """The eval metrics logged at `step`, if an evaluation ran there."""
    for entry in reversed(history):
        if entry.get("step") == step and "eval_loss" in entry:
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return None


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
