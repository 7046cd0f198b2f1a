"""The environment banner printed at start: versions, GPU, free disk (like TRL's `scripts/env.py`)."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

from r1ft.files import GB, free_bytes

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "bitsandbytes",
    "datasets",
    "huggingface_hub",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def environment(work_dir: Path) -> dict[str, object]:
    """Versions, CUDA, GPUs and free disk, as data (also stored in report.json)."""
    import torch

    env: dict[str, object] = dict(versions())
    env["cuda"] = torch.version.cuda or "none"
    env["gpus"] = [
        f"{torch.cuda.get_device_name(i)} ({torch.cuda.get_device_properties(i).total_memory / GB:.0f} GB)"
        for i in range(torch.cuda.device_count())
    ]
    env["work_dir"] = str(work_dir)
    env["free_disk_gb"] = round(free_bytes(work_dir) / GB, 1)
    return env


def render(env: dict[str, object]) -> str:
    libs = ", ".join(f"{k} {env[k]}" for k in ("python", *PACKAGES))
    gpus = ", ".join(env["gpus"]) or "none (CPU)"  # type: ignore[arg-type]
    return f"r1ft environment: {libs}; CUDA {env['cuda']}; GPUs: {gpus}; {env['free_disk_gb']} GB free at {env['work_dir']}"
