"""Generation for the evaluation: the model loaded for inference, and batched answers to user turns
(chat template with the generation prompt, left padding, KV cache; greedy or the model's sampling)."""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from r1ft.chat import prompt_text

log = logging.getLogger(__name__)

SAMPLING = {"temperature": 0.6, "top_p": 0.95}  # the model's generation_config.json
# Greedy: neutral values override the model's 0.6 / 0.95 (unused when greedy, but transformers warns).
GREEDY_NEUTRAL = {"temperature": 1.0, "top_p": 1.0}
SDPA_SKIP_CUDNN = True


@dataclass
class Generation:
    """One model output: text (special tokens dropped), new tokens counted up to and including EOS."""

    text: str
    new_tokens: int
    finished: bool  # ended with EOS (not cut at max_new_tokens or by the deadline)


def device_and_dtype():
    """bf16 on a CUDA GPU, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def load_for_generation(path: Path):
    """Model (eval mode, on the device) and left-padding tokenizer from a local model directory.

    An adapter directory (adapter_config.json) is loaded onto its base and merged in memory: that is how
    the fine-tune is scored when the merged shards were streamed to the destination and are not on disk.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = device_and_dtype()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        adapter_config = Path(path) / "adapter_config.json"
        if adapter_config.is_file():
            from peft import PeftModel

            base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
            model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise RuntimeError(
            f"cannot load a model from {path}: {e}; check the run's merged/ or the base model"
        ) from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def release_memory() -> None:
    """Hand freed GPU memory back (call after the last reference to a model is deleted)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate(
    model,
    tokenizer,
    problems: list[str],
    max_new_tokens: int,
    sample: bool = False,
    max_time: float | None = None,
    cache_implementation: str | None = None,
) -> list[Generation]:
    """Answer a batch of user turns: chat template with the generation prompt (ends `<think>\\n`), tokens
    without added specials (the template emits BOS), left padding, KV cache; greedy or SAMPLING."""
    import torch
    from transformers import GenerationConfig

    texts = [prompt_text(tokenizer, p) for p in problems]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
    eos = tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        **(SAMPLING if sample else GREEDY_NEUTRAL),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
        max_time=max_time,
        **({"cache_implementation": cache_implementation} if cache_implementation else {}),
    )
    with torch.inference_mode(), _attention_backends(model.device):
        out = model.generate(**enc, generation_config=config)
    gens = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        finished = eos in row
        kept = row[: row.index(eos)] if finished else row
        gens.append(
            Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept) + finished, finished)
        )
    return gens


def _attention_backends(device):
    """On CUDA, SDPA without the cuDNN backend: decoding asks for a new key length at every step, and cuDNN
    builds an execution plan per shape, which made every first pass over a length ~3x slower on an H200."""
    import contextlib

    if device.type != "cuda" or not SDPA_SKIP_CUDNN:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
