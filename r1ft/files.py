"""Files and sizes, one home each: the sha256 of a file, an atomic JSON write, and how bytes are shown.

Sizes are decimal everywhere in r1ft: 1 GB = 1e9 bytes (as disks, clouds and `R1FT_DISK_BUDGET_GB` count),
and every message says "GB" or "MB" in that sense; GPU memory in the engine and the benchmarks is counted in
GiB (2**30, as torch reports it) and said so.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

GB = 1e9
MB = 1e6
GIB = 2**30  # GPU memory only, as torch and the allocator count it; messages that use it say "GiB"
HASH_CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def format_bytes(n: float) -> str:
    """A size for people, in decimal units: 950 B, 12.3 MB, 1.89 GB."""
    if n >= GB:
        return f"{n / GB:.2f} GB"
    if n >= MB:
        return f"{n / MB:.1f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{n:.0f} B"


def format_gb(gb: float) -> str:
    """A size given in GB (the plan's unit), shown in GB, or in MB below one GB."""
    return format_bytes(gb * GB)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON beside `path`, fsync it, then rename it over `path`: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def dir_bytes(root: Path) -> int:
    """Bytes allocated under root (files only; links not followed); vanishing files are ignored."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            total += max(st.st_size, getattr(st, "st_blocks", 0) * 512)
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds path (its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free
