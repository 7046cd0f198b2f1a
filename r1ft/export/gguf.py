"""GGUF export of the merged model for llama.cpp, Ollama and LM Studio, checked by llama.cpp before it is kept.

The file format, the tensor-name map and the tokenizer metadata come from the `gguf` package (llama.cpp's own
Python library); this module decides what goes in, the way llama.cpp's `convert_hf_to_gguf.py` does for a
Qwen2 model, and `gguf_quant` decides each tensor's type (the converter's for f16, bf16 and q8_0,
llama-quantize's mix for q4_k_m, q5_k_m and q6_k):

- tensors are converted one at a time, a slab of rows at a time, straight from the safetensors files
  into the output file (two passes: sizes first, then data), so memory holds one output tensor;
- the tokenizer goes in as a gpt2-style BPE (tokens, merges, token types, special ids, add_bos) with
  the chat template, so a runtime renders prompts ending `<｜Assistant｜><think>\\n` as training did.

Each file is written as `model-<type>.gguf.partial` and checked by llama.cpp itself (`gguf_check`: it
loads the file, tokenizes and renders the training prompts to the same ids, and its log-probabilities
agree with the merged model's). Only then is it renamed and handed to `on_file_ready`; a file that fails
is deleted and its result says why.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1ft.export.gguf_check import check_gguf, reference
from r1ft.export.gguf_quant import default_qtype, file_type, is_k_quant, quantize, qwen2_tensors, storage_type
from r1ft.export.gguf_types import SUPPORTED_GGUF_TYPES
from r1ft.files import GB

log = logging.getLogger(__name__)

ARCH = "qwen2"
# Rows converted at a time: bounds the float32 scratch to ~64 MiB whatever the tensor.
_SLAB_ELEMENTS = 16 * 1024 * 1024
# Metadata (about 4 MiB of tokens and merges for the real vocabulary), tensor headers and alignment.
_OVERHEAD_BYTES = 16 * 1024 * 1024
# While a file is checked, llama.cpp's float32 logits at every check-prompt position lie beside it (about
# 190 positions with the real tokenizer: 115 MB at its vocabulary).
_CHECK_POSITIONS = 256


@dataclass(frozen=True)
class GgufResult:
    """The outcome for one requested type. `path` is where the file is (or would have been) written."""

    type: str
    path: Path
    size_bytes: int
    seconds: float  # writing and checking
    verified: bool
    kl_divergence: float | None  # llama.cpp against the merged model, mean nats per token
    message: str
    check_seconds: float = 0.0


@dataclass(frozen=True)
class _Planned:
    """One output tensor: where it comes from and how it is stored."""

    hf_name: str
    gguf_name: str
    file: Path
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType


def file_name(gguf_type: str) -> str:
    """The output file name of a type, e.g. `model-q8_0.gguf`."""
    return f"model-{gguf_type}.gguf"


def estimate_gguf_bytes(config: dict, gguf_type: str) -> int:
    """The disk the GGUF step needs at its peak for one file of a Qwen2 model with this config.json (the disk
    plan): the file, and the logits its check writes beside it."""
    return gguf_file_bytes(config, gguf_type) + _CHECK_POSITIONS * config["vocab_size"] * 4


def gguf_file_bytes(config: dict, gguf_type: str) -> int:
    """The size of the GGUF file: its tensors at the types `gguf_quant` gives them, plus room for metadata."""

    layers = config["num_hidden_layers"]
    tied = bool(config.get("tie_word_embeddings", False))
    return _OVERHEAD_BYTES + sum(
        _tensor_bytes(shape, storage_type(name, shape, gguf_type, layers, tied))
        for name, shape in qwen2_tensors(config)
    )


def export_gguf(
    merged_dir: Path,
    out_dir: Path,
    types: list[str],
    on_file_ready: Callable[[Path], None] | None = None,
    stop_check: Callable[[], None] | None = None,
    on_result: Callable[[GgufResult], None] | None = None,
) -> list[GgufResult]:
    """Write, check and hand over one GGUF file per type, one file at a time.

    `on_file_ready(path)` is called for each checked file before the next one is written, so the caller
    can publish and delete it and never hold two GGUF files on disk. A file that fails the check is
    deleted and its result carries `verified=False` and the reason. `stop_check` is called before each
    tensor is written: the stop it raises (`r1ft.machine.signals.Stopped`) deletes the file being written
    and leaves the finished ones. `on_result(result)` is called for every file's result as it comes (so
    a stop later keeps the record of the files already made).
    """

    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    unknown = [t for t in types if t not in SUPPORTED_GGUF_TYPES]
    if unknown:
        raise ValueError(f"unknown GGUF type(s) {unknown}; choose from {sorted(SUPPORTED_GGUF_TYPES)}")
    if not (merged_dir / "config.json").is_file():
        raise FileNotFoundError(f"{merged_dir} holds no config.json; export GGUF from the merged model dir")
    if not types:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    ref = reference(merged_dir)
    log.info("gguf: the merged model's reference log-probabilities in %.0f s", time.monotonic() - start)
    results = []
    for gguf_type in types:
        result = _export_one(merged_dir, out_dir, gguf_type, ref, stop_check)
        results.append(result)
        if on_result is not None:
            on_result(result)
        if result.verified and on_file_ready is not None:
            on_file_ready(result.path)
    return results


def _export_one(
    merged_dir: Path, out_dir: Path, gguf_type: str, ref, stop_check: Callable[[], None] | None = None
) -> GgufResult:
    """Write one file under a `.partial` name, check it in llama.cpp, then rename it (or delete it)."""

    final = out_dir / file_name(gguf_type)
    partial = final.with_name(final.name + ".partial")
    start = time.monotonic()
    try:
        notes = write_gguf(merged_dir, partial, gguf_type, stop_check)
        size, written = partial.stat().st_size, time.monotonic()
        log.info(
            "gguf %s: wrote %.2f GB in %.0f s; checking it in llama.cpp",
            gguf_type,
            size / GB,
            written - start,
        )
        verdict = check_gguf(partial, gguf_type, ref)
    except Exception as e:  # one bad type must not cost the others or the run's other outputs
        log.exception("gguf %s: export failed", gguf_type)
        partial.unlink(missing_ok=True)
        return GgufResult(gguf_type, final, 0, time.monotonic() - start, False, None, f"export failed: {e!r}")
    except BaseException:  # a stop between tensors (or Ctrl-C): no half-written file left behind
        partial.unlink(missing_ok=True)
        raise
    end = time.monotonic()
    log.info("gguf %s: %s (checked in %.0f s)", gguf_type, verdict.message, end - written)
    if not verdict.ok:
        partial.unlink(missing_ok=True)
        return GgufResult(
            gguf_type,
            final,
            size,
            end - start,
            False,
            verdict.kl,
            f"rejected: {verdict.message}",
            end - written,
        )
    partial.replace(final)
    message = "; ".join([verdict.message, *notes])
    return GgufResult(gguf_type, final, size, end - start, True, verdict.kl, message, end - written)


# ---------------------------------------------------------------------------------------------------
# Writing


def write_gguf(
    merged_dir: Path, path: Path, gguf_type: str, stop_check: Callable[[], None] | None = None
) -> list[str]:
    """Write the GGUF file of the merged model at `path`; returns notes (tensors that fell back to
    another type because their rows do not fill the type's blocks). `stop_check()` runs before each tensor."""
    import gguf

    config = json.loads((merged_dir / "config.json").read_text(encoding="utf-8"))
    _check_supported(config)
    plan = plan_tensors(merged_dir, config, gguf_type)
    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    try:
        _add_model_metadata(writer, merged_dir, config, file_type(gguf_type), plan)
        _add_tokenizer(writer, merged_dir, config)
        for t in plan:
            writer.add_tensor_info(t.gguf_name, t.shape, _np_dtype(t.qtype), _nbytes(t), raw_dtype=t.qtype)
        writer.write_header_to_file(path=path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in plan:
            if stop_check is not None:
                stop_check()
            writer.write_tensor_data(_convert(t, gguf_type))
    finally:
        writer.close()
    return _fallback_notes(plan, gguf_type)


def _fallback_notes(plan: list[_Planned], gguf_type: str) -> list[str]:
    """Which matrices fell back to another type because their rows do not fill the type's blocks (the tiny
    test model's do not; the real model's all do)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    expected = {default_qtype(gguf_type), Q.F32} | ({Q.Q6_K} if is_k_quant(gguf_type) else set())
    fallbacks = sorted({t.qtype.name for t in plan if t.qtype not in expected})
    if not fallbacks:
        return []
    names = [t.gguf_name for t in plan if t.qtype.name in fallbacks]
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return [f"rows not a multiple of the block, stored as {'/'.join(fallbacks)}: {shown}"]


def _check_supported(config: dict) -> None:
    """Refuse configs this converter would silently get wrong."""
    if config.get("model_type") != "qwen2":
        raise ValueError(
            f"GGUF export handles Qwen2 models only, got model_type={config.get('model_type')!r}"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"GGUF export does not handle rope scaling {rope!r}; merge without it")
    if config.get("use_sliding_window"):
        raise ValueError("GGUF export does not handle use_sliding_window=true (llama.cpp's qwen2 ignores it)")


def _safetensors_files(merged_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (sharded or single-file checkpoints)."""
    index = merged_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: merged_dir / fname for name, fname in weight_map.items()}
    from safetensors import safe_open

    files = sorted(merged_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {merged_dir}; merge the adapter first")
    names = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            names.update(dict.fromkeys(st.keys(), f))
    return names


def plan_tensors(merged_dir: Path, config: dict, gguf_type: str) -> list[_Planned]:
    """Every tensor of the GGUF file, in file order, with its GGUF name, shape and storage type."""
    import gguf
    from safetensors import safe_open

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config["num_hidden_layers"])
    found = []
    for hf_name, f in _safetensors_files(merged_dir).items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"tensor {hf_name!r} has no GGUF name for qwen2; is {merged_dir} a Qwen2 model?")
        with safe_open(f, framework="pt") as st:
            shape = tuple(st.get_slice(hf_name).get_shape())
        if len(shape) > 2:
            raise ValueError(
                f"tensor {hf_name!r} has shape {shape}; a Qwen2 model has 1-D and 2-D tensors only"
            )
        found.append((hf_name, gguf_name, f, shape))
    tied = "output.weight" not in {g for _, g, _, _ in found}
    layers = config["num_hidden_layers"]
    return [
        _Planned(hf, g, f, shape, storage_type(g, shape, gguf_type, layers, tied))
        for hf, g, f, shape in found
    ]


def _tensor_bytes(shape: tuple[int, ...], qtype) -> int:
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * type_size


def _np_dtype(qtype):
    import gguf
    import numpy as np

    return {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(
        qtype, np.float32
    )


def _nbytes(t: _Planned) -> int:
    return _tensor_bytes(t.shape, t.qtype)


def _convert(t: _Planned, gguf_type: str):
    """The stored form of one tensor, converted a slab of rows at a time from its safetensors file."""
    import numpy as np
    import torch
    from safetensors import safe_open

    rows = math.prod(t.shape[:-1]) if len(t.shape) > 1 else 1
    step = max(1, _SLAB_ELEMENTS // t.shape[-1])
    out = None
    with safe_open(t.file, framework="pt") as st:
        sl = st.get_slice(t.hf_name)
        for start in range(0, rows, step):
            part = sl[start : start + step] if len(t.shape) > 1 else sl[:]
            chunk = quantize(part.to(torch.float32).numpy(), t.qtype, gguf_type)
            if out is None:
                out = np.empty((rows, chunk.shape[-1]), dtype=chunk.dtype) if len(t.shape) > 1 else chunk
            if len(t.shape) > 1:
                out[start : start + chunk.shape[0]] = chunk
    assert out is not None
    return out


# ---------------------------------------------------------------------------------------------------
# Metadata


def _add_model_metadata(writer, merged_dir: Path, config: dict, ftype, plan: list[_Planned]) -> None:
    """`general.*` and the qwen2 hyper-parameters llama.cpp reads."""
    import gguf

    n_params = sum(math.prod(t.shape) for t in plan)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(_model_name(merged_dir))
    writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads", config["num_attention_heads"]))
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    _add_sampling_defaults(writer, merged_dir)


def _model_name(merged_dir: Path) -> str:
    """The run id for a run's `merged/` dir, else the dir's own name."""
    return merged_dir.parent.name if merged_dir.name == "merged" else merged_dir.name


def _rope_theta(config: dict) -> float:
    rope = config.get("rope_parameters") or {}
    return rope.get("rope_theta", config.get("rope_theta", 10000.0))


def _add_sampling_defaults(writer, merged_dir: Path) -> None:
    """The generation config's temperature and top_p, which llama.cpp takes as its defaults."""
    path = merged_dir / "generation_config.json"
    if not path.is_file():
        return
    gen = json.loads(path.read_text(encoding="utf-8"))
    if gen.get("do_sample") and gen.get("temperature") is not None:
        writer.add_sampling_temp(float(gen["temperature"]))
    if gen.get("do_sample") and gen.get("top_p") is not None:
        writer.add_sampling_top_p(float(gen["top_p"]))


def _add_tokenizer(writer, merged_dir: Path, config: dict) -> None:
    """The BPE vocabulary, merges, token types, special ids, add_bos and the chat template."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    n_vocab = config["vocab_size"]
    tokens, types = vocab_tokens(tokenizer, n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(merged_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise ValueError(
            f"no BPE merges found in {merged_dir}/tokenizer.json; save the tokenizer with the model"
        )
    if special.chat_template is None:
        raise ValueError(
            f"no chat template in {merged_dir}; save the tokenizer (chat_template.jinja) with it"
        )
    special.add_to_gguf(writer, quiet=True)


def vocab_tokens(tokenizer, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token strings and llama.cpp token types by id, padded to the embedding rows with unused slots.

    Added tokens that are special, or look it (`<｜…｜>`), are CONTROL; other added tokens (`<think>`)
    are USER_DEFINED; both are matched whole in text by llama.cpp. This is the converter's rule. Ids past
    the embedding (transformers' Qwen2 tokenizer adds `<|endoftext|>` to a vocabulary that lacks it) have
    no row in the model and are left out.
    """
    import gguf

    by_id = {i: tok for tok, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tok = added[i]
            looks_special = tok.content.startswith(("<|", "<｜")) and tok.content.endswith(("|>", "｜>"))
            tokens.append(tok.content)
            types.append(
                gguf.TokenType.CONTROL if tok.special or looks_special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


# transformers' Qwen2 split pattern, which the base model's tokenizer.json uses.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def pre_tokenizer_name(tokenizer) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for the way this tokenizer splits text before BPE.

    Read off the tokenizer's own pre-tokenizer: the Qwen2 split regex then byte-level (the base model;
    llama.cpp's converter names it `deepseek-r1-qwen`, same rules as `qwen2`), or GPT-2's byte-level
    regex (the tiny test tokenizer). Anything else is refused rather than guessed.
    """
    pre = json.loads(tokenizer.backend_tokenizer.to_str())["pre_tokenizer"] or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("pattern", {}).get("Regex") == _QWEN2_SPLIT
        and steps[0].get("behavior") == "Isolated"
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("use_regex", True)
    ):
        return "deepseek-r1-qwen"
    raise ValueError(f"pre-tokenizer {pre!r} is not one llama.cpp is known to reproduce; cannot export GGUF")
