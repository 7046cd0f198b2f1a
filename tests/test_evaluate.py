"""Evaluation: generation on the tiny model, scoring and aggregation, TensorBoard losses, the card section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1ft.chat import MATH_INSTRUCTION
from r1ft.evaluation import run as evaluate
from r1ft.evaluation.losses import loss_summary, plot_loss_curve, read_scalars
from r1ft.evaluation.run import THREE_PROMPTS, Generation, evaluate_run, scoring_items, success_indicators
from r1ft.report.card import evaluation_section as evaluation_markdown
from r1ft.settings import load_settings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def settings(**extra: str):
    env = {"R1FT_PRESET": "smoke", "R1FT_EVAL_MAX_NEW_TOKENS": "6", "R1FT_EVAL_BATCH_SIZE": "3", **extra}
    return load_settings(env, env_file=None)


def eval_examples() -> list[dict]:
    recs = [
        {"id": f"m{i}", "source": "mathcodeinstruct", "problem": f"What is {i} + {i}?\n{MATH_INSTRUCTION}",
         "gold": str(2 * i)}
        for i in range(1, 6)
    ]  # fmt: skip
    recs.append({"id": "s0", "source": "scibench", "problem": f"Energy?\n{MATH_INSTRUCTION}", "gold": "3.2"})
    recs.append({"id": "c0", "source": "chat", "problem": "Hello!", "gold": ""})  # nothing to score
    return recs


def scibench_records() -> list[dict]:
    return [
        {"problem_text": "Find the photon energy.", "answer_number": "3.2", "unit": r"$10^{-19} \mathrm{~J}$",
         "source": "atkins", "problemid": "e1.1", "problem": "(the data module's user turn)"},
        {"problem_text": "Find the pressure.", "answer_number": "50.7", "unit": r"$\mathrm{atm}$",
         "source": "atkins", "problemid": "e1.2", "problem": "(the data module's user turn)"},
        {"problem_text": "Find the luminosity.", "answer_number": "4.16", "unit": "$10^{42}$",
         "source": "class", "problemid": "3.4", "problem": "(the data module's user turn)"},
    ]  # fmt: skip


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
    write_events(run / "logs", [(s, 3.0 / s) for s in range(1, 13)], [(6, 1.3), (12, 0.8)])
    return run


# --- end to end on the tiny models -------------------------------------------------------------------------


def test_evaluate_run_on_tiny_models(tiny_pair, run_dir):
    base, merged = tiny_pair
    s = settings()
    result = evaluate_run(s, run_dir, base, merged, eval_examples(), scibench_records())

    assert result["planned"] == {"eval": 6, "scibench": 3}
    assert result["scored"] == 9
    for name in ("base", "finetuned"):
        m = result["models"][name]
        assert (m["scored"], m["planned"], m["budget_exhausted"]) == (9, 9, False)
        assert m["new_tokens"] > 0 and m["tokens_per_s"] > 0
        assert m["think"]["outputs"] == 9 + 3
    assert result["generation_tokens_per_s"] > 0 and result["seconds"] > 0
    acc = result["accuracy"]
    assert list(acc) == ["scibench-test", "eval:mathcodeinstruct", "eval:scibench", "overall"]
    assert acc["overall"]["before"]["n"] == acc["overall"]["after"]["n"] == 9
    assert acc["scibench-test"]["after"]["n"] == 3
    lo, hi = acc["overall"]["before"]["ci95"]
    assert 0 <= lo <= hi <= 1
    assert set(result["scibench_by_textbook"]) == {"atkins", "class"}
    assert [p["prompt"] for p in result["prompts"]] == list(THREE_PROMPTS)

    # losses and indicators come from the hand-made event file
    assert result["losses"]["eval_last"] == pytest.approx(0.8)
    indicators = {i["name"]: i["passed"] for i in result["indicators"]}
    assert indicators["Training loss falls"] is True
    assert indicators["Eval loss < 1.0 (perplexity < 2.72)"] is True

    # the files
    out = run_dir / "eval"
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(result))
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * (3 + 9)
    assert {r["model"] for r in rows} == {"base", "finetuned"}
    assert all("correct" in r for r in rows if r["kind"] == "scored")
    assert (out / "loss_curve.png").read_bytes()[:8] == PNG_MAGIC
    assert result["loss_curve"] == "eval/loss_curve.png"

    md = evaluation_markdown(result)
    assert "| Problems | Before (base) | After (fine-tune) |" in md
    assert "SciBench test problems" in md and "/9; 95% CI" in md
    assert "![Training and eval loss](eval/loss_curve.png)" in md
    assert all(f"**{p}**" in md for p in THREE_PROMPTS)
    assert md.count("<details>") == 6
    assert "✅ pass" in md


def test_time_budget_stops_early(tiny_pair, run_dir, monkeypatch):
    """Each generate() call costs 0.3 s of budget clock: the base model gets 0.5 s, so one batch."""
    base, merged = tiny_pair
    now = [0.0]
    real_generate = evaluate.generate

    def timed_generate(*args, **kwargs):
        now[0] += 0.3
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(evaluate, "_clock", lambda: now[0])
    monkeypatch.setattr(evaluate, "generate", timed_generate)
    result = evaluate_run(
        settings(R1FT_EVAL_TIME_BUDGET_S="1"), run_dir, base, merged, eval_examples(), scibench_records()
    )

    b, f = result["models"]["base"], result["models"]["finetuned"]
    assert b["budget_exhausted"] and (b["scored"], b["planned"]) == (3, 9)
    assert (f["planned"], f["scored"]) == (3, 3)  # the fine-tune answers what the base got through
    assert result["scored"] == 3 and result["accuracy"]["overall"]["after"]["n"] == 3
    assert "The time budget (1 s) ran out: the base model scored 3 of 9 problems." in evaluation_markdown(
        result
    )


# --- scoring and aggregation with scripted outputs ---------------------------------------------------------


def scripted(answers: dict[str, str]):
    """A stand-in for generate(): an R1-shaped answer looked up by a word of the problem."""

    def fake_generate(model, tokenizer, problems, max_new_tokens, sample=False, max_time=None):
        out = []
        for p in problems:
            answer = next((a for key, a in answers.items() if key in p), "0")
            out.append(Generation(f"Let me think.\n</think>\n\nSo \\boxed{{{answer}}}", 12, True))
        return out

    return fake_generate


def test_scores_and_indicators_from_scripted_answers(tmp_path, monkeypatch):
    right = {f"{i} + {i}": str(2 * i) for i in range(1, 6)}
    right |= {"Energy": "3.2", "photon": r"3.2 \times 10^{-19}", "pressure": "50.7", "luminosity": "4.16"}
    models = {"base": scripted({}), "finetuned": scripted(right)}
    current = {}

    def fake_load(path):
        current["generate"] = models["base" if path.name == "base" else "finetuned"]
        return object(), object()

    monkeypatch.setattr(evaluate, "load_for_generation", fake_load)
    monkeypatch.setattr(evaluate, "generate", lambda *a, **k: current["generate"](*a, **k))
    result = evaluate_run(
        settings(), tmp_path / "run", Path("base"), Path("merged"), eval_examples(), scibench_records()
    )

    acc = result["accuracy"]
    assert acc["overall"]["before"]["correct"] == 0 and acc["overall"]["after"]["correct"] == 9
    assert acc["scibench-test"]["after"]["accuracy"] == 1.0
    assert result["scibench_lenient"]["after"]["correct"] == 3
    assert acc["overall"]["after"]["ci95"][0] > 0.6
    indicators = {i["name"]: i for i in result["indicators"]}
    assert indicators["Accuracy after > before"]["passed"] is True
    assert indicators["Accuracy after > before"]["detail"] == "9/9 vs 0/9"
    assert indicators["Answers in <think> format (every finished answer closes </think>)"]["passed"] is True
    # no logs/: losses are not measured, and no plot is claimed
    assert indicators["Training loss falls"]["passed"] is None
    assert result["loss_curve"] is None and not (tmp_path / "run" / "eval" / "loss_curve.png").exists()
    md = evaluation_markdown(result)
    assert "100.0% (9/9; 95% CI" in md and "– not measured" in md and "loss_curve.png" not in md


# --- pieces ---------------------------------------------------------------------------------------------------


def test_scoring_items_are_a_seeded_fair_sample():
    s = settings(R1FT_EVAL_SAMPLES="4", R1FT_EVAL_SCIBENCH_SAMPLES="2")
    items = scoring_items(s, eval_examples(), scibench_records())
    assert items == scoring_items(s, eval_examples(), scibench_records())
    assert sum(i.group == "scibench-test" for i in items) == 2 and len(items) == 6
    assert all(i.gold for i in items if i.group != "scibench-test")  # empty golds are never scored
    photon = next(i for i in scoring_items(settings(), [], scibench_records()) if "photon" in i.problem)
    # SciBench's prompt: the power of ten moves out of the unit, the model answers the absolute value
    assert (
        photon.problem
        == f"Find the photon energy. The unit of the answer is $\\mathrm{{~J}}$.\n{MATH_INSTRUCTION}"
    )
    assert photon.id == "scibench/atkins/e1.1"


def test_generate_prompts_have_one_bos_left_padding_and_the_think_opening(tiny_pair):
    model, tokenizer = evaluate.load_for_generation(tiny_pair[0])
    seen = {}
    real = model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    model.generate = spy
    gens = evaluate.generate(model, tokenizer, ["Hi", "A much longer question about physics?"], 4)
    ids, mask = seen["input_ids"].tolist(), seen["attention_mask"].tolist()
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    assert mask[0][0] == 0 and ids[0][0] == pad  # the short prompt is padded on the left
    assert mask[0][-1] == mask[1][-1] == 1
    for row, m in zip(ids, mask, strict=True):
        real_ids = [t for t, keep in zip(row, m, strict=True) if keep]
        assert real_ids[0] == bos and real_ids.count(bos) == 1
        assert tokenizer.decode(real_ids).endswith("<｜Assistant｜><think>\n")
    assert not seen["generation_config"].do_sample
    assert len(gens) == 2 and all(g.new_tokens == 4 and not g.finished for g in gens)


def test_read_scalars_merges_files_and_keeps_the_latest_value(tmp_path):
    write_events(tmp_path / "logs", [(1, 2.0), (2, 1.5), (3, 1.4)], [])
    write_events(tmp_path / "logs" / "resumed", [(3, 1.2), (4, 1.0)], [(4, 0.9)])  # resumed after step 2
    scalars = read_scalars(tmp_path / "logs")
    assert scalars["train/loss"] == [(1, 2.0), (2, 1.5), (3, pytest.approx(1.2)), (4, 1.0)]
    assert scalars["eval/loss"] == [(4, pytest.approx(0.9))]
    assert plot_loss_curve(scalars, tmp_path / "curve.png").read_bytes()[:8] == PNG_MAGIC
    assert plot_loss_curve({}, tmp_path / "none.png") is None


def _indicators(train, evals, think_rate, before, after):
    losses = loss_summary({"train/loss": list(enumerate(train)), "eval/loss": list(enumerate(evals))})
    think = {"finished_closed_rate": think_rate, "finished": 3, "closed_rate": think_rate, "outputs": 3,
             "truncated": 0, "sampled_closed_rate": think_rate}  # fmt: skip
    overall = {"before": {"correct": before, "n": 10}, "after": {"correct": after, "n": 10}}
    return [i["passed"] for i in success_indicators(losses, think, overall)]


@pytest.mark.parametrize(
    ("train", "evals", "think_rate", "before", "after", "expected"),
    [
        ([2.0, 1.0, 0.5], [0.9], 1.0, 2, 5, [True, True, True, True]),
        ([0.5, 1.0, 2.0], [1.1], 2 / 3, 5, 5, [False, False, False, False]),
        ([1.0], [], None, 0, 0, [None, None, None, False]),
    ],
)
def test_success_indicators(train, evals, think_rate, before, after, expected):
    assert _indicators(train, evals, think_rate, before, after) == expected


def test_loss_summary_perplexity():
    losses = loss_summary({"train/loss": [(i, 3.0 - 0.1 * i) for i in range(20)], "eval/loss": [(10, 1.0)]})
    assert losses["train_first"] == pytest.approx(2.95) and losses["train_last"] == pytest.approx(1.15)
    assert losses["perplexity"] == pytest.approx(2.71828, rel=1e-4)


def test_markdown_fences_survive_backticks_in_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "load_for_generation", lambda path: (object(), object()))
    monkeypatch.setattr(evaluate, "generate", lambda m, t, problems, *a, **k: [
        Generation("```python\nprint(1)\n```\n</think>\n\n\\boxed{1}", 9, True) for _ in problems])  # fmt: skip
    result = evaluate_run(settings(), tmp_path / "run", Path("b"), Path("m"), [], [])
    md = evaluation_markdown(result)
    assert "````text\n```python\nprint(1)\n```" in md
    assert result["scored"] == 0 and result["accuracy"] == {}


def test_accuracy_indicator_flags_a_difference_within_noise():
    losses = loss_summary({})
    think = {"finished_closed_rate": None, "finished": 0, "closed_rate": None, "outputs": 0, "truncated": 0,
             "sampled_closed_rate": None}  # fmt: skip
    close = success_indicators(
        losses, think, {"before": {"correct": 5, "n": 20}, "after": {"correct": 7, "n": 20}}
    )
    far = success_indicators(
        losses, think, {"before": {"correct": 1, "n": 50}, "after": {"correct": 30, "n": 50}}
    )
    assert close[3]["passed"] is True and "may be noise" in close[3]["detail"]
    assert far[3]["passed"] is True and far[3]["detail"] == "30/50 vs 1/50"
