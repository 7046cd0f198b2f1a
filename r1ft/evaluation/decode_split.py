"""How the decode kernel splits each row's keys, and its workspace: shared by the torch side
(`r1ft.evaluation.decode_attention`) and the Triton kernel (`r1ft.evaluation.triton_decode`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

BLOCK_N = 64  # keys per inner iteration of the kernel; a split's chunk is a multiple of it


@dataclass(frozen=True)
class SplitPlan:
    """How a decode step of `rows` rows splits each row's keys: `chunk` keys per split, `splits` in all."""

    chunk: int
    splits: int


def split_plan(rows: int, max_len: int) -> SplitPlan:
    """Chunks of 512 keys (256 at 16 rows or fewer, so that a short batch of long rows still fills the SMs)."""
    chunk = 256 if rows <= 16 else 512
    return SplitPlan(chunk, max(1, math.ceil(max_len / chunk)))


class Workspace:
    """The kernel's partial results for up to `rows` rows (fp32 outputs and log-sum-exps of every split),
    allocated once so that a CUDA graph can capture the kernels."""

    def __init__(self, rows: int, q_heads: int, head_dim: int, max_len: int, device):
        import torch

        most = split_plan(1, max_len).splits  # the smallest chunk: the most splits
        self.part_o = torch.empty(rows, q_heads, most, head_dim, dtype=torch.float32, device=device)
        self.part_lse = torch.empty(rows, q_heads, most, dtype=torch.float32, device=device)

    def bytes(self) -> int:
        return self.part_o.numel() * 4 + self.part_lse.numel() * 4
