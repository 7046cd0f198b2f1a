"""The model card's evaluation section: pass@1 per model and benchmark with their intervals, the paired
comparison and its test, what was planned and scored, the merge check and the protocol's caveats."""

from __future__ import annotations

import re

from r1ft.evaluation.results import EvaluationRecord
from r1ft.report.schema import MergeRecord

_BENCHMARKS = {
    "math500": "MATH-500 (math-verify)",
    "scibench": "SciBench test set (SciBench's scoring: last \\boxed{}, 5% relative)",
    "scibench_lenient": "SciBench, lenient parsing (\\frac, units, unboxed)",
    "heldout": "Held-out split (in-distribution check)",
    "public": "MATH-500 + SciBench together",
}
DEEPSEEK_MATH500 = 0.839  # DeepSeek's published MATH-500 pass@1 of DeepSeek-R1-Distill-Qwen-1.5B


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _score(summary: dict | None) -> str:
    if not summary or summary.get("pass_at_1") is None:
        return "n/a"
    lo, hi = summary["ci95"] or (None, None)
    ci = f" [{_pct(lo)}, {_pct(hi)}]" if lo is not None else ""
    return f"{_pct(summary['pass_at_1'])}{ci}"


def _difference(c: dict) -> str:
    if c.get("difference") is None:
        return "n/a"
    lo, hi = c["ci95"] or (None, None)
    ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo is not None else ""
    return f"{100 * c['difference']:+.1f} pts{ci}"


def _p_value(c: dict) -> str:
    test = c.get("paired_test") or {}
    p = test.get("p_value")
    return "n/a" if p is None else f"{p:.3g} ({test.get('method')})"


def _pair(a: dict | None, b: dict | None, key: str, fmt) -> str:
    get = lambda s: fmt(s.get(key)) if s and s.get(key) is not None else "n/a"  # noqa: E731
    return f"{get(a)} → {get(b)}"


def _fence(text: str) -> str:
    """`text` in a code fence longer than any backtick run inside it."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}text\n{text}\n{fence}"


def _verdict(passed: bool | None) -> str:
    return {True: "✅ pass", False: "❌ fail", None: "– not measured"}[passed]


def evaluation_section(e: EvaluationRecord, merge: MergeRecord | None = None) -> str:
    """The body of the model card's evaluation section: the protocol in one line, per benchmark before /
    after / difference with interval / p-value / truncated share / mean length, the indicators, the loss
    curves and the three prompts."""
    p = e.protocol
    base, ft = e.results.get("base", {}), e.results.get("finetuned", {})
    lines = [
        f"**Protocol**: {p.get('samples_per_problem')} sampled answers per problem at temperature "
        f"{p.get('temperature')}, top_p {p.get('top_p')}, up to {p.get('max_new_tokens')} new tokens, the model "
        "card's prompt (no system prompt; \"Please reason step by step, and put your final answer within "
        '\\boxed{}."); pass@1 = the mean over answers, with 95% bootstrap intervals over problems; both models '
        f"answered the same {e.compared_problems} problems (a prefix of one seeded order); {e.dtype} on "
        f'{e.device}. The difference is paired by problem; "better" only when the paired test is significant '
        "at 5%.",
        "",
        "| Benchmark | Before (base) | After (fine-tune) | Difference [95% CI] | p-value | Verdict | Truncated | "
        "Mean new tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, title in _BENCHMARKS.items():
        c = e.comparison.get(name)
        if c is None or not c.get("n_problems"):
            continue
        b, a = base.get(name), ft.get(name)
        trunc = _pair(b, a, "truncated_fraction", _pct)
        length = _pair(b, a, "mean_new_tokens", lambda x: f"{x:,.0f}")
        n = f" ({c['n_problems']} problems)"
        lines.append(f"| {title}{n} | {_score(b)} | {_score(a)} | {_difference(c)} | {_p_value(c)} | "
                     f"{c['verdict']} | {trunc} | {length} |")  # fmt: skip
    math500 = base.get("math500")
    if math500 and math500.get("pass_at_1") is not None:
        lines += [
            "",
            f"Harness check: the base model's MATH-500 pass@1 here is {_pct(math500['pass_at_1'])} on "
            f"{math500['n_problems']} problems with {p.get('max_new_tokens')} new tokens; DeepSeek reports "
            f"{_pct(DEEPSEEK_MATH500)} (all 500, up to 32,768 tokens, 64 samples). Shorter caps and fewer problems "
            "read lower and noisier.",
        ]
    for name in ("base", "finetuned"):
        m = e.models.get(name)
        if m is None:
            continue
        g = m.generation
        stopped = f" A stop request ({m.interrupted}) ended it early." if m.interrupted else ""
        if g.oom_fallbacks:
            stopped += f" The KV cache was shrunk after running out of memory: {'; '.join(g.oom_fallbacks)}."
        if g.kernel_fallback:
            stopped += f" {g.kernel_fallback[0].upper()}{g.kernel_fallback[1:]}."
        budget = f"; the time budget ({m.budget_s:.0f} s) ran out first" if m.budget_exhausted else ""
        lines += ["", f"{'Base model' if name == 'base' else 'Fine-tune'}: {m.scored_problems} of "
                      f"{m.planned_problems} planned problems scored{budget}; {g.new_tokens:,} tokens in "
                      f"{g.seconds:.0f} s ({g.tokens_per_s:,.0f} tokens/s, {g.slots} at once).{stopped}"]  # fmt: skip
    sm = e.scored_model
    check = "" if sm.matches_published is None else (" (sha256 of every shard matches the published ones)"
                                                      if sm.matches_published else " (**its shards differ from the published ones**)")  # fmt: skip
    lines += ["", f"Scored weights: {sm.source}{check}."]
    if merge is not None and merge.max_logit_diff is not None:
        lines.append(
            f"Merged vs adapter model ({merge.logit_check_dtype}, check prompts): largest logit difference "
            f"{merge.max_logit_diff:.3g}."
        )
    lines += ["", "### Success indicators", "", "| Indicator | Result | Measured |", "|---|---|---|"]
    lines += [f"| {i.name} | {_verdict(i.passed)} | {i.detail} |" for i in e.indicators]
    if e.loss_curve:
        lines += ["", "### Loss curves", "", f"![Training and eval loss]({e.loss_curve})"]
    lines += ["", "### The three test prompts", "",
              f"Sampled like the scored answers (temperature {p.get('temperature')}, top_p {p.get('top_p')}, "
              f"up to {p.get('max_new_tokens')} new tokens); full outputs."]  # fmt: skip
    for sp in e.prompts:
        lines += ["", f"**{sp.prompt}**"]
        for label, text in (("Base model", sp.base), ("Fine-tune", sp.finetuned)):
            lines += ["", f"<details><summary>{label}</summary>", "", _fence(text), "", "</details>"]
    return "\n".join(lines) + "\n"
