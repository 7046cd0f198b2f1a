"""Decode attention over the engine's KV cache: one new query token per row, keys and values read from that
row's slot, only its first `lens[b]` positions.

The cache of one layer is `k_cache, v_cache: [slots, kv_heads, max_len, head_dim]` (contiguous rows, one per
slot). `q: [rows, q_heads, head_dim]`; row b reads slot `slots[b]`; query heads are grouped over the KV
heads (GQA: query head h reads KV head h // (q_heads // kv_heads), as HF's `repeat_kv` does).

Two implementations of the same math: `reference` (pure torch, the CPU engine's and the check's) and, on
CUDA, a Triton flash-decoding kernel with split-K (`r1ft.evaluation.triton_decode`): each (row, KV head,
split) program reads one `chunk` of the row's keys for all of that head's query heads, and a second kernel
combines the splits by their log-sum-exp. Splits past a row's length do nothing, so a step reads only the
valid KV of every row.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1ft.evaluation.decode_split import Workspace


def reference(q, k_cache, v_cache, slots, lens, scale: float):
    """Attention of each row's query over keys [0, lens[b]) of slot slots[b], in fp32; returns q's dtype."""
    import torch

    rows, q_heads, head_dim = q.shape
    kv_heads = k_cache.shape[1]
    group = q_heads // kv_heads
    longest = int(lens.max())
    valid = torch.arange(longest, device=q.device)[None, :] < lens[:, None].to(q.device)
    # Positions past a row's length were never written (the cache is torch.empty): zeroed, since a NaN
    # there would survive a zero attention weight.
    keep = valid[:, None, :, None]
    k = torch.where(keep, k_cache[slots, :, :longest].float(), 0.0)  # [rows, kv_heads, longest, head_dim]
    v = torch.where(keep, v_cache[slots, :, :longest].float(), 0.0)
    qf = q.float().view(rows, kv_heads, group, head_dim)
    scores = torch.einsum("bhgd,bhld->bhgl", qf, k) * scale
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    out = torch.einsum("bhgl,bhld->bhgd", scores.softmax(-1), v)
    return out.reshape(rows, q_heads, head_dim).to(q.dtype)


def triton_available() -> bool:
    """Triton importable (it ships with torch's CUDA wheels; the CPU dev set carries it for its interpreter)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def attend(q, k_cache, v_cache, slots, lens, scale: float, workspace: Workspace | None, out=None):
    """Decode attention: the Triton kernel when given a workspace (CUDA), else the torch reference."""
    if workspace is None:
        result = reference(q, k_cache, v_cache, slots, lens, scale)
        if out is None:
            return result
        out.copy_(result)
        return out
    from r1ft.evaluation import triton_decode

    return triton_decode.decode_attention(q, k_cache, v_cache, slots, lens, scale, workspace, out)


CHECK_CASES = ((3, 12, 2, 128, 1100), (20, 4, 2, 16, 600), (2, 4, 4, 32, 64), (40, 12, 2, 128, 4097))


@dataclass(frozen=True)
class KernelCheck:
    """The Triton kernel against `reference` on one random case."""

    rows: int
    q_heads: int
    kv_heads: int
    head_dim: int
    row_len: int
    dtype: str
    max_abs_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance


def check_kernel(
    device: str, dtype_name: str = "float32", cases=CHECK_CASES, seed: int = 0
) -> list[KernelCheck]:
    """Random caches and queries (row lengths from 1 to the full row, slots shared by several rows, NaN
    past the longest row of each slot, as never-written cache): the kernel's output against the reference. Runs on CUDA, or on CPU under TRITON_INTERPRET=1 (fp32 only:
    the interpreter's tl.dot mishandles bf16 in Triton 3.6). The environment must be set before the
    first import of triton in the process."""
    import torch

    from r1ft.evaluation import triton_decode

    dtype = getattr(torch, dtype_name)
    tolerance = 2e-5 if dtype == torch.float32 else 2e-2
    gen = torch.Generator().manual_seed(seed)
    results = []
    for rows, q_heads, kv_heads, head_dim, row_len in cases:
        slots_n = 5
        k = torch.randn(slots_n, kv_heads, row_len, head_dim, generator=gen).to(device, dtype)
        v = torch.randn(slots_n, kv_heads, row_len, head_dim, generator=gen).to(device, dtype)
        q = torch.randn(rows, q_heads, head_dim, generator=gen).to(device, dtype)
        slots = torch.randint(0, slots_n, (rows,), generator=gen).to(device)
        lens = torch.randint(1, row_len + 1, (rows,), generator=gen).to(torch.int32)
        lens[0], lens[-1] = row_len, 1
        for slot in range(slots_n):  # never-written positions (NaN here) must not reach the output
            used = lens[slots.cpu() == slot]
            k[slot, :, int(used.max()) if len(used) else 0 :] = float("nan")
            v[slot, :, int(used.max()) if len(used) else 0 :] = float("nan")
        lens = lens.to(device)
        ws = Workspace(rows, q_heads, head_dim, row_len, device)
        out = triton_decode.decode_attention(q, k, v, slots, lens, head_dim**-0.5, ws)
        want = reference(q, k, v, slots, lens, head_dim**-0.5)
        err = (out.float() - want.float()).abs().max().item()
        results.append(KernelCheck(rows, q_heads, kv_heads, head_dim, row_len, dtype_name, err, tolerance))
    return results
