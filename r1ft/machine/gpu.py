"""The hardware a run trains on: read through torch in the job, through nvidia-smi (without importing
torch) for `r1ft plan`, which must answer in a second."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from r1ft.files import GB


@dataclass(frozen=True)
class Hardware:
    """What training runs on (read once at the edge, passed down). `gpu_mem_gb` 0 on a CUDA device means a
    card not known yet (planning a rental from a laptop)."""

    device: str  # "cuda" or "cpu"
    gpu_name: str = ""
    gpu_mem_gb: float = 0.0
    gpu_count: int = 0
    bf16: bool = False

    @classmethod
    def rental(cls) -> Hardware:
        """A CUDA card of unknown size and model: what a plan made on a machine without a GPU assumes."""
        return cls(device="cuda", bf16=True)


def detect_hardware() -> Hardware:
    """The GPU this process trains on, through torch (the job; torch is imported anyway)."""
    import torch

    if not torch.cuda.is_available():
        return Hardware(device="cpu")
    props = torch.cuda.get_device_properties(0)
    return Hardware(
        device="cuda",
        gpu_name=props.name,
        gpu_mem_gb=props.total_memory / GB,
        gpu_count=torch.cuda.device_count(),
        bf16=torch.cuda.is_bf16_supported(),
    )


def planning_hardware(on_cpu: bool, environ: Mapping[str, str] | None = None) -> Hardware:
    """The hardware `r1ft plan` plans for, from nvidia-smi: the first visible GPU; with none, the CPU when
    the run trains there (the smoke preset), else a rental card of unknown size."""
    gpus = query_gpus(environ)
    if gpus:
        name, mem = gpus[0]
        return Hardware(device="cuda", gpu_name=name, gpu_mem_gb=mem, gpu_count=len(gpus), bf16=True)
    return Hardware(device="cpu") if on_cpu else Hardware.rental()


def query_gpus(environ: Mapping[str, str] | None = None) -> list[tuple[str, float]]:
    """[(name, memory GB)] of the GPUs this process may use, from nvidia-smi; empty when there is no
    NVIDIA GPU or driver. nvidia-smi lists every GPU of the machine, so CUDA_VISIBLE_DEVICES (indices or
    UUIDs) is applied here, as CUDA would apply it."""
    return [(name, mem) for _, name, mem in visible_gpus(environ)]


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[tuple[str, str, float]]:
    """[(index or UUID as CUDA_VISIBLE_DEVICES names it, name, memory GB)], in CUDA's order."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return select_visible(
        parse_gpus(out), (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    )


def parse_gpus(out: str) -> list[tuple[str, str, str, float]]:
    """nvidia-smi's `index,uuid,name,memory.total` lines as (index, uuid, name, GB)."""
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        index, uuid, mem = parts[0], parts[1], parts[-1]
        try:
            gpus.append((index, uuid, ",".join(parts[2:-1]), float(mem) * 1.048576 / 1000))  # MiB -> GB
        except ValueError:
            continue
    return gpus


def select_visible(
    gpus: list[tuple[str, str, str, float]], visible: str | None
) -> list[tuple[str, str, float]]:
    """The GPUs CUDA_VISIBLE_DEVICES leaves, in its order; CUDA stops at the first entry it cannot match."""
    if visible is None:
        return [(index, name, mem) for index, _, name, mem in gpus]
    chosen = []
    for item in (x.strip() for x in visible.split(",")):
        match = next((g for g in gpus if item and (item == g[0] or g[1].startswith(item))), None)
        if match is None:
            break
        chosen.append((item, match[2], match[3]))
    return chosen
