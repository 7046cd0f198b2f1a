"""A compact Qwen2 forward over a loaded HF `Qwen2ForCausalLM`'s own weights, for the engine: a prefill of new
requests into their cache slots and a decode step of one token per row.

The math follows transformers' Qwen2 op for op (RMSNorm in fp32 then cast, rotary `q*cos + rotate_half(q)*sin`
with the table HF computes, GQA, SiLU-gated MLP, residuals, final norm, lm_head on the last position), so
fp32 outputs equal HF's to rounding. Two things differ in form only: q/k/v and gate/up run as one matmul
each over fused weights, and decode attention reads the slot cache (`r1ft.evaluation.decode_attention`).
The fused weights are built once and the HF module's parameters are re-pointed at views of them, so no
weight is held twice (the model still runs as before; do not `save_pretrained` it afterwards: its
parameters now share storage).

The KV cache is one tensor `[layers, 2, slots + 1, kv_heads, row_len, head_dim]`; slot `slots` is scratch
for the padding rows of a decode bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1ft.evaluation import decode_attention


@dataclass(frozen=True)
class Shape:
    """What the engine needs to know of the model's architecture."""

    layers: int
    hidden: int
    intermediate: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim * dtype_bytes


def shape_of(config) -> Shape:
    """The `Shape` of a Qwen2 config; refuses what the compact forward does not implement."""
    if getattr(config, "use_sliding_window", False) and "sliding_attention" in (config.layer_types or []):
        raise ValueError("the engine implements full attention only; this model uses sliding-window layers")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return Shape(
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        q_heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        head_dim=head_dim,
        vocab=config.vocab_size,
        eps=config.rms_norm_eps,
    )


@dataclass
class LayerWeights:
    ln1: object
    wqkv: object
    bqkv: object
    wo: object
    ln2: object
    wgu: object
    wd: object


def _fuse(linears) -> tuple:
    """One weight (and bias) for several nn.Linear over the same input; each module re-pointed at its view."""
    import torch

    weight = torch.cat([m.weight.data for m in linears], 0)
    bias = torch.cat([m.bias.data for m in linears], 0) if linears[0].bias is not None else None
    start = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight.data = weight[start : start + n]
        if bias is not None:
            m.bias.data = bias[start : start + n]
        start += n
    return weight, bias


def _rms_norm(x, weight, eps: float):
    import torch

    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x, cos, sin):
    import torch

    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class Qwen2Runner:
    """Prefill and decode over `model`'s weights into a KV cache the caller allocates (`allocate_cache`)."""

    def __init__(self, model):
        import torch

        self.shape = shape_of(model.config)
        self.device, self.dtype = model.device, model.dtype
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.lm_head = model.lm_head.weight
        self.inv_freq = inner.rotary_emb.inv_freq.to(self.device, torch.float32)
        self.rope_scaling = float(getattr(inner.rotary_emb, "attention_scaling", 1.0))
        self.scale = self.shape.head_dim**-0.5
        with torch.no_grad():
            self.layers = [self._layer(block) for block in inner.layers]
        self.kv = None
        self.cos = self.sin = None

    @staticmethod
    def _layer(block) -> LayerWeights:
        attn, mlp = block.self_attn, block.mlp
        wqkv, bqkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        wgu, _ = _fuse([mlp.gate_proj, mlp.up_proj])
        return LayerWeights(
            ln1=block.input_layernorm.weight,
            wqkv=wqkv,
            bqkv=bqkv,
            wo=attn.o_proj.weight,
            ln2=block.post_attention_layernorm.weight,
            wgu=wgu,
            wd=mlp.down_proj.weight,
        )

    def allocate_cache(self, slots: int, row_len: int) -> int:
        """The KV cache for `slots` rows of `row_len` tokens (+1 scratch slot) and the rotary table; bytes."""
        import torch

        s = self.shape
        self.kv = None
        self.kv = torch.empty(s.layers, 2, slots + 1, s.kv_heads, row_len, s.head_dim, dtype=self.dtype, device=self.device)  # fmt: skip
        freqs = (
            torch.arange(row_len, device=self.device, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        )
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * self.rope_scaling).to(self.dtype)
        self.sin = (emb.sin() * self.rope_scaling).to(self.dtype)
        return self.kv.numel() * self.kv.element_size()

    def release_cache(self) -> None:
        self.kv = self.cos = self.sin = None

    def _logits(self, x):
        import torch.nn.functional as F

        return F.linear(_rms_norm(x, self.norm, self.shape.eps), self.lm_head)

    def prefill(self, ids, lens, slots):
        """Run right-padded prompts `ids` [n, L] (true lengths `lens` [n], int64) through the model, writing
        their keys and values into `slots` [n]; the last real position's logits [n, vocab] (model dtype)."""
        import torch
        import torch.nn.functional as F

        s = self.shape
        n, length = ids.shape
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[None, None, :length], self.sin[None, None, :length]
        group = s.q_heads // s.kv_heads
        for i, w in enumerate(self.layers):
            h = _rms_norm(x, w.ln1, s.eps)
            qkv = F.linear(h, w.wqkv, w.bqkv).view(n, length, s.q_heads + 2 * s.kv_heads, s.head_dim)
            q, k, v = qkv.transpose(1, 2).split([s.q_heads, s.kv_heads, s.kv_heads], dim=1)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            self.kv[i, 0, slots, :, :length] = k
            self.kv[i, 1, slots, :, :length] = v
            # Right padding with a causal mask: a real query never sees a padded key (they come after it).
            a = F.scaled_dot_product_attention(
                q,
                k.repeat_interleave(group, 1),
                v.repeat_interleave(group, 1),
                is_causal=True,
                scale=self.scale,
            )
            x = x + F.linear(a.transpose(1, 2).reshape(n, length, s.q_heads * s.head_dim), w.wo)
            h = _rms_norm(x, w.ln2, s.eps)
            gate, up = F.linear(h, w.wgu).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w.wd)
        last = x[torch.arange(n, device=x.device), lens - 1]
        return self._logits(last)

    def decode(self, tokens, positions, slots, lens, workspace):
        """One token per row: `tokens`, `positions`, `slots` [rows] int64, `lens` (= positions + 1) int32;
        writes each row's key and value at its position; the next-token logits [rows, vocab] (model dtype)."""
        import torch.nn.functional as F

        s = self.shape
        rows = tokens.shape[0]
        x = F.embedding(tokens, self.embed)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        for i, w in enumerate(self.layers):
            h = _rms_norm(x, w.ln1, s.eps)
            qkv = F.linear(h, w.wqkv, w.bqkv).view(rows, s.q_heads + 2 * s.kv_heads, s.head_dim)
            q, k, v = qkv.split([s.q_heads, s.kv_heads, s.kv_heads], dim=1)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            kc, vc = self.kv[i, 0], self.kv[i, 1]
            kc[slots, :, positions] = k
            vc[slots, :, positions] = v
            a = decode_attention.attend(q, kc, vc, slots, lens, self.scale, workspace)
            x = x + F.linear(a.reshape(rows, s.q_heads * s.head_dim), w.wo)
            h = _rms_norm(x, w.ln2, s.eps)
            gate, up = F.linear(h, w.wgu).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, w.wd)
        return self._logits(x)
