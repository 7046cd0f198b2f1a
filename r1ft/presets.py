"""The presets: named sets of defaults under every explicit setting (`R1FT_PRESET`).

`full` is r1ft's recipe (the Settings fields' own defaults), `original` the notebook's in meaning, `smoke` the
whole job on the embedded tiny model in a minute on a CPU. A value the user sets always wins over a preset's.
"""

from __future__ import annotations

from typing import Any

from r1ft.model.tiny import TINY_MODEL

# The notebook's recipe in meaning (README: "The recipe against the notebook"). Every value that decides what
# is learned is written out, so that a change of `full`'s defaults never moves it; how a step is computed
# (padding-free batches, the chunked LM head, compilation on large cards) stays r1ft's.
ORIGINAL_RECIPE: dict[str, Any] = {
    "quant": "nf4", "optim": "paged_adamw_8bit",  # QLoRA: 4-bit NF4 base, double quant, bf16 compute
    "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_targets": "all-linear",
    "learning_rate": 2e-4, "lr_scheduler": "cosine", "warmup_ratio": 0.03, "weight_decay": 0.0,
    "epochs": 3.0, "global_batch": 16, "max_seq_len": 2048, "save_total_limit": 3,
    "length_policy": "truncate",  # TRL's SFTTrainer with max_length cuts a longer example, keeps it
    "mathcodeinstruct_samples": 24_700, "eval_fraction": 0.1,  # about 25k examples, split 90/10
    "dedup": "pair", "interpreter_output_loss": True,  # no dedup described: only exact repeats go
}  # fmt: skip
# Preset defaults. A value the user sets explicitly always wins over the preset's.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "original": ORIGINAL_RECIPE,
    "smoke": {
        "base_model": TINY_MODEL,
        "mathcodeinstruct_source": "builtin",
        "scibench_source": "builtin",
        "mathcodeinstruct_samples": 0,
        "scibench_upsample": 1,
        "max_steps": 12,
        "save_steps": 4,
        "logging_steps": 1,
        "eval_steps": 6,
        "max_seq_len": 512,
        "learning_rate": 3e-3,
        "quant": "none",
        "gradient_checkpointing": "false",
        "eval_samples": 3,
        "eval_scibench_samples": 3,
        "eval_math500_samples": 3,
        "eval_samples_per_problem": 2,
        "eval_max_new_tokens": 48,
        "math500_source": "builtin",
        "disk_budget_gb": 2.0,
        "disk_free_floor_gb": 0.2,
    },
}
