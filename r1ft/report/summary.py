"""The summary of a run `scripts/collect` prints: steps and losses, accuracy before and after fine-tuning,
the disk peak, stage timings and the publish state, read from the run's report.json (`RunReport`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1ft.evaluation.results import EvaluationRecord
from r1ft.report.schema import REPORT_FILE, RunReport


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _pairs(data: dict[str, Any], keys: list[str] | None = None) -> str:
    """'key value, key value' of the scalar items of a mapping (all, or `keys` in that order)."""
    names = keys if keys is not None else list(data)
    return ", ".join(f"{k} {_fmt(data[k])}" for k in names if isinstance(data.get(k), int | float | str))


def evaluation_lines(evaluation: EvaluationRecord) -> list[str]:
    """One line per benchmark: pass@1 before -> after fine-tuning (95% intervals), the paired difference and
    its verdict. Reports of schema 1 (greedy accuracy per split) are summarised from their `accuracy`."""
    lines = []
    for bench, c in evaluation.comparison.items():
        before = evaluation.results.get("base", {}).get(bench, {})
        after = evaluation.results.get("finetuned", {}).get(bench, {})
        if not c.get("n_problems"):
            continue
        test = c.get("paired_test") or {}
        p = test.get("p_value")
        lines.append(
            f"  {bench:<18} {_share(before)} -> {_share(after)} over {c['n_problems']} problems; "
            f"{c['verdict']} (p {'n/a' if p is None else f'{p:.3g}'})"
        )
    for split, result in (getattr(evaluation, "accuracy", None) or {}).items():  # schema 1
        parts = []
        for when in ("before", "after"):
            r = (result or {}).get(when) or {}
            if r.get("accuracy") is not None:
                ci = r.get("ci95") or []
                interval = f" [{ci[0]:.0%}, {ci[1]:.0%}]" if len(ci) == 2 else ""
                parts.append(f"{r['accuracy']:.1%} of {r.get('n', '?')}{interval}")
        if parts:
            lines.append(f"  {split:<28} {' -> '.join(parts)}")
    return lines


def _share(summary: dict[str, Any]) -> str:
    if summary.get("pass_at_1") is None:
        return "n/a"
    lo, hi = summary.get("ci95") or (None, None)
    interval = f" [{lo:.0%}, {hi:.0%}]" if lo is not None else ""
    return f"{summary['pass_at_1']:.1%}{interval}"


def summary_lines(report: RunReport) -> list[str]:
    """The report's summary; sections the report lacks are left out."""
    s = report.settings
    lines = [f"run {report.run_id or '?'}  (base {s.get('base_model', '?')}, preset {s.get('preset', '?')})"]
    if report.error:
        lines.append(f"ERROR: {report.error}")
    t = report.training
    if t is not None:
        keys = ["train_loss", "eval_loss", "train_runtime"] + ([] if t.epochs else ["epoch"])
        steps = f"{t.global_step} of {t.max_steps}" if t.max_steps else str(t.global_step)
        epochs = f", epoch {t.epoch:g} of {t.epochs:g}" if t.epoch is not None and t.epochs else ""
        lines.append(f"training: steps {steps}{epochs}; {_pairs(t.metrics, keys)}")
        if t.resumed_from:
            lines.append(f"  resumed from {t.resumed_from}")
        if t.interrupted:
            lines.append(f"  interrupted: {t.interrupted}")
    evaluation = evaluation_lines(report.evaluation) if report.evaluation else []
    if evaluation:
        lines += ["pass@1 (before -> after fine-tuning):", *evaluation]
    if report.disk is not None:
        lines.append(f"disk: {_pairs(report.disk.model_dump())}")
    if report.timings_s:
        lines.append(f"timings (s): {_pairs(report.timings_s)}; total {sum(report.timings_s.values()):.0f}")
    if report.publish is not None:
        lines.append(f"publish: location {report.publish.location}, verified {report.publish.verified}")
    return lines


def run_summary(run_dir: Path) -> list[str]:
    """The summary of a collected run directory, and where its parts are."""
    report = RunReport.load(Path(run_dir) / REPORT_FILE)
    lines = summary_lines(report)
    for name in ("adapter", "merged", "gguf", "eval", "logs"):
        if (Path(run_dir) / name).exists():
            lines.append(f"  {name + '/':<9} {Path(run_dir) / name}")
    return lines
