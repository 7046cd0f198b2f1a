"""The published layout and its manifest: every file with its size and sha256, written LAST, so a reader
knows a publish is complete when manifest.json is there and every file matches it.

Published layout (Hub repo root, S3 prefix or directory):
    adapter/ merged/ logs/ eval/ gguf/ report.json README.md manifest.json   (+ last-checkpoint/)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from r1ft.publish.destination import FileEntry, PublishError, safe_relpath

LAYOUT_DIRS = ("adapter", "merged", "logs", "eval", "gguf")
REPORT = "report.json"
CARD = "README.md"
LAYOUT_FILES = (REPORT, CARD)  # written last before the manifest: they carry the publish's own state
MANIFEST = "manifest.json"
CHECKPOINT_DIR = "last-checkpoint"
MANIFEST_FORMAT = "r1ft-manifest/1"
CHECKPOINT_FORMAT = "r1ft-checkpoint/1"


def run_files(run_dir: Path) -> list[str]:
    """The run directory's files that are published (the layout's directories and files), sorted."""
    rels = []
    for name in LAYOUT_DIRS:
        d = run_dir / name
        if d.is_dir():
            rels += [p.relative_to(run_dir).as_posix() for p in d.rglob("*") if p.is_file()]
    rels += [name for name in LAYOUT_FILES if (run_dir / name).is_file()]
    return sorted(r for r in rels if not r.endswith(".partial"))


def manifest_data(
    entries: Iterable[FileEntry], *, fmt: str = MANIFEST_FORMAT, **extra: Any
) -> dict[str, Any]:
    """The manifest: every file with size and sha256, plus totals and who wrote it."""
    files = sorted(entries)
    return {
        "format": fmt,
        **extra,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": [e.as_json() for e in files],
        "total_files": len(files),
        "total_bytes": sum(e.size for e in files),
    }


@dataclass(frozen=True)
class Manifest:
    """A manifest as read back: its entries (checked against its own totals) and the run it belongs to."""

    files: list[FileEntry]
    run_id: str = ""


def load_manifest(path: Path) -> Manifest:
    """The manifest at `path`. Refused (PublishError) when it is not one, when a path would escape the
    destination, when a path is listed twice, or when its entries disagree with its own `total_files` and
    `total_bytes` (an entry removed or added by hand, a truncated file)."""
    try:
        data = json.loads(path.read_text())
        files = [FileEntry(safe_relpath(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]]
        missing = [k for k in ("total_files", "total_bytes") if k not in data]
        if missing:
            raise KeyError(f"no {' or '.join(missing)}: it cannot say whether entries are missing")
        total_files, total_bytes = int(data["total_files"]), int(data["total_bytes"])
        run_id = str(data.get("run_id", ""))
    except (ValueError, KeyError, TypeError) as e:
        raise PublishError(f"{path} is not a valid r1ft manifest ({type(e).__name__}: {e})") from e
    problems = []
    paths = [f.path for f in files]
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        problems.append(f"lists {', '.join(twice)} more than once")
    if len(files) != total_files:
        problems.append(f"lists {len(files)} files but its total_files says {total_files}")
    if sum(f.size for f in files) != total_bytes:
        problems.append(
            f"its files add up to {sum(f.size for f in files)} bytes but total_bytes says {total_bytes}"
        )
    if problems:
        raise PublishError(
            f"{path.name} {'; '.join(problems)}: entries are missing or extra (edited or damaged), so it cannot "
            "vouch for the files. Publish the run again (r1ft publish --run-dir DIR)"
        )
    return Manifest(files, run_id)


def read_manifest(path: Path) -> list[FileEntry]:
    """The entries of a manifest file, checked as `load_manifest` does."""
    return load_manifest(path).files
