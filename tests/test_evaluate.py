"""Evaluation: the protocol (problems, order, seeds, the budget's prefix), the whole before/after run on tiny
models through the engine, scoring with scripted answers, the scored-weights check, the indicators and the
card section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1ft.chat import MATH_INSTRUCTION
from r1ft.evaluation import run as evaluate
from r1ft.evaluation.generation_types import Completion, EngineStats
from r1ft.evaluation.indicators import success_indicators
from r1ft.evaluation.losses import loss_summary, plot_loss_curve, read_scalars
from r1ft.evaluation.protocol import (
    THREE_PROMPTS,
    answer_key,
    answer_seed,
    protocol_for,
    scored_prefix,
    select_problems,
)
from r1ft.evaluation.results import EvaluationRecord
from r1ft.report.card_evaluation import evaluation_section
from r1ft.settings_load import load_settings
from r1ft.tasks import heldout, math500, scibench
from r1ft.tasks.problem import Benchmark, Problem, Verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def settings(**extra: str):
    env = {"R1FT_PRESET": "smoke", "R1FT_EVAL_MAX_NEW_TOKENS": "24", **extra}
    return load_settings(env, env_file=None)


def eval_examples() -> list[dict]:
    recs = [
        {"id": f"m{i}", "source": "mathcodeinstruct", "problem": f"What is {i} + {i}?\n{MATH_INSTRUCTION}",
         "gold": str(2 * i)}
        for i in range(1, 6)
    ]  # fmt: skip
    recs.append({"id": "c0", "source": "chat", "problem": "Hello!", "gold": ""})  # nothing to score
    return recs


def scibench_records() -> list[dict]:
    return [
        {"problem_text": "Find the photon energy.", "answer_number": "3.2", "unit": r"$10^{-19} \mathrm{~J}$",
         "source": "atkins", "problemid": "e1.1"},
        {"problem_text": "Find the pressure.", "answer_number": "50.7", "unit": r"$\mathrm{atm}$",
         "source": "atkins", "problemid": "e1.2"},
        {"problem_text": "Find the luminosity.", "answer_number": "4.16", "unit": "$10^{42}$",
         "source": "class", "problemid": "3.4"},
    ]  # fmt: skip


def benchmarks(tmp_path: Path) -> list[Benchmark]:
    return [
        math500.load("builtin", "main", tmp_path),
        scibench.test_benchmark(scibench_records()),
        heldout.heldout_benchmark(eval_examples()),
    ]


def write_events(log_dir: Path, train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> None:
    """A real TensorBoard event file with the Trainer's tags."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    for step, value in train:
        writer.add_scalar("train/loss", value, step)
    for step, value in evals:
        writer.add_scalar("eval/loss", value, step)
    writer.close()


@pytest.fixture(scope="module")
def tiny_pair(tiny_base, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny base and a second tiny model standing in for the merged fine-tune."""
    from r1ft.model.tiny import build_tiny_base

    return tiny_base, build_tiny_base(tmp_path_factory.mktemp("merged") / "merged", seed=1)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    write_events(run / "logs", [(s, 3.0 / s) for s in range(1, 13)], [(0, 2.0), (6, 1.3), (12, 0.8)])
    return run


# --- the protocol --------------------------------------------------------------------------------------


def test_protocol_defaults_are_the_model_cards():
    p = protocol_for(load_settings({}, env_file=None))
    assert (p.temperature, p.top_p, p.samples, p.max_new_tokens) == (0.6, 0.95, 4, 16384)
    assert p.sizes == {"math500": 150, "scibench": 150, "heldout": 50} and p.budget_s == 900


def test_problems_are_a_seeded_sample_of_every_benchmark_in_one_shared_order(tmp_path):
    marks = benchmarks(tmp_path)
    sizes = {"math500": 5, "scibench": 2, "heldout": 3}
    order = select_problems(marks, sizes, seed=7)
    assert order == select_problems(marks, sizes, seed=7)  # the same for both models and every rerun
    assert [p.benchmark for p in order].count("math500") == 5 and len(order) == 10
    assert order != select_problems(marks, sizes, seed=8)
    assert all(p.gold for p in order)  # the held-out example without a gold is never scored
    # the sample of one benchmark does not depend on the size of another
    other = select_problems(marks, {**sizes, "scibench": 3}, seed=7)
    assert {p.id for p in order if p.benchmark == "math500"} == {
        p.id for p in other if p.benchmark == "math500"
    }


def test_answer_seeds_are_the_same_for_both_models_and_differ_per_sample():
    assert answer_seed(1, "test/a.json", 0) == answer_seed(1, "test/a.json", 0)
    assert len({answer_seed(1, "test/a.json", j) for j in range(4)}) == 4
    assert answer_seed(1, "x", 0) != answer_seed(2, "x", 0)


def test_the_budget_scores_whole_problems_of_a_prefix():
    problems = [Problem(f"p{i}", "math500", "q", "1") for i in range(4)]
    done = {
        answer_key("p0", 0),
        answer_key("p0", 1),
        answer_key("p1", 0),
        answer_key("p2", 0),
        answer_key("p2", 1),
    }
    # p1 lacks a sample, so p2 (complete) is not scored either: a prefix of the order stays a fair sample
    assert scored_prefix(problems, done, k=2) == 1
    assert scored_prefix(problems, done | {answer_key("p1", 1)}, k=2) == 3


# --- the whole run on tiny models -------------------------------------------------------------------------


def test_evaluate_run_on_tiny_models(tiny_pair, run_dir, tmp_path):
    base, merged = tiny_pair
    s = settings(R1FT_EVAL_MATH500_SAMPLES="4", R1FT_EVAL_SCIBENCH_SAMPLES="2", R1FT_EVAL_SAMPLES="2")
    record = evaluate.evaluate_run(s, run_dir, base, evaluate.FineTune(merged=merged), benchmarks(tmp_path),
                                   eval_loss_base=2.0)  # fmt: skip
    assert record.planned == {"math500": 4, "scibench": 2, "heldout": 2}
    assert record.compared_problems == 8
    for name in ("base", "finetuned"):
        m = record.models[name]
        assert (m.planned_problems, m.scored_problems, m.budget_exhausted) == (8, 8, False)
        assert m.generation.new_tokens > 0 and m.generation.tokens_per_s > 0 and m.generation.slots > 0
        for bench in ("math500", "scibench", "scibench_lenient", "heldout", "public"):
            summary = record.results[name][bench]
            assert summary["samples_per_problem"] == 2 and 0 <= summary["pass_at_1"] <= 1
            for key in ("ci95", "truncated_fraction", "mean_new_tokens", "median_new_tokens",
                        "finished_accuracy", "think_closed_fraction", "code_block_fraction"):  # fmt: skip
                assert key in summary
    for bench in ("math500", "scibench", "heldout", "public"):
        c = record.comparison[bench]
        assert {"difference", "ci95", "paired_test", "verdict"} <= set(c)
        assert {"method", "statistic", "p_value"} <= set(c["paired_test"])
    assert [p.prompt for p in record.prompts] == list(THREE_PROMPTS)
    assert all(p.base and p.finetuned for p in record.prompts)
    assert record.losses["eval_last"] == pytest.approx(0.8)
    indicators = {i.name: i for i in record.indicators}
    assert indicators["Training loss falls"].passed is True
    assert "the base model at step 0: 2.000" in indicators["Eval loss < 1.0 (perplexity < 2.72)"].detail
    out = run_dir / "eval"
    assert EvaluationRecord.model_validate_json((out / "results.json").read_text()) == record
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    scored = [r for r in rows if r["kind"] == "scored" and r["benchmark"] != "scibench_lenient"]
    assert len(scored) == 2 * 8 * 2 and {r["model"] for r in rows} == {"base", "finetuned"}
    assert (out / "loss_curve.png").read_bytes()[:8] == PNG_MAGIC


def test_both_models_draw_the_same_noise(tiny_base, run_dir, tmp_path):
    """The same model as 'before' and 'after' answers every question identically: same problems, same seeds."""
    s = settings(R1FT_EVAL_MATH500_SAMPLES="3", R1FT_EVAL_SCIBENCH_SAMPLES="0", R1FT_EVAL_SAMPLES="0")
    record = evaluate.evaluate_run(s, run_dir, tiny_base, evaluate.FineTune(merged=tiny_base),
                                   benchmarks(tmp_path))  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    texts = {
        (r["model"], r.get("problem_id"), r.get("sample")): r["text"] for r in rows if r["kind"] == "scored"
    }
    for (model, pid, j), text in texts.items():
        if model == "base":
            assert texts[("finetuned", pid, j)] == text
    assert record.comparison["math500"]["difference"] == 0.0


def test_time_budget_scores_a_prefix_and_says_so(tiny_pair, run_dir, tmp_path, monkeypatch):
    base, merged = tiny_pair
    clock = {"t": 0.0}

    def tick() -> float:  # every look at the clock (once a decode step) is 10 ms later
        clock["t"] += 0.01
        return clock["t"]

    monkeypatch.setattr(evaluate, "_clock", tick)
    s = settings(R1FT_EVAL_MATH500_SAMPLES="6", R1FT_EVAL_SCIBENCH_SAMPLES="0", R1FT_EVAL_SAMPLES="0",
                 R1FT_EVAL_TIME_BUDGET_S="2", R1FT_EVAL_BATCH_SIZE="2")  # fmt: skip
    record = evaluate.evaluate_run(s, run_dir, base, evaluate.FineTune(merged=merged), benchmarks(tmp_path))
    b, f = record.models["base"], record.models["finetuned"]
    assert b.budget_exhausted and 0 < b.scored_problems < 6
    assert f.planned_problems == b.scored_problems
    assert record.compared_problems == min(b.scored_problems, f.scored_problems)
    assert record.results["base"]["math500"]["n_problems"] == record.compared_problems
    md = evaluation_section(record)
    assert f"the time budget ({b.budget_s:.0f} s) ran out first" in md


def test_a_stop_request_ends_generation_and_is_recorded(tiny_pair, run_dir, tmp_path):
    base, merged = tiny_pair
    s = settings(R1FT_EVAL_MATH500_SAMPLES="4", R1FT_EVAL_SCIBENCH_SAMPLES="0", R1FT_EVAL_SAMPLES="0")
    record = evaluate.evaluate_run(s, run_dir, base, evaluate.FineTune(merged=merged), benchmarks(tmp_path),
                                   stop=lambda: "SIGTERM")  # fmt: skip
    assert record.models["base"].interrupted == "SIGTERM"
    assert record.models["base"].scored_problems == 0 and record.compared_problems == 0
    assert "A stop request (SIGTERM) ended it early." in evaluation_section(record)


def test_streamed_shards_are_recomputed_and_checked_against_the_published_ones(tiny_base, tmp_path, run_dir):
    """The disk plan streamed merged/ away: the evaluation merges again in memory and proves it is the
    published model by every shard's sha256."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1ft.export.merge import merge_to_dir

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.save_pretrained(adapter)
    info = merge_to_dir(tiny_base, None, adapter, "none", tokenizer, tmp_path / "merged")
    s = settings(R1FT_EVAL_MATH500_SAMPLES="1", R1FT_EVAL_SCIBENCH_SAMPLES="0", R1FT_EVAL_SAMPLES="0")
    good = evaluate.FineTune(base=tiny_base, adapter=adapter, published=info["sha256"])
    record = evaluate.evaluate_run(s, run_dir, tiny_base, good, benchmarks(tmp_path))
    assert (record.scored_model.source, record.scored_model.matches_published) == ("recomputed merge", True)
    assert "sha256 of every shard matches the published ones" in evaluation_section(record)
    wrong = evaluate.FineTune(
        base=tiny_base, adapter=adapter, published=dict.fromkeys(info["sha256"], "0" * 64)
    )
    assert (
        evaluate.evaluate_run(
            s, run_dir, tiny_base, wrong, benchmarks(tmp_path)
        ).scored_model.matches_published
        is False
    )


# --- scoring with scripted answers ----------------------------------------------------------------------


def test_scoring_from_scripted_answers(tmp_path, run_dir, monkeypatch):
    """Right answers score right and wrong ones wrong, on every benchmark, paired by problem."""
    marks = benchmarks(tmp_path)
    gold = {p.prompt: p.gold for b in marks for p in b.problems}
    sci_answer = {"photon": r"3.2 \times 10^{-19}", "pressure": "50.7", "luminosity": "4.16"}
    current = {}

    def fake_load(path):
        current["right"] = path != Path("base")
        return object(), type("Tok", (), {"decode": lambda self, ids, skip_special_tokens: current["text"]})()

    def fake_generate(model, tokenizer, problems, protocol, budget_s, stop):
        texts = {}
        current["by_key"] = {}
        for p in problems:
            if current["right"]:
                ans = next((a for k, a in sci_answer.items() if k in p.prompt), gold[p.prompt])
            else:
                ans = "-1"
            for j in range(protocol.samples):
                key = answer_key(p.id, j)
                texts[key] = Completion(key, [1], True, 10)
                current["by_key"][key] = f"Let me think.\n</think>\n\nSo \\boxed{{{ans}}}"
        return texts, EngineStats(generated_tokens=10 * len(texts), seconds=1.0), ""

    def decode_all(run_model):
        def wrapped(load, problems, protocol, budget_s, stop, path):
            out = run_model(load, problems, protocol, budget_s, stop, path)
            out.decoded = {k: current["by_key"].get(k, "") for k in out.texts}
            return out

        return wrapped

    monkeypatch.setattr(evaluate.models, "load_model", fake_load)
    monkeypatch.setattr(evaluate.models, "release", lambda: None)
    monkeypatch.setattr(evaluate, "generate_answers", fake_generate)
    monkeypatch.setattr(evaluate, "run_model", decode_all(evaluate.run_model))
    current["text"] = ""
    s = settings(R1FT_EVAL_MATH500_SAMPLES="6", R1FT_EVAL_SCIBENCH_SAMPLES="3", R1FT_EVAL_SAMPLES="3",
                 R1FT_EVAL_SAMPLES_PER_PROBLEM="1")  # fmt: skip
    record = evaluate.evaluate_run(s, run_dir, Path("base"), evaluate.FineTune(merged=Path("merged")), marks)
    for bench in ("math500", "scibench", "heldout"):
        assert record.results["base"][bench]["pass_at_1"] == 0.0
        assert record.results["finetuned"][bench]["pass_at_1"] == 1.0, bench
    public = record.comparison["public"]
    assert public["n_problems"] == 9 and public["paired_test"]["method"] == "mcnemar-exact"
    assert public["verdict"] == "better" and public["paired_test"]["p_value"] < 0.05
    better = {i.name: i for i in record.indicators}[
        "Better than the base (MATH-500 and SciBench, paired test at 5%)"
    ]
    assert better.passed is True and "better" in better.detail


def test_scibench_scoring_reads_after_the_think_block_and_truncated_is_wrong():
    marks = scibench.test_benchmark(scibench_records())
    by_id = {p.id: p for p in marks.problems}
    photon = "scibench/atkins/e1.1"
    ok = "</think>\n\nThe energy is \\boxed{3.2 \\times 10^{-19}}."
    cases = [(ok, True, True), ("\\boxed{3.2 \\times 10^{-19}}\n</think>\n\nI am not sure.", True, False),
             (ok, False, False)]  # fmt: skip
    for text, finished, right in cases:
        (v,) = scibench.score_all(by_id, [scibench.Answer(photon, 0, "3.2", text, finished, 40)])
        assert v.correct is right and v.truncated is (not finished)


# --- losses, indicators, the card -----------------------------------------------------------------------


def test_read_scalars_merges_files_and_keeps_the_latest_value(tmp_path):
    write_events(tmp_path / "logs" / "a", [(1, 3.0), (2, 2.0)], [(2, 2.5)])
    write_events(tmp_path / "logs" / "b", [(2, 1.9), (3, 1.5)], [])
    scalars = read_scalars(tmp_path / "logs")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([3.0, 1.9, 1.5])  # step 2: the newer file's
    assert scalars["eval/loss"] == [(2, 2.5)]
    assert plot_loss_curve(scalars, tmp_path / "curve.png").read_bytes()[:8] == PNG_MAGIC
    assert plot_loss_curve({}, tmp_path / "none.png") is None


def verdicts(correct: list[bool], finished: bool = True, closed: bool = True) -> list[Verdict]:
    return [Verdict(f"p{i}", 0, c, None, finished, closed, False, "boxed", 10) for i, c in enumerate(correct)]


def test_indicators_read_the_test_not_the_raw_difference():
    losses = loss_summary({"train/loss": [(i, 3.0 - 0.1 * i) for i in range(20)], "eval/loss": [(10, 0.9)]})
    noisy = {"n_problems": 10, "before": 0.5, "after": 0.6, "difference": 0.1, "ci95": [-0.2, 0.4],
             "paired_test": {"method": "mcnemar-exact", "statistic": 1, "p_value": 0.6},
             "verdict": "no significant difference"}  # fmt: skip
    ind = {i.name: i for i in success_indicators(losses, 1.4, verdicts([True] * 5), noisy)}
    assert ind["Training loss falls"].passed and ind["Eval loss < 1.0 (perplexity < 2.72)"].passed
    better = ind["Better than the base (MATH-500 and SciBench, paired test at 5%)"]
    assert better.passed is False and "no significant difference" in better.detail  # a gain within noise
    assert ind["Answers in <think> format (every finished answer closes </think>)"].passed
    unclosed = success_indicators(losses, None, verdicts([True], closed=False), None)
    assert unclosed[2].passed is False and unclosed[3].passed is None
    assert "not measured" in unclosed[1].detail


def test_loss_summary_perplexity():
    losses = loss_summary({"train/loss": [(i, 3.0 - 0.1 * i) for i in range(20)], "eval/loss": [(10, 1.0)]})
    assert losses["perplexity"] == pytest.approx(2.718, rel=1e-3)
    assert loss_summary({})["train_points"] == 0


def test_the_card_carries_every_benchmark_row_and_survives_backticks(tiny_pair, run_dir, tmp_path):
    base, merged = tiny_pair
    s = settings(R1FT_EVAL_MATH500_SAMPLES="2", R1FT_EVAL_SCIBENCH_SAMPLES="2", R1FT_EVAL_SAMPLES="2")
    record = evaluate.evaluate_run(s, run_dir, base, evaluate.FineTune(merged=merged), benchmarks(tmp_path))
    record.prompts[0].base = "```python\nprint(1)\n``` and ```` four"
    md = evaluation_section(record)
    for needle in ("MATH-500 (math-verify)", "SciBench test set", "SciBench, lenient", "Held-out split",
                   "Difference [95% CI]", "p-value", "Truncated", "Mean new tokens", "Harness check",
                   "DeepSeek reports 83.9%", "**Protocol**", "`````text"):  # fmt: skip
        assert needle in md, needle
