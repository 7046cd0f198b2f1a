"""The Triton flash-decoding kernels behind `r1ft.evaluation.decode_attention` (imported only when used: on
CUDA, or on CPU under Triton's interpreter with TRITON_INTERPRET=1 set before the import).

`_split_kernel`, grid (rows, kv_heads, splits): program (b, h, s) reads keys [s*chunk, (s+1)*chunk) of row
b's slot, clipped to lens[b] (a loop over a runtime bound on the GPU; a static one, under the
interpreter, that skips blocks past the end), for the `group` query heads of KV head h (padded to BLOCK_H >= 16 rows, the
smallest `tl.dot` tile), with the online softmax of flash attention; it writes its normalized output and
log-sum-exp. A split that starts at or past lens[b] writes nothing. `_combine_kernel`, grid (rows,
q_heads): weights the row's live splits (the first ceil(lens[b] / chunk)) by exp(lse - max lse).
Accumulation is fp32; the dots run in IEEE fp32 for fp32 inputs (no TF32: the fp32 check against HF
must be exact to rounding), in bf16 with fp32 accumulation for bf16 inputs (P is cast to V's dtype before P @ V, as flash attention does).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from r1ft.evaluation.decode_split import BLOCK_N, Workspace, split_plan

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # as Triton reads it, at import


@triton.jit
def _block(q, k_base, v_base, n0, end, stride_kt, stride_vt, scale, m, denom, acc,
           PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr):  # fmt: skip
    """One BLOCK_N of keys from n0 (those below `end`) into the online softmax state (m, denom, acc)."""
    d = tl.arange(0, HEAD_DIM)
    n = n0 + tl.arange(0, BLOCK_N)
    key_ok = n < end
    k = tl.load(k_base + n[:, None] * stride_kt + d[None, :], mask=key_ok[:, None], other=0.0)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
    scores = tl.where(key_ok[None, :], scores, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, 1))
    alpha = tl.exp(m - m_new)
    p = tl.exp(scores - m_new[:, None])
    v = tl.load(v_base + n[:, None] * stride_vt + d[None, :], mask=key_ok[:, None], other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, denom * alpha + tl.sum(p, 1), acc


@triton.jit
def _split_kernel(
    Q, K, V, SLOTS, LENS, PART_O, PART_LSE,
    stride_qb, stride_qh,
    stride_ks, stride_kh, stride_kt,
    stride_vs, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    scale,
    PRECISION: tl.constexpr, STATIC_LOOP: tl.constexpr,
    CHUNK: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    s = tl.program_id(2)
    length = tl.load(LENS + b)
    start = s * CHUNK
    if start < length:
        slot = tl.load(SLOTS + b).to(tl.int64)
        g = tl.arange(0, BLOCK_H)
        head_ok = g < GROUP
        heads = kvh * GROUP + g
        d = tl.arange(0, HEAD_DIM)
        q = tl.load(
            Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :], mask=head_ok[:, None], other=0.0
        )
        end = tl.minimum(start + CHUNK, length)
        k_base = K + slot * stride_ks + kvh * stride_kh
        v_base = V + slot * stride_vs + kvh * stride_vh
        m = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
        denom = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.float32)
        if STATIC_LOOP:
            # Triton's interpreter cannot loop over a runtime bound: a static trip count, iterations past
            # the row's end skipped.
            for i in range(0, CHUNK // BLOCK_N):
                n0 = start + i * BLOCK_N
                if n0 < end:
                    m, denom, acc = _block(q, k_base, v_base, n0, end, stride_kt, stride_vt, scale,
                                           m, denom, acc, PRECISION, BLOCK_N, HEAD_DIM)  # fmt: skip
        else:  # on the GPU: a plain loop, which Triton software-pipelines
            for n0 in range(start, end, BLOCK_N):
                m, denom, acc = _block(q, k_base, v_base, n0, end, stride_kt, stride_vt, scale,
                                       m, denom, acc, PRECISION, BLOCK_N, HEAD_DIM)  # fmt: skip
        o_ptr = PART_O + b * stride_ob + heads[:, None] * stride_oh + s * stride_os + d[None, :]
        tl.store(o_ptr, acc / denom[:, None], mask=head_ok[:, None])
        tl.store(PART_LSE + b * stride_lb + heads * stride_lh + s, m + tl.log(denom), mask=head_ok)


@triton.jit
def _combine_kernel(
    PART_O, PART_LSE, LENS, OUT,
    stride_ob, stride_oh, stride_os,
    stride_lb, stride_lh,
    stride_outb, stride_outh,
    chunk,
    BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    live = (tl.load(LENS + b) + chunk - 1) // chunk
    s = tl.arange(0, BLOCK_S)
    s_ok = s < live
    d = tl.arange(0, HEAD_DIM)
    lse = tl.load(PART_LSE + b * stride_lb + h * stride_lh + s, mask=s_ok, other=float("-inf"))
    w = tl.exp(lse - tl.max(lse, 0))
    w = tl.where(s_ok, w, 0.0)
    o = tl.load(
        PART_O + b * stride_ob + h * stride_oh + s[:, None] * stride_os + d[None, :],
        mask=s_ok[:, None],
        other=0.0,
    )
    out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)
    tl.store(OUT + b * stride_outb + h * stride_outh + d, out.to(OUT.dtype.element_ty))


def decode_attention(q, k_cache, v_cache, slots, lens, scale: float, workspace: Workspace, out=None):
    """See `r1ft.evaluation.decode_attention.reference` for the math; `lens` int32, `slots` int32/int64."""
    import torch

    rows, q_heads, head_dim = q.shape
    kv_heads, max_len = k_cache.shape[1], k_cache.shape[2]
    group = q_heads // kv_heads
    plan = split_plan(rows, max_len)
    if plan.splits > workspace.part_o.shape[2] or rows > workspace.part_o.shape[0]:
        raise ValueError(f"workspace too small for {rows} rows x {plan.splits} splits")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("decode attention needs the head dimension contiguous in q and the caches")
    if out is None:
        out = torch.empty(rows, q_heads, head_dim, dtype=q.dtype, device=q.device)
    po, pl = workspace.part_o, workspace.part_lse
    _split_kernel[(rows, kv_heads, plan.splits)](
        q, k_cache, v_cache, slots, lens, po, pl,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        po.stride(0), po.stride(1), po.stride(2),
        pl.stride(0), pl.stride(1),
        scale,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # tf32: the default, moot for bf16
        STATIC_LOOP=INTERPRETED,
        CHUNK=plan.chunk, GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=BLOCK_N, HEAD_DIM=head_dim,
    )  # fmt: skip
    _combine_kernel[(rows, q_heads)](
        po, pl, lens, out,
        po.stride(0), po.stride(1), po.stride(2),
        pl.stride(0), pl.stride(1),
        out.stride(0), out.stride(1),
        plan.chunk,
        BLOCK_S=triton.next_power_of_2(plan.splits), HEAD_DIM=head_dim,
    )  # fmt: skip
    return out
