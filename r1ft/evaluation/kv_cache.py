"""The engine's KV cache plan: rows of a fixed length (the longest prompt plus the cap, so no sequence runs
out of room), as many as fit in the card's free memory after loading, and the decode batch sizes that get a
CUDA graph each."""

from __future__ import annotations

import math
from dataclasses import dataclass

from r1ft.evaluation.decode_model import Shape
from r1ft.evaluation.decode_split import split_plan
from r1ft.files import GIB

MAX_SLOTS = 512  # beyond a few hundred rows a step reads mostly KV: more rows add little
MEMORY_FRACTION = 0.92  # of the free memory after loading
MARGIN_BYTES = int(1.5 * GIB)  # allocator fragmentation, cuBLAS workspaces, graph bookkeeping
ROW_ROUND = 256
PREFILL_TOKENS = 8192  # padded prompt tokens per prefill call


@dataclass(frozen=True)
class CachePlan:
    """How many rows of `row_len` tokens the KV cache holds, and the memory arithmetic behind it."""

    slots: int
    row_len: int
    slot_bytes: int  # KV of one row + its share of the step's workspace
    reserve_bytes: int  # independent of the slot count: prefill activations, margin
    free_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.slots * self.slot_bytes + self.reserve_bytes


def row_length(longest_prompt: int, max_new_tokens: int) -> int:
    """Tokens a cache row must hold: the longest prompt and every new token, rounded up to 256."""
    return ROW_ROUND * math.ceil((longest_prompt + max_new_tokens) / ROW_ROUND)


def plan_cache(
    free_bytes: int,
    row_len: int,
    shape: Shape,
    dtype_bytes: int,
    wanted: int,
    max_slots: int = MAX_SLOTS,
    fraction: float = MEMORY_FRACTION,
    prefill_tokens: int = PREFILL_TOKENS,
) -> CachePlan:
    """The slot count that fits `fraction` of `free_bytes` (the card's free memory after loading): each slot
    a full row (so the longest request never runs out), plus per-row step workspace (logits and sampling
    temporaries, attention partials) and a reserve for the prefill and the allocator."""
    kv_row = row_len * shape.kv_bytes_per_token(dtype_bytes)
    splits = split_plan(1, row_len).splits
    workspace_row = shape.vocab * (dtype_bytes + 5 * 4) + shape.q_heads * splits * (shape.head_dim + 1) * 4
    slot_bytes = kv_row + workspace_row
    prefill = prefill_tokens * (6 * shape.hidden + 2 * (shape.q_heads + 2 * shape.kv_heads) * shape.head_dim
                                + 3 * shape.intermediate) * dtype_bytes  # fmt: skip
    reserve = prefill + MARGIN_BYTES
    fits = int((free_bytes * fraction - reserve) // slot_bytes)
    slots = min(max_slots, wanted, fits)
    if slots < 1:
        raise MemoryError(
            f"the KV cache needs {slot_bytes / GIB:.2f} GiB per row of {row_len} tokens plus "
            f"{reserve / GIB:.1f} GiB, and {free_bytes / GIB:.1f} GiB are free: lower max_new_tokens "
            f"or use a card with more memory"
        )
    return CachePlan(slots, row_len, slot_bytes, reserve, free_bytes)


def buckets(slots: int) -> list[int]:
    """Decode batch sizes with a graph each: 1, 2, 4, 8, then every 16 to 128, every 32 after; and `slots`."""
    sizes = [1, 2, 4, 8, *range(16, 129, 16), *range(160, slots, 32)]
    return sorted({s for s in sizes if s < slots} | {slots})
