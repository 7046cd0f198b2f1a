"""GGUF export of the merged model for llama.cpp, Ollama and LM Studio, verified before it is kept.

The file format, the tensor-name map, the quantizers and the tokenizer metadata all come from the `gguf`
package (llama.cpp's own Python library); this module only decides what goes in, the way llama.cpp's
`convert_hf_to_gguf.py` does for a Qwen2 model:

- tensors are converted one at a time, a slab of rows at a time, straight from the safetensors files
  into the output file (two passes: sizes first, then data), so memory holds one output tensor;
- 1-D tensors and norms stay F32; the rest become the requested type (`f16`, `bf16`, `q8_0`; a Q8_0
  tensor whose rows are not a multiple of 32 falls back to F16, as the converter does);
- the tokenizer goes in as a gpt2-style BPE (tokens, merges, token types, special ids, add_bos) with
  the chat template, so a runtime renders prompts ending `<｜Assistant｜><think>\\n` as training did.

Each file is written as `model-<type>.gguf.partial` and read back before it is kept: the model through
transformers' GGUF loader (logits on a few chat prompts against the merged model's), the tokenizer
rebuilt from the file's metadata by llama.cpp's rules (`gguf_tokenizer`: same ids for the rendered
prompts, same rendering from the file's template). Only then is it renamed and handed to
`on_file_ready`; a file that disagrees is deleted and its result says why. llama.cpp itself
(llama-cpp-python 0.3.36) was seen to tokenize these files' prompts identically and reproduce the logits
(tests/test_gguf.py runs that check where llama-cpp-python is installed).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1ft.export.gguf_types import SUPPORTED_GGUF_TYPES

log = logging.getLogger(__name__)

ARCH = "qwen2"
# Rows converted at a time: bounds the float32 scratch to ~64 MiB whatever the tensor.
_SLAB_ELEMENTS = 16 * 1024 * 1024
# Metadata (about 4 MiB of tokens and merges for the real vocabulary), tensor headers and alignment.
_OVERHEAD_BYTES = 16 * 1024 * 1024

# Largest logit error accepted: max |GGUF - merged| over the check prompts' positions and vocabulary,
# relative to the standard deviation of the merged model's logits (transformers' fp32 forward on both).
# Measured (tiny model / full-size random-weight model): f16 1e-6 / 1.2e-5 and bf16 0 / 0 from a bf16
# merged model (from an fp32 one: f16 0.002, bf16 0.014); q8_0 0.045 / 0.32 (full-size: RMS 0.066, mean
# KL 0.0009, llama.cpp's usual Q8_0 figure). One tensor's bytes flipped: 2.3 to 5.2 (full-size RMS 1.0).
MAX_REL_LOGIT_ERR = {"f16": 0.02, "bf16": 0.05, "q8_0": 1.0}

# User turns rendered through the chat template for the logit and tokenizer checks.
CHECK_PROMPTS = [
    "What is 3 + 5 * 2? Please reason step by step, and put your final answer within \\boxed{}.",
    "Calculate the force needed to accelerate a 10 kg mass at 5 m/s^2. The unit of the answer is N.\n"
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "Solve for x:  3x + 5 = 20.\n\n```python\nprint(solve(3*x + 5 - 20, x))\n```",
]
# Plain texts for the tokenizer check only (digits, spaces, unicode, added tokens inside text).
CHECK_TEXTS = [
    "  Leading spaces, 12345 digits, tabs\tand\nnewlines; ΔH = -285.8 kJ/mol, 温度 298 K 🚀.",
    "<think>\nx = 5\n</think>\n\nThe answer is \\boxed{5}.<｜end▁of▁sentence｜>",
]


@dataclass(frozen=True)
class GgufResult:
    """The outcome for one requested type. `path` is where the file is (or would have been) written."""

    type: str
    path: Path
    size_bytes: int
    seconds: float
    verified: bool
    max_logit_err: float | None
    message: str


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


def estimate_gguf_bytes(n_params: int, type: str) -> int:
    """An upper bound on the size of the GGUF file of a model with `n_params` parameters (disk plan)."""
    import gguf

    qtype = _qtype(type)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return math.ceil(n_params * type_size / block) + _OVERHEAD_BYTES


def export_gguf(
    merged_dir: Path,
    out_dir: Path,
    types: list[str],
    on_file_ready: Callable[[Path], None] | None = None,
) -> list[GgufResult]:
    """Write, verify and hand over one GGUF file per type, one file at a time.

    `on_file_ready(path)` is called for each verified file before the next one is written, so the caller
    can publish and delete it and never hold two GGUF files on disk. A file that fails verification is
    deleted and its result carries `verified=False` and the reason.
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
    reference = reference_logits(merged_dir)
    results = []
    for gguf_type in types:
        result = _export_one(merged_dir, out_dir, gguf_type, reference)
        results.append(result)
        if result.verified and on_file_ready is not None:
            on_file_ready(result.path)
    return results


def _export_one(merged_dir: Path, out_dir: Path, gguf_type: str, reference: dict) -> GgufResult:
    """Write one file under a `.partial` name, verify it, then rename it (or delete it)."""
    final = out_dir / file_name(gguf_type)
    partial = final.with_name(final.name + ".partial")
    start = time.monotonic()
    try:
        notes = write_gguf(merged_dir, partial, gguf_type)
        size = partial.stat().st_size
        log.info(
            "gguf %s: wrote %.2f GB in %.0f s; verifying", gguf_type, size / 1e9, time.monotonic() - start
        )
        ok, err, why = verify_gguf(partial, gguf_type, reference)
    except Exception as e:  # one bad type must not cost the others or the run's other outputs
        log.exception("gguf %s: export failed", gguf_type)
        partial.unlink(missing_ok=True)
        return GgufResult(gguf_type, final, 0, time.monotonic() - start, False, None, f"export failed: {e!r}")
    log.info("gguf %s: %s (%.0f s in all)", gguf_type, why, time.monotonic() - start)
    if not ok:
        partial.unlink(missing_ok=True)
        return GgufResult(gguf_type, final, size, time.monotonic() - start, False, err, f"rejected: {why}")
    partial.replace(final)
    message = "; ".join([why, *notes])
    return GgufResult(gguf_type, final, size, time.monotonic() - start, True, err, message)


# ---------------------------------------------------------------------------------------------------
# Writing


def write_gguf(merged_dir: Path, path: Path, gguf_type: str) -> list[str]:
    """Write the GGUF file of the merged model at `path`; returns notes (e.g. tensors kept at F16)."""
    import gguf

    config = json.loads((merged_dir / "config.json").read_text(encoding="utf-8"))
    _check_supported(config)
    plan = plan_tensors(merged_dir, config, _qtype(gguf_type))
    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    try:
        _add_model_metadata(writer, merged_dir, config, gguf_type, plan)
        _add_tokenizer(writer, merged_dir, config)
        for t in plan:
            writer.add_tensor_info(t.gguf_name, t.shape, _np_dtype(t.qtype), _nbytes(t), raw_dtype=t.qtype)
        writer.write_header_to_file(path=path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in plan:
            writer.write_tensor_data(_convert(t))
    finally:
        writer.close()
    fallbacks = [t.gguf_name for t in plan if t.qtype == gguf.GGMLQuantizationType.F16 and gguf_type != "f16"]
    return [f"kept at F16 (rows not a multiple of the block): {fallbacks}"] if fallbacks else []


def _qtype(gguf_type: str):
    import gguf

    qtypes = {
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }
    if gguf_type not in qtypes:
        raise ValueError(f"unknown GGUF type {gguf_type!r}; choose from {sorted(qtypes)}")
    return qtypes[gguf_type]


def _file_type(gguf_type: str):
    import gguf

    return {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[gguf_type]


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


def plan_tensors(merged_dir: Path, config: dict, qtype) -> list[_Planned]:
    """Every tensor of the GGUF file, in file order, with its GGUF name, shape and storage type."""
    import gguf
    from safetensors import safe_open

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config["num_hidden_layers"])
    plan = []
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
        plan.append(_Planned(hf_name, gguf_name, f, shape, _storage_type(gguf_name, shape, qtype)))
    return plan


def _storage_type(gguf_name: str, shape: tuple[int, ...], qtype):
    """F32 for 1-D tensors and norms (llama.cpp expects it); F16 where a row does not fill whole blocks."""
    import gguf

    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return qtype


def _np_dtype(qtype):
    import gguf
    import numpy as np

    return {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(
        qtype, np.float32
    )


def _nbytes(t: _Planned) -> int:
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[t.qtype]
    return math.prod(t.shape) // block * type_size


def _convert(t: _Planned):
    """The stored form of one tensor, converted a slab of rows at a time from its safetensors file."""
    import gguf
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
            chunk = gguf.quants.quantize(part.to(torch.float32).numpy(), t.qtype)
            if out is None:
                out = np.empty((rows, chunk.shape[-1]), dtype=chunk.dtype) if len(t.shape) > 1 else chunk
            if len(t.shape) > 1:
                out[start : start + chunk.shape[0]] = chunk
    assert out is not None
    return out


# ---------------------------------------------------------------------------------------------------
# Metadata


def _add_model_metadata(writer, merged_dir: Path, config: dict, gguf_type: str, plan: list[_Planned]) -> None:
    """`general.*` and the qwen2 hyper-parameters llama.cpp reads."""
    import gguf

    n_params = sum(math.prod(t.shape) for t in plan)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(_model_name(merged_dir))
    writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    writer.add_file_type(_file_type(gguf_type))
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


# ---------------------------------------------------------------------------------------------------
# Verification


def check_messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def reference_logits(merged_dir: Path) -> dict:
    """What every file is checked against: the merged tokenizer's renderings and ids, and fp32 logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    rendered = [
        tokenizer.apply_chat_template(check_messages(p), tokenize=False, add_generation_prompt=True)
        for p in CHECK_PROMPTS
    ]
    prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    text_ids = [tokenizer(text)["input_ids"] for text in CHECK_TEXTS]
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    logits = _logits(model, prompt_ids)
    del model
    gc.collect()
    return {"rendered": rendered, "prompt_ids": prompt_ids, "text_ids": text_ids, "logits": logits}


def _logits(model, prompts: list[list[int]]) -> list:
    import torch

    model.eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].float() for ids in prompts]


def logit_error(reference: list, candidate: list) -> float:
    """Largest absolute logit difference over all prompts and positions, relative to the logits' spread."""
    worst = 0.0
    for ref, got in zip(reference, candidate, strict=True):
        if not bool(got.isfinite().all()):
            return math.inf  # max() would skip a NaN
        spread = float(ref.std()) or 1.0
        worst = max(worst, float((ref - got).abs().max()) / spread)
    return worst


def verify_gguf(path: Path, gguf_type: str, reference: dict) -> tuple[bool, float | None, str]:
    """Read the file back through transformers and compare it with the merged model.

    Returns (ok, relative logit error, explanation). The tokenizer must give the same ids for the
    rendered prompts and plain texts, and render the same prompts from its own chat template.
    """
    problems = tokenizer_problems(path, reference)
    err = gguf_logit_error(path, reference)
    bound = MAX_REL_LOGIT_ERR[gguf_type]
    if not err <= bound:  # also catches NaN
        problems.append(
            f"logits differ from the merged model's by {err:.3g} (relative; {gguf_type} bound {bound})"
        )
    if problems:
        return False, err, "; ".join(problems)
    return (
        True,
        err,
        f"logits within {err:.3g} of the merged model's (bound {bound}); tokenizer and template agree",
    )


def gguf_logit_error(path: Path, reference: dict) -> float:
    """Relative logit error of the GGUF model (dequantized by transformers, fp32) on the check prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    try:
        return logit_error(reference["logits"], _logits(model, reference["prompt_ids"]))
    finally:
        del model
        gc.collect()


def tokenizer_problems(path: Path, reference: dict) -> list[str]:
    """How the tokenizer read back from the file disagrees with the merged one (empty when it does not)."""
    tokenizer = gguf_tokenizer(path)
    problems = []
    for prompt, rendered, ids in zip(
        CHECK_PROMPTS, reference["rendered"], reference["prompt_ids"], strict=True
    ):
        got = tokenizer.apply_chat_template(
            check_messages(prompt), tokenize=False, add_generation_prompt=True
        )
        if got != rendered:
            problems.append(f"chat template renders {got[-60:]!r}, expected {rendered[-60:]!r}")
        got_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if got_ids != ids:
            problems.append(f"prompt tokenized to {_first_diff(got_ids, ids)}")
    for text, ids in zip(CHECK_TEXTS, reference["text_ids"], strict=True):
        got_ids = tokenizer(text)["input_ids"]
        if got_ids != ids:
            problems.append(f"text {text[:30]!r} tokenized to {_first_diff(got_ids, ids)}")
    return problems


# The split regexes llama.cpp runs (src/llama-vocab.cpp) for the `tokenizer.ggml.pre` names written here.
_LLAMA_CPP_SPLITS = {
    "deepseek-r1-qwen": (
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
    "gpt-2": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
}


def gguf_tokenizer(path: Path):
    """The tokenizer a GGUF file describes, rebuilt from its metadata with llama.cpp's reading of it.

    BPE over the NORMAL tokens with the file's merges, after llama.cpp's split regex for
    `tokenizer.ggml.pre`; CONTROL and USER_DEFINED tokens matched whole (as llama.cpp does when it parses
    special tokens in a rendered chat prompt); BOS prepended when `add_bos_token`; the file's chat template.
    (transformers' own GGUF tokenizer drops control tokens spelled outside the byte alphabet, such as
    `<｜User｜>`, so it cannot stand in for llama.cpp here.)
    """
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    fields = gguf.GGUFReader(path).fields

    def field(key: str, default: Any = None) -> Any:
        return fields[key].contents() if key in fields else default

    pre = field("tokenizer.ggml.pre")
    if field("tokenizer.ggml.model") != "gpt2" or pre not in _LLAMA_CPP_SPLITS:
        raise ValueError(f"{path.name}: not a gpt2-style BPE vocabulary with a known pre-tokenizer ({pre!r})")
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    T = gguf.TokenType
    vocab = {tok: i for i, (tok, ty) in enumerate(zip(tokens, types, strict=True)) if ty != T.UNUSED}
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_LLAMA_CPP_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens(
        [
            AddedToken(t, special=ty == T.CONTROL, normalized=False)
            for t, ty in zip(tokens, types, strict=True)
            if ty in (T.CONTROL, T.USER_DEFINED)
        ]
    )
    special = {
        name: tokens[i]
        for name in ("bos", "eos", "pad")
        if (i := field(f"tokenizer.ggml.{'padding' if name == 'pad' else name}_token_id")) is not None
    }
    if field("tokenizer.ggml.add_bos_token") and "bos" in special:
        bos = special["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        chat_template=field("tokenizer.chat_template"),
        **{f"{name}_token": t for name, t in special.items()},
    )


def _first_diff(got: list[int], want: list[int]) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return f"{got[i : i + 5]} at {i}, expected {want[i : i + 5]} ({len(got)} vs {len(want)} ids)"


# ---------------------------------------------------------------------------------------------------
# Model card


def gguf_markdown(results: list[GgufResult], repo_hint: str) -> str:
    """The model card's GGUF section: the files, how they were checked, and ready llama.cpp/Ollama commands.

    `repo_hint` is where the published files live: a Hub repo id (`user/name`), an `s3://` prefix or a
    local directory; it only shapes the download line.
    """
    if not results:
        return ""
    lines = [
        "## GGUF (llama.cpp, Ollama, LM Studio)",
        "",
        "Converted from `merged/` with llama.cpp's `gguf` library. Each file carries the tokenizer and the chat "
        "template, so a llama.cpp-based runtime builds the prompt exactly as training did (ending "
        "`<｜Assistant｜><think>\\n`). Before publishing, each file was read back and its logits on chat prompts "
        "compared with the merged model's (error relative to the logits' standard deviation), and its "
        "tokenizer and template were checked to reproduce the training prompts token for token.",
        "",
        "| file | type | size | max logit error | check |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        err = f"{r.max_logit_err:.2g}" if r.max_logit_err is not None else "-"
        status = "verified" if r.verified else f"not published: {r.message}"
        size = _human(r.size_bytes) if r.verified else "-"
        lines.append(f"| `gguf/{r.path.name}` | {r.type} | {size} | {err} | {status} |")
    ready = [r for r in results if r.verified]
    if ready:
        best = next((r for r in ready if r.type == "q8_0"), ready[0])
        lines += ["", *_usage(f"gguf/{best.path.name}", repo_hint, best.type)]
    return "\n".join(lines) + "\n"


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _download_line(rel: str, repo_hint: str) -> str:
    if repo_hint.startswith("s3://"):
        return f"aws s3 cp {repo_hint.rstrip('/')}/{rel} {rel}"
    if "/" in repo_hint and not repo_hint.startswith(("/", ".", "~")) and repo_hint.count("/") == 1:
        return f"hf download {repo_hint} {rel} --local-dir ."
    return f"cp {repo_hint.rstrip('/')}/{rel} {rel}"


def _usage(rel: str, repo_hint: str, gguf_type: str) -> list[str]:
    """Download, llama.cpp and Ollama instructions for one published file."""
    from r1ft.chat import MATH_INSTRUCTION

    question = f"What is 3 + 5 * 2? {MATH_INSTRUCTION}"
    return [
        "Get the file:",
        "",
        "```bash",
        f"mkdir -p gguf && {_download_line(rel, repo_hint)}",
        "```",
        "",
        "llama.cpp (the template inside the file formats the chat; sampling as the base model recommends):",
        "",
        "```bash",
        f"llama-cli -m {rel} --jinja -cnv --temp 0.6 --top-p 0.95 -c 8192 -n 4096",
        f"llama-server -m {rel} --jinja --temp 0.6 --top-p 0.95 -c 8192  # OpenAI-compatible API on :8080",
        "```",
        "",
        "Ollama (`Modelfile` beside the `gguf/` folder; the template matches training: no system prompt, "
        "instructions in the user turn):",
        "",
        "```",
        f"FROM ./{rel}",
        'TEMPLATE """{{- range .Messages }}{{- if eq .Role "user" }}<｜User｜>{{ .Content }}'
        '{{- else if eq .Role "assistant" }}<｜Assistant｜>{{ .Content }}<｜end▁of▁sentence｜>{{- end }}'
        "{{- end }}<｜Assistant｜><think>",
        '"""',
        "PARAMETER temperature 0.6",
        "PARAMETER top_p 0.95",
        "PARAMETER num_ctx 8192",
        'PARAMETER stop "<｜end▁of▁sentence｜>"',
        "```",
        "",
        "```bash",
        f"ollama create r1ft-{gguf_type} -f Modelfile",
        f"ollama run r1ft-{gguf_type} '{question}'",
        "```",
        "",
        f"LM Studio: load `{rel.split('/')[-1]}`; it reads the chat template from the file.",
    ]
