"""The training benchmark's variants: the original recipe (a), r1ft's 4-bit (b) and bf16 (c) paths and
their ablations on one GPU, and strong and weak scaling on several."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

FULL_EXAMPLES = 22_500  # train examples of the real mix (MathCodeInstruct 24,700 x 0.9 + SciBench)
FULL_EPOCHS = 3
CHECK_STEPS = 30  # a and b: the loss check's steps
OTHER_STEPS = 15  # the other variants: enough timed steps after the warm-up
CHECK_TOLERANCE = 0.02
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "4090": 165.2}


@dataclass
class Variant:
    name: str
    label: str
    recipe: str = "r1ft"  # "original" or "r1ft"
    env: dict[str, str] = field(default_factory=dict)
    data: str = "typical"  # "typical" or "worst" (16 x max length)
    card_gb: float = 0.0  # r1ft as on a card of this size (0: the real card)
    gpus: int = 1
    steps: int = 0  # 0: the run's --steps
    profile: bool = False


def single_gpu_variants() -> list[Variant]:
    """a is the notebook's recipe as written, b the same recipe in meaning (`R1FT_PRESET=original`: NF4 base,
    paged AdamW 8-bit, the notebook's values) computed r1ft's way, so b's ratio to a is like for like; c is
    `full`'s bf16 path. a reads its values from the same preset."""
    compiled = {"R1FT_TORCH_COMPILE": "true"}
    original = {"R1FT_PRESET": "original"}
    nf4, bf16 = {**original, **compiled}, {"R1FT_QUANT": "none", **compiled}
    worst = {"data": "worst", "steps": 4}
    return [
        Variant("a", "original recipe: NF4, 2x8 padded, paged AdamW 8-bit, ckpt, SDPA", recipe="original", env=original),
        Variant("b", "R1FT_PRESET=original: NF4, paged AdamW 8-bit, 16 padding-free, flex, compiled, adaptive ckpt", env=nf4),
        Variant("c", "r1ft bf16: 16 padding-free, flex, compiled, adaptive ckpt", env=bf16),
        Variant("c_eager", "c without torch.compile (Liger kernels instead)", env={**bf16, "R1FT_TORCH_COMPILE": "false"}),
        Variant("c_cpp", "c with Inductor's C++ wrapper (kernels launched from C++)", env={**bf16, "TORCHINDUCTOR_CPP_WRAPPER": "1"}),
        Variant("c_ckpt", "c with every layer checkpointed", env={**bf16, "R1FT_GRADIENT_CHECKPOINTING": "true"}),
        Variant("b_16g", "b as on a 16 GB card (12 GB budget)", env=nf4, card_gb=16.0),
        Variant("b_max16", "b as on a 16 GB card, 16 x 2048 tokens", env=nf4, card_gb=16.0, **worst),
        Variant("c_max", "c, 16 x 2048 tokens", env=bf16, **worst),
    ]  # fmt: skip


def multi_gpu_variants(counts: list[int]) -> list[Variant]:
    """The 1-GPU baseline, then strong and weak scaling on each GPU count."""
    bf16 = {"R1FT_QUANT": "none", "R1FT_TORCH_COMPILE": "true"}
    out = [Variant("c", "r1ft bf16, 1 GPU, 16 sequences per step", env=bf16)]
    for n in counts:
        weak = {**bf16, "R1FT_GLOBAL_BATCH": str(16 * n)}
        out.append(Variant(f"c_strong{n}", f"{n} GPUs, 16 sequences per step in all", env=bf16, gpus=n))
        out.append(Variant(f"c_weak{n}", f"{n} GPUs, 16 sequences per GPU", env=weak, gpus=n))
    return out


def gpu_counts(text: str) -> list[int]:
    """`--gpus` as a list: "2" or "2,4" (1 alone: the single-GPU variants)."""
    try:
        counts = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"bench: --gpus takes GPU counts such as 2 or 2,4, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise SystemExit(f"bench: --gpus takes GPU counts of 1 or more, not {text!r}")
    return sorted(set(counts))


def tiny_variant(v: Variant) -> Variant:
    """The same variant on the CPU tiny model: fp32, no compile, no 4-bit, plain AdamW (bitsandbytes needs
    CUDA), SDPA, no LoRA dropout."""
    env = {**v.env, "R1FT_QUANT": "none", "R1FT_OPTIM": "auto", "R1FT_TORCH_COMPILE": "false",
           "R1FT_LORA_DROPOUT": "0"}  # fmt: skip
    env.pop("R1FT_GRADIENT_CHECKPOINTING", None)
    return Variant(**{**asdict(v), "env": env, "card_gb": 0.0})
