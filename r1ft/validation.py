"""Checks of the settings that involve several of them, or the world (a local path exists, a location
parses): each problem with its fix. `r1ft.settings.load_settings` runs them after the fields' own checks
and reports every problem at once."""

from __future__ import annotations

import glob
import os
import re
from typing import TYPE_CHECKING

from r1ft.model.tiny import TINY_MODEL
from r1ft.publish.location import LocationError, parse_location

# R1FT_OPTIM's names (`r1ft.settings.Optimizer`) that bitsandbytes implements: they need a CUDA GPU.
BITSANDBYTES_OPTIMIZERS = ("paged_adamw_32bit", "adamw_8bit", "paged_adamw_8bit")

if TYPE_CHECKING:  # the settings module runs these checks; it is imported, not importing
    from r1ft.settings import Settings


def cross_checks(s: Settings) -> list[str]:
    """Problems that involve several settings, each with its fix."""
    problems = _output_problems(s)
    if s.batch_size and s.grad_accum and s.num_processes:
        product = s.batch_size * s.grad_accum * s.num_processes
        if product != s.global_batch and "global_batch" in s.model_fields_set:
            problems.append(
                f"R1FT_BATCH_SIZE x R1FT_GRAD_ACCUM x R1FT_NUM_PROCESSES = {product} but R1FT_GLOBAL_BATCH = "
                f"{s.global_batch}: set only two of them"
            )
    problems += _location_problems(s)
    if s.is_tiny and s.quant == "nf4":
        problems.append(
            "R1FT_QUANT=nf4 needs a CUDA GPU and a real base model; the tiny model trains in bf16/fp32"
        )
    if s.is_tiny and s.optim in BITSANDBYTES_OPTIMIZERS:
        problems.append(
            f"R1FT_OPTIM={s.optim} is a bitsandbytes optimizer, which needs a CUDA GPU; the tiny model trains on "
            "the CPU: use adamw_torch or auto"
        )
    return problems


def _looks_like_path(value: str) -> bool:
    return (
        value.startswith(("/", "./", "../", "~", "file://"))
        or value.endswith((".json", ".jsonl", ".parquet"))
        or any(c in value for c in "*?[")
    )


def _location_problems(s: Settings) -> list[str]:
    """A base model or data source that names a local path must exist; anything else must be a Hub id."""
    problems = []
    checks = [("R1FT_BASE_MODEL", s.base_model, {TINY_MODEL}),
              ("R1FT_MATHCODEINSTRUCT_SOURCE", s.mathcodeinstruct_source, {"builtin", "none"}),
              ("R1FT_SCIBENCH_SOURCE", s.scibench_source, {"builtin", "none"}),
              ("R1FT_MATH500_SOURCE", s.math500_source, {"builtin", "none"})]  # fmt: skip
    for name, value, keywords in checks:
        if value in keywords or glob.glob(os.path.expanduser(value.removeprefix("file://"))):
            continue  # a keyword, or a local path that exists (relative ones too)
        if _looks_like_path(value):
            path = os.path.expanduser(value.removeprefix("file://"))
            if not glob.glob(path):
                problems.append(
                    f"{name}={value!r}: no such file or directory; fix the path (or give a Hub id)"
                )
        elif not re.fullmatch(r"[\w.-]+/[\w.-]+", value):
            also = " or ".join(repr(k) for k in sorted(keywords))
            problems.append(
                f"{name}={value!r} is neither a Hub id (owner/name), an existing local path, nor {also}"
            )
    return problems


def _output_problems(s: Settings) -> list[str]:
    """R1FT_OUTPUT must parse, and a remote one needs its credentials."""
    if not s.output.strip():
        return []
    try:
        where = parse_location(s.output)
    except LocationError as e:
        return [f"R1FT_OUTPUT: {e}"]
    if where.kind == "hf" and s.hf_token is None:
        return ["R1FT_OUTPUT is a Hub repo but HF_TOKEN is not set: set HF_TOKEN to a write token"]
    if where.kind == "s3" and (not s.aws_access_key_id or s.aws_secret_access_key is None):
        return [
            "R1FT_OUTPUT is S3 but AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not both set: set them "
            "(and AWS_ENDPOINT_URL for R2, MinIO, Backblaze...)"
        ]
    return []
