"""Next-token choice for the engine: greedy, or temperature + exact top-p (nucleus) sampling with noise that
depends only on (request seed, step, token id).

Sampling is an exponential race: token i of the nucleus wins when p_i / E_i is largest, E_i ~ Exp(1); the
winner is distributed as p_i / sum(nucleus). E_i = -log(u) with u from a counter-based hash of (seed, step,
token id), so a request's output depends on its seed and its own logits only: not on which other requests
share the batch, which slot it sits in, or whether the nucleus was found by the top-k path or the full sort.

The nucleus is HF's (`TopPLogitsWarper`): after dividing by the temperature, keep the most probable tokens
while the probability mass strictly above a token is below `top_p` (so the token that crosses `top_p` is
kept, and always the first one). It is found among the top `TOP_K` logits when they hold at least `top_p`
of the mass (then every token past them has mass >= top_p above it: provably outside the nucleus); rows
where they don't are marked uncovered and sampled again over the whole sorted vocabulary (`full_sort`).
No top-k cut applies beyond that (HF's `generate` adds top_k=50 unless told otherwise; DeepSeek's and
vLLM's sampling do not).
"""

from __future__ import annotations

TOP_K = 64
_MASK32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x * c) mod 2^32 for int64 tensors x in [0, 2^32): split so no int64 product overflows."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x):
    """A 32-bit integer finalizer (Wellons' lowbias32): every input bit affects every output bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(seeds, steps, token_ids):
    """u in (0, 1) for each (row seed, row step, token id): `seeds`, `steps` [rows], `token_ids` [rows, k]."""
    import torch

    row = _mix32(_mix32((seeds & _MASK32) ^ 0x243F6A88) ^ (steps & _MASK32))
    h = _mix32(row[:, None] ^ _mul32(token_ids & _MASK32, 0x9E3779B1))
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def greedy(logits):
    """The most probable token of each row (the first one on a tie, as `torch.argmax`, HF's choice)."""
    return logits.argmax(-1)


def _race(values, ids, top_p: float, seeds, steps):
    """The winner among sorted (descending) scaled logits `values` whose token ids are `ids`."""
    import torch

    logp = values - torch.logsumexp(values, -1, keepdim=True)
    p = logp.exp()
    above = p.cumsum(-1) - p
    keep = above < top_p
    keep[:, 0] = True
    noise = torch.log(-torch.log(uniforms(seeds, steps, ids)))
    score = torch.where(keep, logp - noise, float("-inf"))
    return ids.gather(-1, score.argmax(-1, keepdim=True)).squeeze(-1)


def nucleus(logits, temperature: float, top_p: float, seeds, steps, k: int = TOP_K):
    """(tokens, covered) for fp32 `logits` [rows, vocab]: sampled over the nucleus found in the top `k`;
    `covered[r]` is False where the top k hold less than `top_p` of the mass (resample with `full_sort`)."""
    import torch

    scaled = logits / temperature
    lse = torch.logsumexp(scaled, -1, keepdim=True)
    values, ids = scaled.topk(min(k, scaled.shape[-1]), -1)
    covered = torch.exp(values - lse).sum(-1) >= top_p
    logp = values - lse
    p = logp.exp()
    keep = (p.cumsum(-1) - p) < top_p
    keep[:, 0] = True
    noise = torch.log(-torch.log(uniforms(seeds, steps, ids)))
    score = torch.where(keep, logp - noise, float("-inf"))
    return ids.gather(-1, score.argmax(-1, keepdim=True)).squeeze(-1), covered


def full_sort(logits, temperature: float, top_p: float, seeds, steps):
    """The same draw as `nucleus` over the whole vocabulary sorted (exact for every row; slower)."""
    values, ids = (logits / temperature).sort(-1, descending=True)
    return _race(values, ids, top_p, seeds, steps)
