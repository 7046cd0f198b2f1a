"""Checkpoint bookkeeping and the disk watchdog's pruning, as pure functions and on real directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from r1ft.checkpoints import markers as checkpoints
from r1ft.checkpoints.watchdog import DiskWatchdog, dir_bytes


@pytest.mark.parametrize(
    ("steps", "complete", "keep", "expected"),
    [
        ([], set(), 3, []),
        ([10, 20, 30], {10, 20, 30}, 3, []),
        ([10, 20, 30, 40], {10, 20, 30, 40}, 3, [10]),
        ([10, 20, 30, 40], {10, 20, 30, 40}, 1, [10, 20, 30]),
        ([10, 20, 30], {10, 20}, 1, [10]),  # 30 may be a save in progress: left alone
        ([10, 20, 30], {10, 30}, 1, [10, 20]),  # 20 is a dead save older than the newest complete
        ([10, 20], set(), 1, []),  # nothing complete: never delete anything
        ([10, 20, 30], {30}, 0, [10, 20]),  # keep 0 is treated as 1: the newest complete survives
    ],
)
def test_select_prunable(steps, complete, keep, expected):
    assert checkpoints.select_prunable(steps, complete, keep) == expected


def test_select_prunable_never_selects_the_newest_complete():
    import random

    rng = random.Random(0)
    for _ in range(500):
        steps = sorted(rng.sample(range(1, 100), rng.randint(1, 8)))
        complete = {s for s in steps if rng.random() < 0.6}
        pruned = checkpoints.select_prunable(steps, complete, rng.randint(0, 4))
        if complete:
            assert max(complete) not in pruned


def make_ckpt(root: Path, step: int, complete: bool = True) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"w" * 1000)
    (d / "optimizer.pt").write_bytes(b"o" * 2000)
    if complete:
        checkpoints.mark_complete(d, {"global_step": step})
    return d


def test_marker_detects_missing_truncated_and_corrupt_files(tmp_path):
    d = make_ckpt(tmp_path, 4)
    assert checkpoints.check_complete(d) == ""
    with open(d / "adapter_model.safetensors", "r+b") as f:
        f.truncate(10)
    assert "truncated" in checkpoints.check_complete(d)
    d2 = make_ckpt(tmp_path, 8)
    (d2 / "optimizer.pt").write_bytes(b"x" * 2000)
    assert "checksum" in checkpoints.check_complete(d2)
    d3 = make_ckpt(tmp_path, 12)
    (d3 / "optimizer.pt").unlink()
    assert "missing" in checkpoints.check_complete(d3)
    d4 = make_ckpt(tmp_path, 16, complete=False)
    assert "marker" in checkpoints.check_complete(d4)
    assert checkpoints.newest_complete(tmp_path) is None  # every one is broken


def test_newest_complete_skips_broken_ones(tmp_path):
    make_ckpt(tmp_path, 4)
    good = make_ckpt(tmp_path, 8)
    make_ckpt(tmp_path, 12, complete=False)
    assert checkpoints.newest_complete(tmp_path) == good


def test_watchdog_prunes_to_keep_then_to_one_above_high_water(tmp_path):
    work = tmp_path / "work"
    ck = work / "run" / "checkpoints"
    for step in (4, 8, 12, 16):
        make_ckpt(ck, step)
    wd = DiskWatchdog(work, ck, budget_gb=1.0, floor_gb=0.0, keep=2)
    assert wd.enforce() == ""
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint-12", "checkpoint-16"]
    per_ckpt = dir_bytes(ck / "checkpoint-16")
    wd = DiskWatchdog(work, ck, budget_gb=(dir_bytes(work) + per_ckpt // 10) / 1e9, floor_gb=0.0, keep=2)
    assert wd.enforce() == ""  # above the high-water mark: only the newest complete is kept
    assert [p.name for p in ck.iterdir()] == ["checkpoint-16"]
    assert wd.state.emergency_prunes == 1
    wd = DiskWatchdog(work, ck, budget_gb=per_ckpt / 2e9, floor_gb=0.0, keep=2)
    assert "over the" in wd.enforce()  # still over: the newest complete one is never deleted
    assert wd.state.over_budget and (ck / "checkpoint-16").is_dir()


def test_watchdog_keeps_the_free_space_floor(tmp_path, monkeypatch):
    import r1ft.checkpoints.watchdog as watchdog

    ck = tmp_path / "checkpoints"
    make_ckpt(ck, 4)
    make_ckpt(ck, 8)
    monkeypatch.setattr(watchdog, "free_bytes", lambda path: 10_000_000)
    wd = DiskWatchdog(tmp_path, ck, budget_gb=100.0, floor_gb=0.5, keep=3)
    assert "free" in wd.enforce()
    assert [p.name for p in ck.iterdir()] == ["checkpoint-8"]
