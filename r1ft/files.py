"""Files and sizes, one home each: the sha256 of a file, an atomic JSON write, and how bytes are shown.

Sizes are decimal everywhere in r1ft: 1 GB = 1e9 bytes (as disks, clouds and `R1FT_DISK_BUDGET_GB` count),
and every message says "GB" or "MB" in that sense; GPU memory in the engine and the benchmarks is counted in
GiB (2**30, as torch reports it) and said so.
"""

from __future__ import annotations

import errno
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
# How a full disk shows in the errors of the libraries that write: an OSError's errno, or its text inside
# another error (safetensors: "No space left on device (os error 28)").
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
# torch.save reports a full disk without its cause ("unexpected pos 576 vs 534", "iostream error"): a failure
# while the filesystem has less than this left counts as the disk being full.
NEARLY_FULL_BYTES = 32 * 1024 * 1024
# Space a run keeps allocated (`RUN_DIR/.r1ft-reserve`) and gives back when the disk fills, so that its
# report.json can still be written (a long run's report is a few hundred kB).
RESERVE_BYTES = 4 * 1024 * 1024


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
    """Write JSON beside `path`, fsync it, then rename it over `path`: a reader never sees half a file, and
    a write that fails (a full disk) leaves the previous file as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def disk_full(exc: BaseException, path: Path) -> bool:
    """Whether `exc` (or an error it wraps) means the filesystem holding `path` is full."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(seen) for text in DISK_FULL_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return free_bytes(path) < NEARLY_FULL_BYTES
    except OSError:
        return False


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


def reserve(path: Path, size: int = RESERVE_BYTES) -> bool:
    """Allocate `size` bytes at `path` (given back with `path.unlink()` when the disk is full); False when
    even that does not fit."""
    try:
        with open(path, "wb") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                f.write(b"\0" * size)  # a filesystem without fallocate: write the bytes
                f.flush()
                os.fsync(f.fileno())
        return True
    except OSError:
        path.unlink(missing_ok=True)
        return False
