"""The two models the evaluation scores, loaded for inference: bf16 on a CUDA GPU, fp32 on the CPU.

The fine-tune is the published merged weights: read from `merged/`, or, when the disk plan streamed those
shards to the destination and deleted them, merged again in memory by the same code (`r1ft.export.merge`),
its shards' sha256 checked against the published ones, so the scores belong to the weights users download.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from r1ft.exits import ExitCode, JobError
from r1ft.export import merge

log = logging.getLogger(__name__)


def device_and_dtype():
    """bf16 on a CUDA GPU, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def load_model(path: Path):
    """The model and tokenizer in a local directory, in eval mode on the device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = device_and_dtype()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise JobError(f"cannot load a model from {path}: {e}; check the run's merged/ or the base model",
                       ExitCode.SETTINGS) from e  # fmt: skip
    return model.to(device).eval(), tokenizer


def recompute_merge(
    base: Path, revision: str | None, adapter_dir: Path, quant: str, published: dict[str, str]
):
    """The merged model rebuilt in memory as the merge stage built it, and whether its shards' sha256 equal
    the published ones (`published`: shard file name -> sha256; None when nothing was recorded)."""
    from transformers import AutoTokenizer

    device, dtype = device_and_dtype()
    model = merge.merged_model(base, revision, adapter_dir, quant)
    digests = merge.shard_digests(model)
    matches = (digests == published) if published else None
    if matches is False:
        log.warning(
            "evaluation: the recomputed merge differs from the published shards %s", sorted(published)
        )
    return model.to(device, dtype).eval(), AutoTokenizer.from_pretrained(adapter_dir), matches


def release() -> None:
    """Hand freed GPU memory back once the last references are gone (the engine's graphs hold reference
    cycles: collected here)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
