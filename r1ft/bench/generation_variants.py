"""The generation benchmark's variants: the GPU checks, r1ft's engine (greedy and sampled) and the HF
baselines it is measured against."""

from __future__ import annotations

from dataclasses import dataclass

PEAK_SCALE = 8.0  # lm_head x 8: logit std ~6 instead of ~0.8 (a top token of ~0.8 probability at T 0.6)
SAMPLED = (0.6, 0.95)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    kind: str  # "check", "engine", "hf", "hf_static", "hf_cb"
    sampled: bool = False
    batch: int = 0  # hf: 0 = sized from free memory
    bounded: bool = False  # time-bounded by --baseline-seconds


VARIANTS = (
    Variant(
        "check", "GPU checks: kernel vs reference, greedy = HF generate (fp32), bf16 divergence", "check"
    ),
    Variant("engine", "r1ft engine, greedy", "engine"),
    Variant("engine_sampled", "r1ft engine, T 0.6 / top_p 0.95", "engine", sampled=True),
    Variant(
        "hf64", "HF generate, dynamic cache, batch 64 (the old evaluation)", "hf", batch=64, bounded=True
    ),
    Variant("hf_mem", "HF generate, dynamic cache, batch from free memory", "hf", bounded=True),
    Variant(
        "hf_static", "HF generate, static cache + compile, batch from free memory", "hf_static", bounded=True
    ),
    Variant("hf_cb", "transformers continuous batching (tuned config)", "hf_cb", bounded=True),
)
BASELINE = "hf64"
