"""The generation benchmark: the R1 length model, the projections, and the harness on the tiny model (CPU)."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from r1ft.bench import answer_lengths, generation, generation_worker
from r1ft.evaluation.engine import EngineStats, Request
from r1ft.evaluation.hf_engines import HFStats


def test_length_model_is_r1_like():
    m = answer_lengths.load()
    assert abs(m.mean(10**9, n=100_000) - 4316) < 60  # the source's overall MATH mean
    at16 = m.draw(50_000, 0, 16_384)
    assert max(at16) == 16_384 and min(at16) >= 1
    mean = sum(at16) / len(at16)
    assert 3900 < mean < 4400  # "mean about 4k, capped at the configured maximum"
    s = sorted(at16)
    median, p90 = s[len(s) // 2], s[int(0.9 * len(s))]
    assert median < 0.75 * mean and p90 > 1.8 * mean  # right-skewed with a long tail
    assert 0.01 < sum(x == 16_384 for x in at16) / len(at16) < 0.05
    assert m.draw(100, 3, 16_384) == m.draw(100, 3, 16_384) != m.draw(100, 4, 16_384)
    by_name = {s.name: s for s in m.subjects}
    assert m.right_mean(by_name["algebra"]) < m.right_mean(by_name["intermediate_algebra"])


def test_batch_projection_counts_every_batch_to_its_longest_row():
    st = HFStats(step_times=[0.01 * i for i in range(200)], first_batch_steps=200)  # 10 ms a step, flat
    reqs = [Request(f"r{i}", [1], max_new_tokens=n) for i, n in enumerate([100, 10, 300, 30])]
    rate = generation_worker.project_batches(st, reqs, batch=2)
    assert rate == pytest.approx((100 + 10 + 300 + 30) / ((100 + 300) * 0.01))


def test_engine_projection_simulates_the_schedule():
    st = EngineStats(slots=10_000, prompt_tokens=100, prefill_s=0.0, step_log=[(8, 0.01)] * 60)
    spec = {"problems": 50, "k": 4, "tiny": False, "max_new_tokens": 16_384, "seed": 0}
    lengths = answer_lengths.load().draw(200, 7, 16_384)
    rate = generation_worker.project_engine(st, spec, [20] * 8)
    # every request fits at once: the run lasts as long as its longest request, one 10 ms step a token
    assert rate == pytest.approx(sum(lengths) / ((max(lengths) - 1) * 0.01))
    one_slot = generation_worker.project_engine(EngineStats(**{**asdict(st), "slots": 1}), spec, [20] * 8)
    assert one_slot == pytest.approx(100.0, rel=0.01)  # one row at a time: 1 token per 10 ms step


def test_a_variant_that_hangs_costs_only_itself(tmp_path):
    spec = {"variant": asdict(generation.VARIANTS[1]), "timeout": 0.2, "result": str(tmp_path / "r.json")}
    out = generation.run_variant(spec, tmp_path)
    assert out["name"] == "engine" and out["error"].startswith("timed out")


@pytest.mark.slow
def test_the_benchmark_runs_on_the_tiny_model(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--tiny", "--requests", "8", "--variants", "check,engine,engine_sampled,hf64", "--baseline-seconds",
            "30", "--scibench", str(tmp_path / "none"), "--out", str(out), "--problems", "10"]  # fmt: skip
    assert generation.main(args) == 0
    report = json.loads(out.read_text())
    by = {r["name"]: r for r in report["results"]}
    assert set(by) == {"check", "engine", "engine_sampled", "hf64"}
    assert by["check"]["passed"] and by["check"]["fp32_divergence"] == [None] * 3
    for name in ("engine", "engine_sampled", "hf64"):
        r = by[name]
        assert r["completed"] == 8 and r["generated_tokens"] > 0 and r["tokens_per_s"] > 0, r
        assert r["projected_eval_s"] > 0
    assert by["hf64"]["ratio"] == pytest.approx(1.0)
    assert report["default_evaluation"]["tokens"] > 0 and report["checks_passed"] is True
    table = capsys.readouterr().out
    assert "| engine: r1ft engine, greedy |" in table and "Generation benchmark on CPU" in table
