"""Which ggml type each tensor of the GGUF file gets, and the quantizers that produce it.

Two tools write GGUF files for a Qwen2 model, and r1ft follows each for the types it makes:

- `convert_hf_to_gguf.py --outtype f16|bf16|q8_0` (llama.cpp's converter, through the `gguf` package): 1-D
  tensors and norms stay F32, the rest become the requested type; a Q8_0 tensor whose rows are not a
  multiple of 32 falls back to F16.
- `llama-quantize <bf16 file> Q4_K_M|Q5_K_M|Q6_K` (llama.cpp's quantizer): what it would make of that bf16
  file, tensor for tensor. Its mix for a dense, untied model such as Qwen2 (`llama_tensor_get_type` in
  `src/llama-quant.cpp`): the output matrix becomes Q6_K (Q8_0 where its rows do not fill 256-value
  blocks); at Q4_K_M and Q5_K_M the attention-value and FFN-down matrices of the first and last eighth of
  the layers and of every third layer between become Q6_K; every other matrix, token embedding included,
  gets the file type's own K type. A row that is not a multiple of 256 values falls back as llama.cpp
  does: Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, and to F16 if not even 32 divides it (the tiny test model,
  hidden size 64, is all fallbacks). The blocks come from `libgguf`, whose quantizers are ggml's own
  reference ones (the ones llama-quantize runs without an importance matrix); tests/test_gguf.py checks
  them byte for byte against ggml's, called in the llama.cpp library that the check loads.
"""

from __future__ import annotations

import re
from typing import Any

# The K type a k-quant file is built around (llama.cpp's `llama_ftype_get_default_type`).
_K_DEFAULT = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K"}
# llama.cpp's `tensor_type_fallback` for rows that do not fill a 256-value block.
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_CONVERTER_TYPES = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}


def is_k_quant(gguf_type: str) -> bool:
    """True for the types llama-quantize makes (q4_k_m, q5_k_m, q6_k), False for the converter's."""
    return gguf_type in _K_DEFAULT


def file_type(gguf_type: str):
    """The `general.file_type` of a file of this type (gguf.LlamaFileType)."""
    import gguf

    return gguf.LlamaFileType[f"MOSTLY_{gguf_type.upper()}"]


def default_qtype(gguf_type: str):
    """The type most matrices of the file get: the estimate's and the metadata's reference."""
    import gguf

    name = _K_DEFAULT.get(gguf_type) or _CONVERTER_TYPES.get(gguf_type)
    if name is None:
        raise ValueError(
            f"unknown GGUF type {gguf_type!r}; choose from {sorted(_K_DEFAULT | _CONVERTER_TYPES)}"
        )
    return gguf.GGMLQuantizationType[name]


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that keep more bits: the first and last eighth, every third between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def storage_type(gguf_name: str, shape: tuple[int, ...], gguf_type: str, n_layers: int, tied: bool = False):
    """The ggml type a tensor is stored as in a file of `gguf_type`.

    `shape` is the HF (row-major) shape, so `shape[-1]` is the row length llama.cpp calls `ne[0]`; `tied`
    says the file has no `output.weight`, so the token embedding doubles as the output matrix.
    """
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    if not is_k_quant(gguf_type):
        qtype = default_qtype(gguf_type)
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
        return Q.F16 if shape[-1] % block else qtype
    return Q[_k_quant_type(gguf_name, shape[-1], gguf_type, n_layers, tied)]


def _k_quant_type(name: str, row: int, gguf_type: str, n_layers: int, tied: bool) -> str:
    """llama.cpp's `llama_tensor_get_type` for Q4_K_M, Q5_K_M and Q6_K on a dense model, by type name."""
    default = _K_DEFAULT[gguf_type]
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q8_0" if row % 256 else "Q6_K"
    chosen = default
    layer = _layer(name)
    if (
        gguf_type in ("q4_k_m", "q5_k_m")
        and (name.endswith(".attn_v.weight") or name.endswith(".ffn_down.weight"))
        and use_more_bits(layer, n_layers)
    ):
        chosen = "Q6_K"
    if row % 256 == 0:
        return chosen
    fallback = _FALLBACK[chosen]
    return fallback if row % 32 == 0 else "F16"


def _layer(name: str) -> int:
    match = re.match(r"blk\.(\d+)\.", name)
    return int(match.group(1)) if match else -1


def qwen2_tensors(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """GGUF names and HF shapes of a Qwen2 model's tensors, from its config alone."""
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv_heads = (
        config["num_attention_heads"],
        config.get("num_key_value_heads", config["num_attention_heads"]),
    )
    head_dim = config.get("head_dim") or h // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    tensors: list[tuple[str, tuple[int, ...]]] = [
        ("token_embd.weight", (vocab, h)),
        ("output_norm.weight", (h,)),
    ]
    if not config.get("tie_word_embeddings", False):
        tensors.append(("output.weight", (vocab, h)))
    for i in range(config["num_hidden_layers"]):
        b = f"blk.{i}."
        tensors += [
            (b + "attn_norm.weight", (h,)),
            (b + "attn_q.weight", (q, h)),
            (b + "attn_q.bias", (q,)),
            (b + "attn_k.weight", (kv, h)),
            (b + "attn_k.bias", (kv,)),
            (b + "attn_v.weight", (kv, h)),
            (b + "attn_v.bias", (kv,)),
            (b + "attn_output.weight", (h, q)),
            (b + "ffn_norm.weight", (h,)),
            (b + "ffn_gate.weight", (inter, h)),
            (b + "ffn_up.weight", (inter, h)),
            (b + "ffn_down.weight", (h, inter)),
        ]
    return tensors


def quantize(rows, qtype, gguf_type: str) -> Any:
    """The stored form of a slab of float32 rows: packed blocks (uint8) or F32/F16/BF16 values.

    k-quant files take every quantized type from libgguf (ggml's reference quantizers, as
    llama-quantize); the converter's types take the `gguf` package's, as convert_hf_to_gguf does.
    """
    import gguf

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return rows
    if qtype == Q.F16:
        return rows.astype("float16")
    if not is_k_quant(gguf_type):
        return gguf.quants.quantize(rows, qtype)
    import libgguf

    return libgguf.quantize_rows(rows, libgguf.GGMLQuantizationType(int(qtype)))
