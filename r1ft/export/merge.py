"""Merge the LoRA adapter into a bf16 base, write it as safetensors shards, and check it.

Never merge into a 4-bit model (PEFT would re-quantize the sum: rounding loss). For a bf16-trained
adapter the base is loaded in bf16 (route A); for an NF4-trained adapter the base is loaded with the same
quantization and dequantized before merging (route B), which matches exactly what the adapter saw.
Shards are written one at a time; an `on_shard` hook lets the caller publish and delete each one so the
merged model never has to sit whole on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from r1ft.chat import prompt_ids, user_message
from r1ft.files import sha256_file
from r1ft.training.adapters import bnb_config

log = logging.getLogger(__name__)

CHECK_PROMPTS = [
    "Solve for x: 3x + 5 = 20",
    "What is the derivative of f(x) = x^3 + 2x^2 - 5x + 3?",
    "Calculate the force required to accelerate a 10 kg object at 5 m/s^2.",
]


def load_base_for_merge(base: str | Path, revision: str | None, quant: str, device: str, dtype=None):
    """The base model, unquantized, in `dtype` (bf16 by default)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.bfloat16
    kwargs = {"dtype": dtype}
    if revision and not Path(str(base)).exists():
        kwargs["revision"] = revision
    if quant == "nf4" and device == "cuda":
        kwargs["quantization_config"] = bnb_config()
        kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
        model = model.dequantize()  # route B: exactly the weights the adapter was trained against
        return model.to(dtype)
    if device == "cuda":
        kwargs["device_map"] = {"": 0}
    return AutoModelForCausalLM.from_pretrained(str(base), **kwargs)


def merge_adapter(base_model, adapter_dir: Path):
    """Attach the adapter to an unquantized base and fold it in; returns the plain merged model."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    return peft_model.merge_and_unload()


SHARD_SIZE = "2GB"
SHARD_METADATA = {"format": "pt"}


def _shards(model, max_shard_size: str | int = SHARD_SIZE):
    """(file name, tensors on the CPU) of each shard, in order, as `save_sharded` writes them; and the split."""
    from huggingface_hub import split_torch_state_dict_into_shards

    state = dict(model.state_dict())
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )

    def shards():
        for filename, names in split.filename_to_tensors.items():
            yield filename, {n: state[n].detach().to("cpu").contiguous() for n in names}

    return shards(), split, state


def save_sharded(
    model,
    tokenizer,
    out_dir: Path,
    max_shard_size: str | int = SHARD_SIZE,
    on_shard: Callable[[Path], None] | None = None,
) -> dict:
    """Write the model as safetensors shards (+ index when several), config, generation config, tokenizer.

    Each shard is written, hashed, handed to `on_shard` (which may publish and delete it), then the next is
    made. Returns {"shards": [...], "total_bytes": N, "sha256": {shard: hex}}.
    """
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    shards, split, state = _shards(model, max_shard_size)
    total, digests = 0, {}
    for filename, tensors in shards:
        tmp = out_dir / (filename + ".partial")
        save_file(tensors, str(tmp), metadata=SHARD_METADATA)
        path = out_dir / filename
        tmp.chmod(
            0o644
        )  # safetensors creates its files 0600; published weights are world-readable like the rest
        tmp.replace(path)
        total += path.stat().st_size
        digests[filename] = sha256_file(path)
        del tensors
        if on_shard is not None:
            on_shard(path)
    if split.is_sharded:
        index = {
            "metadata": {"total_size": split.metadata.get("total_size", total)},
            "weight_map": split.tensor_to_filename,
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    model.config.dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
    model.config.use_cache = True
    model.config.save_pretrained(str(out_dir))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    del state
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"shards": list(split.filename_to_tensors), "total_bytes": total, "sha256": digests}


def shard_digests(model, max_shard_size: str | int = SHARD_SIZE) -> dict[str, str]:
    """The sha256 each shard file of `model` would have if `save_sharded` wrote it (nothing written)."""
    from safetensors.torch import save

    shards, _, _ = _shards(model, max_shard_size)
    return {
        name: hashlib.sha256(save(tensors, metadata=SHARD_METADATA)).hexdigest() for name, tensors in shards
    }


def merged_model(base: Path, revision: str | None, adapter_dir: Path, quant: str):
    """The merged bf16 model in memory, built as the merge stage builds it (on the GPU when there is one)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return merge_adapter(load_base_for_merge(base, revision, quant, device, torch.bfloat16), adapter_dir)


def max_logit_diff(model_a, model_b, tokenizer, prompts: list[str] = CHECK_PROMPTS) -> float:
    """Largest absolute difference between two models' logits on the check prompts."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([prompt_ids(tokenizer, user_message(p))])
            la = model_a(input_ids=ids.to(model_a.device)).logits.float().cpu()
            lb = model_b(input_ids=ids.to(model_b.device)).logits.float().cpu()
            worst = max(worst, (la - lb).abs().max().item())
    return worst


def merge_to_dir(
    base: Path,
    revision: str | None,
    adapter_dir: Path,
    quant: str,
    tokenizer,
    out_dir: Path,
    on_shard: Callable[[Path], None] | None = None,
) -> dict:
    """Load the base unquantized in bf16 (on the GPU when there is one), fold the adapter in, write the
    shards (each handed to `on_shard`); returns `save_sharded`'s summary."""
    merged = merged_model(base, revision, adapter_dir, quant)
    info = save_sharded(merged, tokenizer, out_dir, on_shard=on_shard)
    del merged
    return info


def adapter_logit_check(base: Path, revision: str | None, adapter_dir: Path, quant: str, tokenizer) -> float:
    """Largest logit difference between the merged model and the base with the adapter attached, as
    training ran it (NF4 base for a QLoRA run), on the check prompts: bf16 on a GPU, fp32 on the CPU."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    kwargs: dict = {"dtype": dtype, "device_map": {"": 0}} if cuda else {"dtype": dtype}
    if quant == "nf4" and cuda:
        kwargs["quantization_config"] = bnb_config()
    if revision and not Path(str(base)).exists():
        kwargs["revision"] = revision
    plain = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    adapter_model = PeftModel.from_pretrained(plain, str(adapter_dir)).eval()
    device = "cuda" if cuda else "cpu"
    merged = merge_adapter(load_base_for_merge(base, revision, quant, device, dtype), adapter_dir).eval()
    worst = max_logit_diff(adapter_model, merged, tokenizer)
    del adapter_model, plain, merged
    if cuda:
        torch.cuda.empty_cache()
    return worst
