"""Checkpoint bookkeeping: completeness markers, validation, pruning.

The Trainer writes `checkpoint-{step}/` in place, so a process killed mid-save leaves a directory that
looks like a checkpoint. After every save, r1ft writes `r1ft-complete.json` (every file with its size and
sha256) into the directory, then fsyncs it: only a directory whose marker exists and whose files still
match it counts as complete. Pruning is a pure function that never selects the newest complete one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from r1ft.files import sha256_file

log = logging.getLogger(__name__)

MARKER = "r1ft-complete.json"
_STEP = re.compile(r"^checkpoint-(\d+)$")


def step_of(path: Path) -> int | None:
    m = _STEP.match(path.name)
    return int(m.group(1)) if m else None


def mark_complete(ckpt: Path, extra: dict | None = None) -> None:
    """Record every file of a finished checkpoint (size, sha256); written atomically, last."""
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MARKER)
    entries = [
        {"path": p.relative_to(ckpt).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    ]
    tmp = ckpt / (MARKER + ".tmp")
    try:
        tmp.write_text(json.dumps({"files": entries, **(extra or {})}, indent=1))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:  # a full disk: no marker, so the checkpoint never counts as complete
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(ckpt / MARKER)


def check_complete(ckpt: Path, deep: bool = True) -> str:
    """'' when the checkpoint is complete and intact, else the reason it is not."""
    marker = ckpt / MARKER
    if not marker.is_file():
        return "no completion marker (killed mid-save?)"
    try:
        entries = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable completion marker: {e}"
    for e in entries:
        p = ckpt / e["path"]
        if not p.is_file():
            return f"missing file {e['path']}"
        if p.stat().st_size != e["size"]:
            return f"{e['path']} is {p.stat().st_size} bytes, expected {e['size']} (truncated?)"
        if deep and sha256_file(p) != e["sha256"]:
            return f"{e['path']} does not match its checksum (corrupted)"
    return ""


def checkpoint_dirs(root: Path) -> list[Path]:
    """`checkpoint-{step}` directories under root, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=lambda p: step_of(p) or 0)


def newest_complete(root: Path, deep: bool = True) -> Path | None:
    """The newest complete, intact checkpoint; incomplete or corrupt ones are skipped with a warning."""
    for ckpt in reversed(checkpoint_dirs(root)):
        reason = check_complete(ckpt, deep=deep)
        if not reason:
            return ckpt
        log.warning("skipping %s: %s", ckpt.name, reason)
    return None


def select_prunable(steps: list[int], complete: set[int], keep: int) -> list[int]:
    """Steps to delete so that at most `keep` complete checkpoints remain, oldest first.

    Never selects the newest complete step. Incomplete checkpoints older than the newest complete one
    are always prunable (they are dead saves); a newer incomplete one may be a save in progress and is
    left alone.
    """
    keep = max(1, keep)
    done = sorted(s for s in steps if s in complete)
    if not done:
        return []
    newest = done[-1]
    surplus = done[:-keep] if len(done) > keep else []
    dead = [s for s in steps if s not in complete and s < newest]
    return sorted(set(surplus) | set(dead))


def prune(root: Path, keep: int) -> list[Path]:
    """Delete surplus checkpoints under root (see select_prunable); returns what was removed."""
    dirs = {step_of(p): p for p in checkpoint_dirs(root)}
    complete = {s for s, p in dirs.items() if (p / MARKER).is_file()}
    removed = []
    for s in select_prunable(sorted(dirs), complete, keep):  # type: ignore[arg-type]
        shutil.rmtree(dirs[s], ignore_errors=True)
        removed.append(dirs[s])
    return removed


def remove_incomplete(root: Path) -> list[Path]:
    """Delete every checkpoint without a completion marker (after a failed save, when nothing is saving);
    returns what was removed."""
    removed = []
    for ckpt in checkpoint_dirs(root):
        if not (ckpt / MARKER).is_file():
            shutil.rmtree(ckpt, ignore_errors=True)
            removed.append(ckpt)
    return removed


def completion_callback(marker_extra: dict | None = None):
    """A TrainerCallback that marks each save complete (rank 0), before anything prunes or pushes it."""
    from transformers import TrainerCallback

    class CompletionMarker(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    mark_complete(ckpt, {"global_step": state.global_step, **(marker_extra or {})})
            return control

    return CompletionMarker()
