"""The published layout and its manifest: every file with its size and sha256, written LAST, so a reader
knows a publish is complete when manifest.json is there and every file matches it.

Published layout (Hub repo root, S3 prefix or directory):
    adapter/ merged/ logs/ eval/ gguf/ report.json README.md manifest.json   (+ last-checkpoint/)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from r1ft.publish.destination import FileEntry, PublishError, safe_relpath

LAYOUT_DIRS = ("adapter", "merged", "logs", "eval", "gguf")
LAYOUT_FILES = ("report.json", "README.md")
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


def read_manifest(path: Path) -> list[FileEntry]:
    """The entries of a manifest file (paths checked to stay inside the destination)."""
    try:
        data = json.loads(path.read_text())
        return [FileEntry(safe_relpath(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise PublishError(f"{path} is not a valid r1ft manifest ({e})") from e
