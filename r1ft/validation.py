"""Checks of the settings that involve several of them, or the world (a local path exists, a location
parses, the work dir can be written, the model's context length): each problem with its fix.
`r1ft.settings_load.load_settings` runs them after the fields' own checks and reports every problem at once.

The batch arithmetic lives here too (`batch_problem`), as a pure function of numbers: the settings check it
for the processes they know of, and the recipe checks it again once the number of processes is known.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from r1ft.model.tiny import TINY_MODEL, TINY_SHAPE, base_config
from r1ft.publish.location import LocationError, parse_location

# R1FT_OPTIM's names (`r1ft.settings.Optimizer`) that bitsandbytes implements: they need a CUDA GPU.
BITSANDBYTES_OPTIMIZERS = ("paged_adamw_32bit", "adamw_8bit", "paged_adamw_8bit")

if TYPE_CHECKING:  # the settings module runs these checks; it is imported, not importing
    from r1ft.settings import Settings

# transformers' `SchedulerType` values (tests/test_validation.py keeps these lists in step with the
# installed transformers, which takes seconds to import: too slow for `r1ft plan`).
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "greedy",
)  # fmt: skip
# SchedulerType values that cannot run without `lr_scheduler_kwargs` (a minimum lr, decay steps), which r1ft
# does not set.
LR_SCHEDULERS_NEEDING_KWARGS = ("cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")


def cross_checks(s: Settings) -> list[str]:
    """Problems that involve several settings, or the world, each with its fix."""
    problems = _output_problems(s)
    problem = batch_problem(s.global_batch, s.batch_size, s.grad_accum, s.num_processes or 1)
    if problem:
        problems.append(problem)
    problems += _location_problems(s)
    if all(v.strip().lower() in ("", "none") for v in (s.mathcodeinstruct_source, s.scibench_source)):
        problems.append(  # as `r1ft.inputs.source_kind` reads them; found here, not after the model's download
            "R1FT_MATHCODEINSTRUCT_SOURCE and R1FT_SCIBENCH_SOURCE are both 'none': nothing to train on; "
            "set one of them"
        )
    problems += _name_problems(s)
    problems += work_dir_problems(s.work_dir)
    config = known_base_config(s)
    if config is not None:
        problems += base_model_problems(s, config)
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


# --- batch arithmetic ---------------------------------------------------------------------------------


def batch_problem(global_batch: int, batch_size: int, grad_accum: int, processes: int) -> str:
    """'' when the batch settings give exactly R1FT_GLOBAL_BATCH sequences per optimizer step on `processes`
    processes, else what is wrong and how to fix it. A value of 0 for the micro-batch or the accumulation
    means "derive it"; the global batch is always the number trained, never silently rounded."""
    p = processes
    procs = f"{p} process{'es' if p > 1 else ''}"
    if batch_size and grad_accum:
        product = batch_size * grad_accum * p
        if product == global_batch:
            return ""
        return (
            f"R1FT_BATCH_SIZE={batch_size} x R1FT_GRAD_ACCUM={grad_accum} x {procs} = {product} sequences a "
            f"step, but R1FT_GLOBAL_BATCH={global_batch}: set R1FT_GLOBAL_BATCH={product}, or leave "
            "R1FT_BATCH_SIZE or R1FT_GRAD_ACCUM unset (it is then derived)"
        )
    for name, value in (("R1FT_BATCH_SIZE", batch_size), ("R1FT_GRAD_ACCUM", grad_accum)):
        if value and global_batch % (value * p):
            unit = value * p
            return (
                f"R1FT_GLOBAL_BATCH={global_batch} is not a multiple of {name}={value} x {procs} = {unit}, so "
                f"no {'accumulation' if name == 'R1FT_BATCH_SIZE' else 'micro-batch'} gives it: set "
                f"R1FT_GLOBAL_BATCH to {_multiples(global_batch, unit)}, or {name} to a divisor of "
                f"{global_batch // p if global_batch % p == 0 else global_batch}"
            )
    if not (batch_size or grad_accum) and global_batch % p:
        return (
            f"R1FT_GLOBAL_BATCH={global_batch} cannot be split evenly over {procs}: set R1FT_GLOBAL_BATCH to "
            f"{_multiples(global_batch, p)}, or R1FT_NUM_PROCESSES to a divisor of {global_batch}"
        )
    return ""


def _multiples(n: int, unit: int) -> str:
    """The multiples of `unit` nearest to n, for a message."""
    low, high = (n // unit) * unit, (n // unit + 1) * unit
    return f"{low} or {high}" if low else str(high)


# --- names --------------------------------------------------------------------------------------------


def _name_problems(s: Settings) -> list[str]:
    """The scheduler is a name transformers knows (checked here, not at training start; R1FT_OPTIM's names are
    the field's own choices, `r1ft.settings.Optimizer`)."""
    problems = []
    if s.lr_scheduler in LR_SCHEDULERS_NEEDING_KWARGS:
        problems.append(
            f"R1FT_LR_SCHEDULER={s.lr_scheduler} needs scheduler arguments (a minimum learning rate or decay "
            f"steps) that r1ft does not set; use one of {', '.join(LR_SCHEDULERS)}"
        )
    elif s.lr_scheduler not in LR_SCHEDULERS:
        problems.append(f"R1FT_LR_SCHEDULER={s.lr_scheduler!r} is not a transformers scheduler; "
                        f"{_choose(s.lr_scheduler, LR_SCHEDULERS)}")  # fmt: skip
    return problems


def _choose(value: str, names: tuple[str, ...], shown: tuple[str, ...] | None = None) -> str:
    close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{hint}use one of {', '.join(shown or names)}"


# --- the work dir -------------------------------------------------------------------------------------


def work_dir_problems(work_dir: Path) -> list[str]:
    """The work dir must be a directory this process can write, or creatable as one."""
    path = Path(work_dir).expanduser()
    where = f"R1FT_WORK_DIR={work_dir}"
    if path.exists():
        if not path.is_dir():
            return [
                f"{where} is a file, not a directory: point R1FT_WORK_DIR at a directory (created if missing)"
            ]
        if not os.access(path, os.W_OK | os.X_OK):
            return [f"{where} is not writable by this user (uid {os.getuid()}) or is on a read-only filesystem: "
                    "point it at a writable directory"]  # fmt: skip
        return []
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return [f"{where} cannot be created: {parent} is a file; point R1FT_WORK_DIR elsewhere"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"{where} cannot be created: {parent} is not writable by this user (uid {os.getuid()}) or is "
                "on a read-only filesystem; point R1FT_WORK_DIR at a writable place"]  # fmt: skip
    return []


# --- bounds from the model ----------------------------------------------------------------------------


# What LoRA can adapt in a model type's decoder (the last part of each module's name): its linear layers,
# the LM head and the token embedding. A type not listed is checked against the loaded model's modules.
LORA_MODULES = {
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "embed_tokens"),
}  # fmt: skip


def known_base_config(s: Settings) -> dict | None:
    """The base model's config before any download: the tiny model's, a local model's config.json, or the
    shipped config of the default model; None for another Hub model (checked once downloaded,
    `base_model_problems`)."""
    if s.is_tiny:
        return {"model_type": "qwen2", **TINY_SHAPE}
    config = Path(s.base_model).expanduser() / "config.json"
    if config.is_file():
        try:
            loaded = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # an unreadable config is reported when the model is loaded
        return loaded if isinstance(loaded, dict) else None
    if s.base_model == type(s).model_fields["base_model"].default:
        return base_config()
    return None


def base_model_problems(s: Settings, config: dict) -> list[str]:
    """What the base model's config rules out: lengths beyond its context, LoRA targets it does not have."""
    context = _context_of(config)
    problems = context_problems(s, context) if context is not None else []
    names = LORA_MODULES.get(str(config.get("model_type", "")))
    if names is not None:
        problems += lora_target_problems(s.lora_targets, names)
    return problems


def lora_target_problems(targets: str, module_names) -> list[str]:
    """R1FT_LORA_TARGETS names modules the model has (PEFT skips a name that matches nothing without a word, so
    `q_proj,k_prj` would train q_proj alone). `module_names`: the model's module names, full or last parts."""
    if targets.strip() == "all-linear":
        return []
    have = tuple(sorted({name.rsplit(".", 1)[-1] for name in module_names if name}))
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    if not wanted:
        return [
            f"R1FT_LORA_TARGETS={targets!r} names no module: use all-linear or a comma list of {', '.join(have)}"
        ]
    return [
        f"R1FT_LORA_TARGETS: {t!r} is not a module of the base model; {_choose(t.rsplit('.', 1)[-1], have)} "
        "(or all-linear)"
        for t in wanted
        if t.rsplit(".", 1)[-1] not in have
    ]


def _context_of(config: dict) -> int | None:
    value = config.get("max_position_embeddings")
    return int(value) if isinstance(value, int) and value > 0 else None


def context_problems(s: Settings, context: int) -> list[str]:
    """Sequence lengths the model cannot take: training at R1FT_MAX_SEQ_LEN, generation at
    R1FT_EVAL_MAX_NEW_TOKENS (plus its prompt)."""
    problems = []
    if s.max_seq_len > context:
        problems.append(
            f"R1FT_MAX_SEQ_LEN={s.max_seq_len} is longer than the base model's context of {context} tokens "
            f"(max_position_embeddings in its config): set it to at most {context}"
        )
    if s.eval_max_new_tokens >= context:
        problems.append(
            f"R1FT_EVAL_MAX_NEW_TOKENS={s.eval_max_new_tokens} leaves no room for the prompt in the base "
            f"model's context of {context} tokens: set it below {context}"
        )
    return problems


# --- locations ----------------------------------------------------------------------------------------


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
    """R1FT_OUTPUT must parse (`r1ft.publish.location`), and a remote one needs its credentials."""
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
    if where.kind == "s3" and s.aws_endpoint_url and not _is_http_url(s.aws_endpoint_url):
        return [
            f"AWS_ENDPOINT_URL={s.aws_endpoint_url!r} is not an http(s):// URL with a host: write it as "
            "https://host[:port] (e.g. https://<account>.r2.cloudflarestorage.com)"
        ]
    return []


def _is_http_url(value: str) -> bool:
    try:
        url = urlparse(value.strip())
        url.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.hostname)
