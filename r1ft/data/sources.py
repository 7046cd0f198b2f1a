"""Where the data comes from: a Hub dataset at a pinned revision, local files, the shipped samples, or none.

A source setting (`R1FT_MATHCODEINSTRUCT_SOURCE`, `R1FT_SCIBENCH_SOURCE`) is one of:
- `builtin`: the project's own small samples in each dataset's real schema (`r1ft/assets/samples/`);
- `none`: leave the source out;
- a local file, directory (searched recursively) or glob of `.jsonl`, `.json` (array or JSON lines) and
  `.parquet` files;
- a Hub dataset id `owner/name`, downloaded with `huggingface_hub.snapshot_download` at the revision
  setting into `{work_dir}/hf_cache`, then read file by file (SciBench's Hub split mixes two schemas, so
  nothing goes through `load_dataset`).

Records are read lazily, one at a time, with their 1-based position; a line that is not valid UTF-8 or
JSON comes back as a `BadRecord` to count, not an exception.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r1ft.data import render
from r1ft.inputs import Source, builtin_dir, env_name, file_sha256, local_files, resolve_spec, source_kind
from r1ft.records import BadRecord, DataError, max_record_bytes, read_records
from r1ft.tasks import scibench

if TYPE_CHECKING:
    from r1ft.machine.signals import StopFlag

SOURCES = ("mathcodeinstruct", "scibench")
# What to fetch from each Hub repo: MathCodeInstruct's `train_80k.jsonl` (or a parquet export), and
# SciBench's 20 files by name wherever they sit in the repo (its other files are not data).
SCIBENCH_NAMES = ("atkins", "chemmc", "quan", "matter", "fund", "class", "thermo", "stat", "calculus", "diff")
HUB_PATTERNS = {
    "mathcodeinstruct": ["*.jsonl", "*.parquet"],
    "scibench": [f"*{name}{suffix}.json" for name in SCIBENCH_NAMES for suffix in ("", "_sol")],
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
STRUCTURAL = ("missing_field", "wrong_type", "unsupported_shape")  # on a file's first record: a wrong shape
ACCEPTED_SHAPES = {"mathcodeinstruct": ("mathcodeinstruct", "chat"), "scibench": ("scibench",)}
EXPECTED_SHAPE = {
    "mathcodeinstruct": f"MathCodeInstruct's shape {render.MCI_SHAPE} or chat form {render.CHAT_SHAPE}",
    "scibench": f"SciBench's shape: {scibench.SCIBENCH_SHAPE}",
}


def builtin_files(source: str) -> list[Path]:
    root = builtin_dir()
    if source == "mathcodeinstruct":
        return [root / "mathcodeinstruct_sample.jsonl"]
    return sorted((root / "scibench").glob("*.json"))


def resolve(settings, source: str) -> Source:
    """The source's files on local disk, downloading a Hub dataset into `{work_dir}/hf_cache` if needed."""
    token = settings.hf_token.get_secret_value() if settings.hf_token is not None else None
    return resolve_spec(
        source,
        getattr(settings, f"{source}_source"),
        getattr(settings, f"{source}_revision"),
        Path(settings.work_dir) / "hf_cache",
        token,
        builtin_files(source),
        HUB_PATTERNS[source],
    )


# --- identity (for the fingerprint) ---------------------------------------------------------------------


def identity(settings, source: str) -> dict[str, Any]:
    """What the source's data is, cheaply: hashes of local and builtin files, id and revision of a Hub one."""
    spec = getattr(settings, f"{source}_source")
    kind = source_kind(spec)
    if kind == "none":
        return {"origin": "none"}
    if kind == "hub":
        return {"origin": "hub", "repo": spec.strip(), "revision": getattr(settings, f"{source}_revision")}
    files = builtin_files(source) if kind == "builtin" else local_files(spec, env_name(source))
    return {"origin": kind, "files": [[f.name, file_sha256(f)] for f in files]}


# --- loading and rendering a source -------------------------------------------------------------------


@dataclass
class Loaded:
    """One source after loading and rendering."""

    source: Source
    max_record_bytes: int = 0  # records with more text are rejected unread (`r1ft.records.max_record_bytes`)
    shapes: set[str] = field(default_factory=set)
    records: int = 0
    solution_records: int = 0
    test_records: int = 0
    bad: Counter = field(default_factory=Counter)
    bad_files: Counter = field(default_factory=Counter)
    first_bad: list[str] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)


def _renderer(shape: str, path: Path):
    if shape == "scibench":
        return (
            scibench.render_scibench_solution if path.stem.endswith("_sol") else scibench.scibench_test_record
        )
    return render.render_chat if shape == "chat" else render.render_mathcodeinstruct


def _first_record_shape(loaded: Loaded, path: Path, n: int, record: Any) -> str:
    """The file's shape from its first record; a DataError naming file, record and field if it is wrong."""
    name = loaded.source.name
    try:
        shape = render.record_shape(record)
        if shape not in ACCEPTED_SHAPES[name]:
            raise BadRecord("unsupported_shape", "<record>", f"it looks like a {shape} record")
        _renderer(shape, path)(record)
    except BadRecord as e:
        if e.reason in STRUCTURAL:
            raise DataError(
                f"{path}: record {n}, field {e.field}: {e.reason.replace('_', ' ')}"
                + (f" ({e.detail})" if e.detail else "")
                + f". Expected {EXPECTED_SHAPE[name]}. Point {env_name(name)} at data of that shape."
            ) from e
    return shape


def _count_bad(loaded: Loaded, path: Path, n: int, bad: BadRecord) -> None:
    loaded.bad[bad.reason] += 1
    loaded.bad_files[str(path)] += 1
    if len(loaded.first_bad) < 5:
        loaded.first_bad.append(
            f"{path} record {n}, field {bad.field}: {bad.reason}" + (f" ({bad.detail})" if bad.detail else "")
        )


STOP_EVERY = 256  # records between two looks at the stop flag


def load_source(settings, name: str, stop: StopFlag | None = None) -> Loaded:
    """Resolve, read and render one source; DataError on a wrong shape or too many bad records. A stop
    (`stop.check()`, raising `Stopped`) is honoured between records."""
    loaded = Loaded(resolve(settings, name), max_record_bytes=max_record_bytes(settings.max_seq_len))
    for path in loaded.source.files:
        shape = None
        is_test = name == "scibench" and not path.stem.endswith("_sol")
        for n, record in read_records(path, loaded.max_record_bytes):
            if stop is not None and loaded.records % STOP_EVERY == 0:
                stop.check()
            loaded.records += 1
            if name == "scibench":
                loaded.test_records += is_test
                loaded.solution_records += not is_test
            if isinstance(record, BadRecord):
                _count_bad(loaded, path, n, record)
                continue
            if shape is None:
                shape = _first_record_shape(loaded, path, n, record)
                loaded.shapes.add(shape)
            try:
                rendered = _renderer(shape, path)(record)
            except BadRecord as bad:
                _count_bad(loaded, path, n, bad)
                continue
            (loaded.test if is_test else loaded.examples).append(rendered)
    _check_bad_fraction(loaded, settings.max_bad_fraction)
    return loaded


def _check_bad_fraction(loaded: Loaded, limit: float) -> None:
    name, total, bad = loaded.source.name, loaded.records, sum(loaded.bad.values())
    if loaded.source.origin != "none" and total == 0:
        raise DataError(
            f"{env_name(name)}={loaded.source.spec!r}: no records in {[str(f) for f in loaded.source.files]}"
        )
    if total and bad / total > limit:
        reasons = ", ".join(f"{r}: {c}" for r, c in loaded.bad.most_common(3))
        files = ", ".join(f"{f} ({c})" for f, c in loaded.bad_files.most_common(3))
        raise DataError(
            f"{bad} of {total} {name} records ({bad / total:.1%}) are bad, more than R1FT_MAX_BAD_FRACTION="
            f"{limit}. Commonest reasons: {reasons}. Files: {files}. "
            f"First: {'; '.join(loaded.first_bad[:3])}. "
            "Fix or remove those records, or raise R1FT_MAX_BAD_FRACTION."
        )
