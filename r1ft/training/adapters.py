"""Thin pure adapters from the settings and the recipe to the libraries' configs (no GPU, no model):
`bnb_config`, `lora_config`, `sft_config`. Unit-testable on any machine."""

from __future__ import annotations

import sys
from pathlib import Path

from r1ft.recipe import Recipe
from r1ft.settings import Settings


def bnb_config():
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


def sft_config(settings: Settings, run_dir: Path, recipe: Recipe, has_eval: bool = True):
    """TRL's SFTConfig for this run. Checkpoint rotation is ours (the disk watchdog), not the Trainer's."""
    from trl import SFTConfig

    cuda = recipe.device == "cuda"
    return SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a ratio in transformers 5
        weight_decay=settings.weight_decay,
        per_device_train_batch_size=recipe.layout.per_device,
        per_device_eval_batch_size=recipe.layout.per_device,
        gradient_accumulation_steps=recipe.layout.accum,
        # adaptive checkpointing is set per micro-batch on the model (train.load_base_model), not by the Trainer
        gradient_checkpointing=recipe.trainer_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if recipe.checkpointing != "off" else None,
        optim=recipe.optimizer,
        bf16=recipe.bf16,
        max_length=None,  # sequences are already within max_seq_len (data length policy)
        padding_free=settings.padding_free,
        completion_only_loss=None,
        use_liger_kernel=recipe.liger,
        torch_compile=False,  # regional compilation of the decoder layers instead (train.load_base_model)
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
        dataloader_num_workers=2 if cuda else 0,
        dataloader_pin_memory=cuda,
        dataloader_persistent_workers=cuda,
        dataloader_prefetch_factor=4 if cuda else None,
        remove_unused_columns=True,
        disable_tqdm=not sys.stderr.isatty(),  # off a TTY the log callback prints one line per log step
        use_cpu=not cuda,
    )
