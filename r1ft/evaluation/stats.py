"""Statistics of a scored benchmark: pass@1 with its interval, and the paired before/after comparison.

- **pass@1 of a problem** = the mean correctness of its k samples (a truncated sample counts wrong).
- **pass@1 of a benchmark** = the mean over problems; its 95% interval is the percentile bootstrap over
  problems (resampling problems, each with all its samples), seeded.
- **Comparison** of two models on the same problems (paired by problem id, only problems both scored):
  the difference after - before of the benchmark pass@1, its 95% bootstrap interval over problems, and a
  paired test over problems: with one sample per problem (outcomes 0/1) the exact McNemar test (a
  two-sided binomial test on the discordant pairs); with k > 1 a two-sided sign-flip permutation test of
  the mean per-problem difference (exact enumeration up to 12 problems, else `n_resamples` seeded flips).
- **Verdict**: "better" only when the test is significant at 5% and the difference is positive, "worse"
  when significant and negative, else "no significant difference" ("not measured" with no paired
  problem). The interval is reported beside it; the verdict follows the test.

numpy only (scipy is not in the locks); McNemar's binomial tail is exact integer arithmetic.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from r1ft.tasks.problem import Verdict

CONFIDENCE = 0.95
ALPHA = 0.05
N_RESAMPLES = 10_000
EXACT_SIGN_FLIP_MAX = 12  # 2**12 = 4096 sign patterns: enumerate them instead of sampling
_CHUNK = 1_000  # resamples drawn at once (bounds memory: chunk x problems)

BETTER, WORSE, NO_DIFFERENCE, NOT_MEASURED = "better", "worse", "no significant difference", "not measured"


# --- per problem ----------------------------------------------------------------------------------------


def per_problem(verdicts: Sequence[Verdict]) -> dict[str, list[Verdict]]:
    """Verdicts grouped by problem id, in order of first appearance."""
    groups: dict[str, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        groups[v.problem_id].append(v)
    return dict(groups)


def problem_scores(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """pass@1 of each problem: the fraction of its samples scored correct."""
    return {pid: sum(v.correct for v in vs) / len(vs) for pid, vs in per_problem(verdicts).items()}


# --- bootstrap ------------------------------------------------------------------------------------------


def _resampled_means(values, seed: int, n_resamples: int):
    """Means of `n_resamples` bootstrap resamples (with replacement) of `values`, seeded."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, n_resamples, _CHUNK):
        rows = min(_CHUNK, n_resamples - start)
        means.append(data[rng.integers(0, len(data), size=(rows, len(data)))].mean(axis=1))
    return np.concatenate(means)


def bootstrap_ci(
    values: Sequence[float], seed: int, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (None when there are none)."""
    import numpy as np

    if not values:
        return None
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(_resampled_means(values, seed, n_resamples), [tail, 1 - tail])
    return float(lo), float(hi)


# --- paired tests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTest:
    """A paired significance test: its method, statistic and two-sided p-value (None: not run).

    Statistics: 'mcnemar-exact' the smaller discordant count min(b, c), where b = problems only the first
    model solved and c = only the second (`detail` holds both); 'sign-flip-*' the mean per-problem
    difference (second - first).
    """

    method: str
    statistic: float | None
    p_value: float | None
    detail: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact(before: Sequence[int], after: Sequence[int]) -> PairedTest:
    """Exact McNemar test on paired 0/1 outcomes: p = P(|B - n/2| >= |b - n/2|), B ~ Binomial(n, 1/2),
    n = b + c discordant pairs (1.0 when there are none)."""
    b = sum(1 for x, y in zip(before, after, strict=True) if x and not y)
    c = sum(1 for x, y in zip(before, after, strict=True) if y and not x)
    n, k = b + c, min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    p_value = 1.0 if n == 0 else min(1.0, 2 * tail / 2**n)
    return PairedTest("mcnemar-exact", float(k), p_value, {"before_only": b, "after_only": c})


def sign_flip_test(differences: Sequence[float], seed: int, n_resamples: int = N_RESAMPLES) -> PairedTest:
    """Two-sided sign-flip permutation test of mean(differences) = 0 (per-problem differences).

    Under the null the two models are exchangeable on each problem, so each difference's sign is a coin
    flip. Exact over all 2**n patterns for n <= EXACT_SIGN_FLIP_MAX, else `n_resamples` seeded patterns
    with the observed one counted in (p >= 1/(n_resamples + 1)).
    """
    import numpy as np

    d = np.asarray(differences, dtype=float)
    observed = float(d.mean())
    tolerance = 1e-12 * max(1.0, abs(observed))  # float sums of the same terms in another order
    if len(d) <= EXACT_SIGN_FLIP_MAX:
        patterns = ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1) * 2 - 1
        extreme = np.abs((patterns * d).mean(axis=1)) >= abs(observed) - tolerance
        return PairedTest("sign-flip-exact", observed, float(extreme.mean()))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, _CHUNK):
        signs = rng.choice((-1.0, 1.0), size=(min(_CHUNK, n_resamples - start), len(d)))
        hits += int((np.abs((signs * d).mean(axis=1)) >= abs(observed) - tolerance).sum())
    return PairedTest("sign-flip-permutation", observed, (hits + 1) / (n_resamples + 1))


def paired_test(
    before: Sequence[float], after: Sequence[float], samples_per_problem: int | None, seed: int
) -> PairedTest:
    """McNemar's exact test for one sample per problem, else the sign-flip permutation test."""
    if not before:
        return PairedTest("none", None, None)
    if samples_per_problem == 1 and all(x in (0, 1) for x in (*before, *after)):
        return mcnemar_exact([int(x) for x in before], [int(x) for x in after])
    return sign_flip_test([y - x for x, y in zip(before, after, strict=True)], seed)


def verdict(difference: float | None, p_value: float | None, alpha: float = ALPHA) -> str:
    """'better' / 'worse' only when significant at `alpha`; else 'no significant difference'."""
    if difference is None or p_value is None:
        return NOT_MEASURED
    if p_value < alpha and difference > 0:
        return BETTER
    if p_value < alpha and difference < 0:
        return WORSE
    return NO_DIFFERENCE


# --- what report.json carries ---------------------------------------------------------------------------


def _fraction(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _samples_per_problem(verdicts: Sequence[Verdict]) -> int | None:
    counts = {len(vs) for vs in per_problem(verdicts).values()}
    return counts.pop() if len(counts) == 1 else None


@dataclass(frozen=True)
class Summary:
    """One model on one benchmark (report.json's `evaluation.<model>.<benchmark>`).

    - `pass_at_1`: mean over problems of each problem's fraction of correct samples (truncated = wrong).
    - `ci95`: 95% percentile bootstrap interval of pass_at_1 over problems (seeded).
    - `n_problems`: problems scored; `n_samples`: answers scored in all.
    - `samples_per_problem`: k, the samples of every problem (None if problems differ, which a run that
      scores whole problems never produces).
    - `truncated_fraction`: answers that hit the token cap (did not stop by EOS), over all answers.
    - `mean_new_tokens`, `median_new_tokens`: generated tokens per answer, truncated ones included.
    - `finished_accuracy`: fraction correct among answers that closed `</think>` and stopped by EOS
      (how well the model does when it completes; None when none did).
    - `think_closed_fraction`: answers containing `</think>`, over all answers.
    - `code_block_fraction`: answers containing a ```python fence, over all answers.
    """

    pass_at_1: float | None
    ci95: tuple[float, float] | None
    n_problems: int
    samples_per_problem: int | None
    n_samples: int
    truncated_fraction: float | None
    mean_new_tokens: float | None
    median_new_tokens: float | None
    finished_accuracy: float | None
    think_closed_fraction: float | None
    code_block_fraction: float | None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci95"] = list(self.ci95) if self.ci95 is not None else None
        return out


def summary(verdicts: Sequence[Verdict], seed: int, n_resamples: int = N_RESAMPLES) -> Summary:
    """The report's numbers for one model on one benchmark (see `Summary`)."""
    scores = list(problem_scores(verdicts).values())
    tokens = [v.new_tokens for v in verdicts]
    completed = [v.correct for v in verdicts if v.finished and v.think_closed]
    return Summary(
        pass_at_1=sum(scores) / len(scores) if scores else None,
        ci95=bootstrap_ci(scores, seed, n_resamples),
        n_problems=len(scores),
        samples_per_problem=_samples_per_problem(verdicts),
        n_samples=len(verdicts),
        truncated_fraction=_fraction([v.truncated for v in verdicts]),
        mean_new_tokens=statistics.fmean(tokens) if tokens else None,
        median_new_tokens=float(statistics.median(tokens)) if tokens else None,
        finished_accuracy=_fraction(completed),
        think_closed_fraction=_fraction([v.think_closed for v in verdicts]),
        code_block_fraction=_fraction([v.used_code for v in verdicts]),
    )


@dataclass(frozen=True)
class Comparison:
    """After vs before on one benchmark (report.json's `evaluation.comparison.<benchmark>`).

    `difference` = pass@1 after - pass@1 before over the `n_problems` problems both models scored
    (`before_only` / `after_only`: problems only one of them scored, left out); `ci95` its bootstrap
    interval over problems; `paired_test` the test behind `verdict` (at `alpha`).
    """

    n_problems: int
    before: float | None
    after: float | None
    difference: float | None
    ci95: tuple[float, float] | None
    paired_test: PairedTest
    verdict: str
    alpha: float = ALPHA
    before_only: int = 0
    after_only: int = 0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci95"] = list(self.ci95) if self.ci95 is not None else None
        out["paired_test"] = self.paired_test.to_json()
        return out


def comparison(
    before: Sequence[Verdict],
    after: Sequence[Verdict],
    seed: int,
    alpha: float = ALPHA,
    n_resamples: int = N_RESAMPLES,
) -> Comparison:
    """The paired comparison of two models' verdicts on one benchmark (see the module docstring)."""
    b_scores, a_scores = problem_scores(before), problem_scores(after)
    common = [pid for pid in b_scores if pid in a_scores]
    b, a = [b_scores[p] for p in common], [a_scores[p] for p in common]
    k_before, k_after = _samples_per_problem(before), _samples_per_problem(after)
    k = k_before if k_before == k_after else None
    test = paired_test(b, a, k, seed)
    diff = (sum(a) - sum(b)) / len(common) if common else None
    return Comparison(
        n_problems=len(common),
        before=sum(b) / len(b) if b else None,
        after=sum(a) / len(a) if a else None,
        difference=diff,
        ci95=bootstrap_ci([y - x for x, y in zip(b, a, strict=True)], seed, n_resamples),
        paired_test=test,
        verdict=verdict(diff, test.p_value, alpha),
        alpha=alpha,
        before_only=len(b_scores) - len(common),
        after_only=len(a_scores) - len(common),
    )
