"""Where an input comes from: a source setting (`builtin`, `none`, a local file, directory or glob of
`.jsonl`/`.json`/`.parquet` files, or a Hub dataset id at a pinned revision) resolved to files on local
disk. Shared by the training data (`r1ft.data.sources`) and the benchmarks (`r1ft.tasks`)."""

from __future__ import annotations

import glob
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from r1ft.downloads import DownloadError, HubItem, snapshot
from r1ft.files import sha256_file
from r1ft.records import DATA_SUFFIXES, DataError

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass
class Source:
    """A source setting resolved to files on local disk."""

    name: str  # "mathcodeinstruct", "scibench", "math500"
    spec: str  # the setting's value
    origin: str  # "builtin" | "local" | "hub" | "none"
    files: list[Path] = field(default_factory=list)
    revision: str | None = None  # the Hub commit the files came from

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "origin": self.origin,
            "revision": self.revision,
            "files": [str(f) for f in self.files],
        }


def env_name(source: str, what: str = "SOURCE") -> str:
    """The setting that names a source: R1FT_<SOURCE>_SOURCE (or _REVISION)."""
    return f"R1FT_{source.upper()}_{what}"


def builtin_dir() -> Path:
    """The shipped samples (`r1ft/assets/samples/`)."""
    return Path(str(resources.files("r1ft.assets").joinpath("samples")))


def source_kind(spec: str) -> str:
    """'none', 'builtin', 'local' or 'hub' for a source setting (no I/O beyond a path existence check)."""
    value = spec.strip()
    if value.lower() in ("none", ""):
        return "none"
    if value.lower() == "builtin":
        return "builtin"
    path = Path(value).expanduser()
    if path.exists() or path.suffix in DATA_SUFFIXES or any(c in value for c in "*?[") or value[0] in "/.~":
        return "local"
    return "hub" if _HUB_ID.fullmatch(value) else "local"


def local_files(spec: str, setting: str) -> list[Path]:
    """The data files of a local file, directory (recursive) or glob, sorted; DataError if there are none."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    files = [p for p in found if p.suffix in DATA_SUFFIXES]
    skipped = [p.name for p in found if p.suffix not in DATA_SUFFIXES]
    if skipped:  # nothing is left out without a word (a .jsonl.gz is not read: decompress it first)
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.warning("%s: not read (not .jsonl, .json or .parquet): %s", setting, shown)
    if not files:
        where = (
            "matches no file"
            if any(c in spec for c in "*?[")
            else "does not exist"
            if not path.exists()
            else "holds no .jsonl/.json/.parquet file"
        )
        raise DataError(
            f"{setting}={spec!r} {where} ({path.resolve()}); point it at a .jsonl, .json or .parquet file, "
            "a directory or a glob of them"
        )
    return files


def resolve_spec(
    name: str,
    spec: str,
    revision: str,
    cache_dir: Path,
    token: str | None,
    builtin: list[Path],
    patterns: list[str],
) -> Source:
    """A source setting's files on local disk, downloading a Hub dataset (only the files matching
    `patterns`) into `cache_dir` when the spec is a Hub id."""
    kind = source_kind(spec)
    if kind == "none":
        return Source(name, spec, "none")
    if kind == "builtin":
        return Source(name, spec, "builtin", builtin)
    if kind == "local":
        return Source(name, spec, "local", local_files(spec, env_name(name)))
    item = HubItem(spec.strip(), "dataset", revision, env_name(name), env_name(name, "REVISION"))
    try:
        root = snapshot(item, cache_dir, token, patterns)
    except DownloadError as e:
        raise DataError(f"{e} (a file, directory or glob)") from e
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    if not files:
        raise DataError(
            f"the Hub dataset {spec} at revision {revision!r} has no file matching {patterns}; "
            f"check {env_name(name)} / {env_name(name, 'REVISION')}, or point {env_name(name)} at a local copy"
        )
    return Source(name, spec, "hub", files, revision=root.name)


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256, memoised on (path, size, mtime) for the process."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        _HASHES[memo] = sha256_file(path)
    return _HASHES[memo]
