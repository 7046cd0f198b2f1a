"""GPU names and memory without importing torch (for `r1ft plan`, which must answer in a second)."""

from __future__ import annotations

import shutil
import subprocess


def query_gpus() -> list[tuple[str, float]]:
    """[(name, memory GB)] from nvidia-smi; empty when there is no NVIDIA GPU or driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, _, mem = line.rpartition(",")
        try:
            gpus.append((name.strip(), float(mem) * 1.048576 / 1000))  # MiB -> GB
        except ValueError:
            continue
    return gpus
