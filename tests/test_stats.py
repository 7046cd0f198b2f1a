"""pass@1 with its bootstrap interval, the paired tests and the before/after verdict, on constructed outcomes."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest

from r1ft.evaluation import stats
from r1ft.tasks.problem import Verdict


def verdicts(outcomes: list[list[int]], **flags) -> list[Verdict]:
    """Verdicts for problems p0, p1, ... with the given per-sample outcomes (1 = correct)."""
    out = []
    for i, samples in enumerate(outcomes):
        for j, ok in enumerate(samples):
            out.append(
                Verdict(f"p{i}", j, bool(ok), "x", flags.get("finished", True), flags.get("think_closed", True),
                        flags.get("used_code", False), "boxed", flags.get("new_tokens", 100))
            )  # fmt: skip
    return out


def k1(pattern: list[int]) -> list[Verdict]:
    return verdicts([[x] for x in pattern])


# --- pass@1 and the summary ------------------------------------------------------------------------------


def test_pass_at_1_is_the_mean_over_problems_of_the_mean_over_samples():
    v = verdicts([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert stats.problem_scores(v) == {"p0": 0.5, "p1": 1.0, "p2": 0.0}
    s = stats.summary(v, seed=0)
    assert (s.pass_at_1, s.n_problems, s.samples_per_problem, s.n_samples) == (0.5, 3, 4, 12)
    lo, hi = s.ci95
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_summary_counts_truncation_lengths_think_and_code():
    rows = [
        # (correct, finished, think_closed, used_code, new_tokens)
        (True, True, True, False, 300),
        (False, True, True, True, 500),
        (False, False, False, False, 16384),  # hit the cap: wrong, truncated
        (True, True, False, False, 200),  # stopped without closing </think>: not in finished_accuracy
    ]
    v = [Verdict("p0", i, c, None, f, t, u, "boxed", n) for i, (c, f, t, u, n) in enumerate(rows)]
    s = stats.summary(v, seed=0)
    assert s.pass_at_1 == 0.5 and s.truncated_fraction == 0.25
    assert s.mean_new_tokens == (300 + 500 + 16384 + 200) / 4 and s.median_new_tokens == 400.0
    assert s.finished_accuracy == 0.5  # 1 of the 2 answers that closed </think> and stopped
    assert (s.think_closed_fraction, s.code_block_fraction) == (0.5, 0.25)
    report = json.loads(json.dumps(s.to_json()))
    assert set(report) == {
        "pass_at_1", "ci95", "n_problems", "samples_per_problem", "n_samples", "truncated_fraction",
        "mean_new_tokens", "median_new_tokens", "finished_accuracy", "think_closed_fraction",
        "code_block_fraction",
    }  # fmt: skip
    assert report["ci95"] == [0.5, 0.5]  # one problem: nothing to resample


def test_summary_of_nothing_and_of_uneven_samples():
    empty = stats.summary([], seed=0)
    assert (empty.pass_at_1, empty.ci95, empty.n_problems, empty.truncated_fraction) == (None, None, 0, None)
    assert json.dumps(empty.to_json())
    assert stats.summary(verdicts([[1, 0], [1]]), seed=0).samples_per_problem is None
    assert stats.summary(verdicts([[1, 0, 1]], finished=False), seed=0).finished_accuracy is None


# --- the bootstrap --------------------------------------------------------------------------------------


def test_bootstrap_edge_cases_and_seed():
    assert stats.bootstrap_ci([], seed=0) is None
    assert stats.bootstrap_ci([0.75], seed=0) == (0.75, 0.75)
    assert stats.bootstrap_ci([1.0] * 50, seed=0) == (1.0, 1.0)
    values = [1, 0, 1, 1, 0, 0, 1, 1, 1, 0] * 10
    assert stats.bootstrap_ci(values, seed=7) == stats.bootstrap_ci(values, seed=7)
    assert stats.bootstrap_ci(values, seed=7) != stats.bootstrap_ci(values, seed=8)
    lo, hi = stats.bootstrap_ci(values, seed=7)
    assert lo < 0.6 < hi and 0.15 < hi - lo < 0.25  # about +-1.96 * sqrt(.6 * .4 / 100) = +-0.096


def test_bootstrap_interval_covers_the_true_pass_rate_about_95_percent_of_the_time():
    rng = random.Random(0)
    p, n, runs = 0.7, 100, 200
    covered = 0
    for run in range(runs):
        lo, hi = stats.bootstrap_ci([float(rng.random() < p) for _ in range(n)], seed=run, n_resamples=1000)
        covered += lo <= p <= hi
    assert 0.88 <= covered / runs <= 0.99


# --- McNemar, sign flips, the verdict ---------------------------------------------------------------------


def mcnemar_from_counts(b: int, c: int, both: int = 3, neither: int = 4) -> stats.PairedTest:
    before = [1] * b + [0] * c + [1] * both + [0] * neither
    after = [0] * b + [1] * c + [1] * both + [0] * neither
    return stats.mcnemar_exact(before, after)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 5, Fraction(2, 2**5)),  # 0.0625: five wins out of five is not significant two-sided
        (0, 6, Fraction(2, 2**6)),  # 0.03125
        (1, 9, Fraction(2 * (1 + 10), 2**10)),  # 0.021484375
        (2, 8, Fraction(2 * (1 + 10 + 45), 2**10)),  # 0.109375
        (3, 5, Fraction(2 * (1 + 8 + 28 + 56), 2**8)),  # 0.7265625
        (3, 0, Fraction(2, 2**3)),  # 0.25, symmetric
        (5, 5, Fraction(1)),
        (0, 0, Fraction(1)),  # no discordant pair
    ],
)
def test_mcnemar_exact_p_values(b, c, p):
    t = mcnemar_from_counts(b, c)
    assert t.method == "mcnemar-exact" and t.p_value == pytest.approx(float(min(p, 1)), abs=1e-15)
    assert t.statistic == min(b, c) and t.detail == {"before_only": b, "after_only": c}


def test_sign_flip_exact_and_sampled():
    exact = stats.sign_flip_test([0.25, 0.25, 0.25], seed=0)
    assert exact.method == "sign-flip-exact" and exact.p_value == 0.25  # 2 of 8 patterns as extreme
    assert stats.sign_flip_test([0.0] * 40, seed=0).p_value == 1.0
    sampled = stats.sign_flip_test([0.5] * 40, seed=0, n_resamples=2000)
    assert sampled.method == "sign-flip-permutation" and sampled.p_value == 1 / 2001
    assert stats.sign_flip_test([0.5, -0.25] * 20, seed=3) == stats.sign_flip_test([0.5, -0.25] * 20, seed=3)


def test_sign_flip_rejects_about_5_percent_of_null_cases():
    rng = random.Random(1)
    runs = 200
    rejected = sum(
        stats.sign_flip_test([rng.choice([-0.5, -0.25, 0, 0.25, 0.5]) for _ in range(50)], seed=i, n_resamples=500)
        .p_value < 0.05
        for i in range(runs)
    )  # fmt: skip
    assert 0.01 <= rejected / runs <= 0.10


@pytest.mark.parametrize(
    ("difference", "p_value", "expected"),
    [
        (0.1, 0.01, "better"),
        (-0.1, 0.01, "worse"),
        (0.1, 0.2, "no significant difference"),
        (0.1, 0.05, "no significant difference"),  # significant means p < 5%
        (0.0, 1.0, "no significant difference"),
        (None, None, "not measured"),
    ],
)
def test_verdict(difference, p_value, expected):
    assert stats.verdict(difference, p_value) == expected


# --- the comparison ---------------------------------------------------------------------------------------


def test_one_sample_a_clear_improvement_is_better():
    before = k1([1] * 40 + [0] * 60)
    after = k1([1] * 40 + [1] * 25 + [0] * 35)
    c = stats.comparison(before, after, seed=0)
    assert (c.n_problems, c.before, c.after, c.difference) == (100, 0.40, 0.65, pytest.approx(0.25))
    assert c.paired_test.method == "mcnemar-exact" and c.paired_test.p_value == pytest.approx(2 / 2**25)
    assert c.verdict == "better" and 0 < c.ci95[0] < 0.25 < c.ci95[1]


def test_one_sample_identical_models_and_small_noise_are_no_significant_difference():
    same = k1([1, 0, 1, 1, 0] * 20)
    c = stats.comparison(same, same, seed=0)
    assert (c.difference, c.paired_test.p_value, c.verdict) == (0.0, 1.0, "no significant difference")
    assert c.ci95 == (0.0, 0.0)
    before = k1([1] * 3 + [0] * 5 + [1] * 50 + [0] * 42)
    after = k1([0] * 3 + [1] * 5 + [1] * 50 + [0] * 42)  # 5 gained, 3 lost
    noisy = stats.comparison(before, after, seed=0)
    assert noisy.difference == pytest.approx(0.02) and noisy.paired_test.p_value == pytest.approx(0.7265625)
    assert noisy.verdict == "no significant difference"


def test_one_sample_a_clear_regression_is_worse():
    before = k1([1] * 20 + [0] * 2 + [1] * 40 + [0] * 38)
    after = k1([0] * 20 + [1] * 2 + [1] * 40 + [0] * 38)
    c = stats.comparison(before, after, seed=0)
    assert c.difference == pytest.approx(-0.18) and c.paired_test.p_value < 0.001 and c.verdict == "worse"
    assert c.ci95[1] < 0


def test_k_samples_improvement_noise_and_regression_use_the_sign_flip_test():
    rng = random.Random(2)
    weak = verdicts([[1, 0, 0, 0]] * 60)
    strong = verdicts([[1, 1, 1, 0]] * 60)
    better = stats.comparison(weak, strong, seed=0)
    assert better.paired_test.method == "sign-flip-permutation" and better.paired_test.statistic == 0.5
    assert better.verdict == "better" and better.paired_test.p_value < 0.001
    assert stats.comparison(strong, weak, seed=0).verdict == "worse"
    same = stats.comparison(weak, weak, seed=0)
    assert (same.paired_test.p_value, same.verdict) == (1.0, "no significant difference")
    base = [[int(rng.random() < 0.5) for _ in range(4)] for _ in range(60)]
    jitter = [list(s) for s in base]
    for i in rng.sample(range(60), 6):  # a few samples flip either way
        j = rng.randrange(4)
        jitter[i][j] = 1 - jitter[i][j]
    noisy = stats.comparison(verdicts(base), verdicts(jitter), seed=0)
    assert noisy.paired_test.p_value > 0.05 and noisy.verdict == "no significant difference"


def test_only_problems_both_models_scored_are_compared():
    before = k1([1, 0, 1, 0, 1])
    after = [v for v in k1([1, 1, 1, 1, 1, 1]) if v.problem_id != "p0"]  # p0 not scored; p5 extra
    c = stats.comparison(before, after, seed=0)
    assert (c.n_problems, c.before_only, c.after_only) == (4, 1, 1)
    assert (c.before, c.after) == (0.5, 1.0)


def test_comparison_of_nothing_is_not_measured_and_exports_plain_data():
    c = stats.comparison([], [], seed=0)
    assert (c.n_problems, c.difference, c.ci95, c.verdict) == (0, None, None, "not measured")
    assert c.paired_test.method == "none"
    report = json.loads(json.dumps(stats.comparison(k1([0, 1, 1]), k1([1, 1, 1]), seed=0).to_json()))
    assert set(report["paired_test"]) >= {"method", "statistic", "p_value"}
    assert isinstance(report["ci95"], list) and report["verdict"] == "no significant difference"


def test_comparison_is_deterministic_under_the_seed():
    rng = random.Random(5)
    before = verdicts([[int(rng.random() < 0.4) for _ in range(4)] for _ in range(80)])
    after = verdicts([[int(rng.random() < 0.5) for _ in range(4)] for _ in range(80)])
    assert stats.comparison(before, after, seed=11) == stats.comparison(before, after, seed=11)
    assert stats.comparison(before, after, seed=11).ci95 != stats.comparison(before, after, seed=12).ci95
