"""The training and eval losses from the run's TensorBoard event files: read, summarised, plotted."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EVAL_LOSS_TARGET = 1.0  # the guide's target; perplexity exp(1.0) = 2.72


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under `log_dir` (all files, merged by step; a
    step logged twice, e.g. after a resume, keeps the latest value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        try:
            acc.Reload()
        except Exception as e:  # a torn file from a killed run: keep what the others hold
            log.warning("skipping unreadable TensorBoard file %s: %s", path, e)
            continue
        for tag in acc.Tags().get("scalars", []):
            for ev in acc.Scalars(tag):
                if ev.step not in merged[tag] or merged[tag][ev.step][0] <= ev.wall_time:
                    merged[tag][ev.step] = (ev.wall_time, float(ev.value))
    return {tag: sorted((step, v) for step, (_, v) in series.items()) for tag, series in merged.items()}


def loss_summary(scalars: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
    """First and last train loss (means of the first and last tenth), last eval loss and its perplexity."""
    train = [v for _, v in scalars.get("train/loss", [])]
    evals = [v for _, v in scalars.get("eval/loss", [])]
    k = max(1, len(train) // 10)
    eval_last = evals[-1] if evals else None
    return {
        "train_points": len(train),
        "train_first": sum(train[:k]) / k if train else None,
        "train_last": sum(train[-k:]) / k if train else None,
        "eval_points": len(evals),
        "eval_first": evals[0] if evals else None,
        "eval_last": eval_last,
        "perplexity": math.exp(eval_last) if eval_last is not None and eval_last < 700 else None,
    }


def plot_loss_curve(scalars: dict[str, list[tuple[int, float]]], dest: Path) -> Path | None:
    """Train and eval loss against the step as a PNG (matplotlib's Agg canvas); None when nothing was logged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, evals = scalars.get("train/loss", []), scalars.get("eval/loss", [])
    if not train and not evals:
        return None
    fig = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", linewidth=1.5)
    ax.axhline(EVAL_LOSS_TARGET, color="grey", linestyle="--", linewidth=1, label="target eval loss 1.0")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Training and eval loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, format="png")
    return dest
