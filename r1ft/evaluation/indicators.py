"""The original guide's success indicators, each passed, failed or not measured, with what was measured:
training loss falls; eval loss below 1.0 (perplexity below e), read against the base model's eval loss at
step 0; answers in the `<think>` format; and better than the base, only when the paired test says so."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from r1ft.evaluation.losses import EVAL_LOSS_TARGET
from r1ft.evaluation.results import Indicator
from r1ft.evaluation.stats import BETTER
from r1ft.tasks.problem import Verdict


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def success_indicators(
    losses: dict[str, Any],
    eval_loss_base: float | None,
    finetuned: Sequence[Verdict],
    public: dict[str, Any] | None,
) -> list[Indicator]:
    """The four indicators (see the module docstring). `public` is the paired comparison pooled over the
    public benchmarks (MATH-500 and SciBench)."""
    first, last, ev = losses["train_first"], losses["train_last"], losses["eval_last"]
    base_note = (
        f"; the base model at step 0: {_fmt(eval_loss_base)} (perplexity {_fmt(math.exp(min(eval_loss_base, 50)), 2)})"
        if eval_loss_base is not None
        else "; the base model's eval loss was not measured"
    )
    finished = [v for v in finetuned if v.finished]
    closed = sum(v.think_closed for v in finished) / len(finished) if finished else None
    return [
        Indicator(
            name="Training loss falls",
            passed=None if losses["train_points"] < 2 else last < first,
            detail=f"{_fmt(first)} -> {_fmt(last)}",
        ),
        Indicator(
            name="Eval loss < 1.0 (perplexity < 2.72)",
            passed=None if ev is None else ev < EVAL_LOSS_TARGET,
            detail=f"eval loss {_fmt(ev)}, perplexity {_fmt(losses['perplexity'], 2)}{base_note}",
        ),
        Indicator(
            name="Answers in <think> format (every finished answer closes </think>)",
            passed=None if closed is None else closed == 1.0,
            detail=f"{_fmt(closed, 2)} of {len(finished)} finished answers; "
            f"{len(finetuned) - len(finished)} of {len(finetuned)} hit the length limit",
        ),
        _better(public),
    ]


def _better(public: dict[str, Any] | None) -> Indicator:
    name = "Better than the base (MATH-500 and SciBench, paired test at 5%)"
    if not public or not public.get("n_problems"):
        return Indicator(name=name, passed=None, detail="not measured: no problem scored by both models")
    test = public["paired_test"]
    lo, hi = public["ci95"] or (None, None)
    detail = (
        f"{public['verdict']}: pass@1 {100 * public['before']:.1f}% -> {100 * public['after']:.1f}% over "
        f"{public['n_problems']} problems, difference {100 * public['difference']:+.1f} points "
        f"(95% CI {_pts(lo)} to {_pts(hi)}), {test['method']} p = {_p(test['p_value'])}"
    )
    return Indicator(name=name, passed=public["verdict"] == BETTER, detail=detail)


def _pts(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def _p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"
