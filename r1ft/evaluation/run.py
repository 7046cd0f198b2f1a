"""Evaluation: did the fine-tune make the model better? Before (base) and after (merged), with numbers.

- Accuracy on up to `eval_samples` held-out eval examples (final answer vs `gold`, `answers.answers_match`)
  and on up to `eval_scibench_samples` SciBench test problems (SciBench's own scoring,
  `answers.scibench_correct`), per source, with counts and Wilson 95% intervals. Both models are scored
  on the same problems (a seeded sample, shuffled so that a run cut short by the time budget is still a
  fair sample of every source).
- Scoring uses greedy decoding: deterministic, so the before/after difference is the models' and not
  sampling noise, and one pass per problem suffices. DeepSeek recommends temperature 0.6 because greedy
  decoding of R1 models sometimes loops until the length limit; that costs both models alike (it shows
  as truncated outputs) and lowers absolute scores against DeepSeek's sampled pass@1 numbers.
- The original guide's three test prompts are answered by both models the way users will run the model:
  sampled at the model's temperature 0.6 / top_p 0.95, seeded with `settings.seed`.
- Generation is batched (`eval_batch_size`, left padding, KV cache) in bf16 on a CUDA GPU, fp32 on CPU.
  The time budget `eval_time_budget_s` bounds the scored generation: half for the base model, the rest
  for the fine-tune over the problems the base model got through; a batch that would not fit is not
  started, and one cut by the deadline is dropped (a truncated answer is not a wrong one).
- Success indicators of the original guide (train loss falls, eval loss < 1.0 i.e. perplexity < e,
  answers in `<think>` format, accuracy after > before) from the TensorBoard events in `run_dir/logs` and
  the accuracies; loss curves as `eval/loss_curve.png`.

Outputs: `run_dir/eval/results.json` (the dict `evaluate_run` returns), `run_dir/eval/samples.jsonl`
(every generation), `run_dir/eval/loss_curve.png`. The model card renders the results
(`r1ft.report.card`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1ft.chat import user_message
from r1ft.evaluation.generate import (
    SAMPLING,
    Generation,
    device_and_dtype,
    generate,
    load_for_generation,
    release_memory,
)
from r1ft.evaluation.losses import EVAL_LOSS_TARGET, loss_summary, plot_loss_curve, read_scalars
from r1ft.tasks import scibench
from r1ft.tasks.answers import answers_match, extract_answer, wilson_interval
from r1ft.tasks.scibench import (
    scibench_boxed,
    scibench_correct,
    scibench_correct_lenient,
)

log = logging.getLogger(__name__)

THREE_PROMPTS = (
    "Solve for x: 3x + 5 = 20",
    "What is the derivative of f(x) = x^3 + 2x^2 - 5x + 3?",
    "Calculate the force required to accelerate a 10 kg object at 5 m/s^2.",
)
EVAL_DIR = "eval"
LOSS_CURVE = f"{EVAL_DIR}/loss_curve.png"
SCIBENCH_GROUP = "scibench-test"
MODELS = ("base", "finetuned")

_clock = time.monotonic  # the budget's clock (tests replace it)


# --- what gets scored --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One scored problem: the user turn sent to the model and what its answer is checked against."""

    id: str
    group: str  # "eval:<source>" or "scibench-test"
    problem: str
    gold: str = ""
    answer_number: str = ""
    unit: str = ""
    textbook: str = ""


def scoring_items(s, eval_examples: list[dict], scibench_test: list[dict]) -> list[Item]:
    """A seeded sample of up to `eval_samples` scorable eval examples and `eval_scibench_samples` SciBench
    test problems, shuffled together (so a budget cut leaves a fair sample of both)."""
    rng = random.Random(s.seed)
    scorable = [r for r in eval_examples if str(r.get("gold", "")).strip()]
    chosen = rng.sample(scorable, min(s.eval_samples, len(scorable)))
    items = [
        Item(
            id=str(r.get("id", i)),
            group=f"eval:{r.get('source', 'unknown')}",
            problem=r["problem"],
            gold=r["gold"],
        )
        for i, r in enumerate(chosen)
    ]
    for i, r in enumerate(rng.sample(scibench_test, min(s.eval_scibench_samples, len(scibench_test)))):
        items.append(
            Item(
                id=f"scibench/{r.get('source', '').strip()}/{str(r.get('problemid', i)).strip()}",
                group=SCIBENCH_GROUP,
                problem=scibench.user_turn(r["problem_text"], str(r.get("unit", ""))),
                answer_number=str(r["answer_number"]),
                unit=str(r.get("unit", "")).strip(),
                textbook=str(r.get("source", "")).strip(),
            )
        )
    rng.shuffle(items)
    return items


def score_item(item: Item, text: str) -> dict[str, Any]:
    """The verdict on one generation: extracted answer, correct (and SciBench's lenient verdict)."""
    extraction = extract_answer(text)
    if item.group == SCIBENCH_GROUP:
        return {
            "extracted": scibench_boxed(text),
            "method": "scibench-boxed",
            "correct": scibench_correct(text, item.answer_number, item.unit),
            "correct_lenient": scibench_correct_lenient(text, item.answer_number, item.unit),
        }
    rel_tol = 0.05 if item.group == "eval:scibench" else 1e-4  # SciBench golds are rounded numbers
    return {
        "extracted": extraction.answer,
        "method": extraction.method,
        "correct": answers_match(extraction.answer, item.gold, rel_tol=rel_tol),
    }


@dataclass
class PhaseStats:
    """How one model's scored generation went."""

    scored: int = 0
    planned: int = 0
    budget_s: float = 0.0
    budget_exhausted: bool = False
    generation_s: float = 0.0
    new_tokens: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.generation_s if self.generation_s > 0 else 0.0


def generate_within_budget(
    model, tokenizer, items: list[Item], s, budget_s: float
) -> tuple[list[Generation], PhaseStats]:
    """Generations for a prefix of `items`, batch by batch, within `budget_s` seconds of generation.

    A batch is started only if the remaining budget covers the previous batch's duration; a batch the
    deadline cuts is dropped. Returns the generations (in item order) and the phase's numbers.
    """
    stats = PhaseStats(planned=len(items), budget_s=budget_s)
    gens: list[Generation] = []
    start, last_batch_s = _clock(), 0.0
    for i in range(0, len(items), s.eval_batch_size):
        remaining = budget_s - (_clock() - start)
        if remaining <= 0 or last_batch_s > remaining:
            stats.budget_exhausted = True
            break
        t0 = _clock()
        batch = generate(model, tokenizer, [it.problem for it in items[i : i + s.eval_batch_size]],
                         s.eval_max_new_tokens, max_time=remaining)  # fmt: skip
        last_batch_s = _clock() - t0
        if _clock() - start > budget_s:
            stats.budget_exhausted = True
            break
        gens += batch
        stats.generation_s += last_batch_s
        stats.new_tokens += sum(g.new_tokens for g in batch)
        log.info("eval: %d/%d generated (%.0f tokens/s)", len(gens), len(items), stats.tokens_per_s)
    stats.scored = len(gens)
    return gens, stats


def sample_prompts(model, tokenizer, s) -> list[Generation]:
    """The three test prompts, sampled at temperature 0.6 / top_p 0.95, seeded with `s.seed`."""
    import torch

    torch.manual_seed(s.seed)
    return generate(
        model, tokenizer, [user_message(p) for p in THREE_PROMPTS], s.eval_max_new_tokens, sample=True
    )


def run_model(path: Path, items: list[Item], s, budget_s: float) -> dict[str, Any]:
    """Load one model, answer the three prompts and the scored items within the budget, free it."""
    t0 = _clock()
    model, tokenizer = load_for_generation(path)
    try:
        prompts = sample_prompts(model, tokenizer, s)
        gens, stats = generate_within_budget(model, tokenizer, items, s, budget_s)
    finally:
        del model  # the only reference: the next model loads into the freed memory
        release_memory()
    return {"path": str(path), "prompts": prompts, "gens": gens, "stats": stats, "seconds": _clock() - t0}


# --- accuracy -----------------------------------------------------------------------------------------


def proportion(correct: int, n: int) -> dict[str, Any]:
    """Count, accuracy and Wilson 95% interval."""
    lo, hi = wilson_interval(correct, n)
    return {"correct": correct, "n": n, "accuracy": correct / n if n else None, "ci95": [lo, hi]}


def accuracy_table(items: list[Item], verdicts: dict[str, list[dict]], key: str = "group") -> dict[str, Any]:
    """Per group (and overall): before and after on the problems both models got through."""
    n = min(len(v) for v in verdicts.values())
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items[:n]):
        groups[getattr(item, key)].append(i)
    ordered = sorted(groups, key=lambda g: (g != SCIBENCH_GROUP, g))  # SciBench first, overall last
    if key == "group" and n:
        groups["overall"] = list(range(n))
        ordered.append("overall")
    return {
        name: {label: proportion(sum(verdicts[m][i]["correct"] for i in groups[name]), len(groups[name]))
               for label, m in zip(("before", "after"), MODELS, strict=True)}
        for name in ordered
    }  # fmt: skip


def think_stats(prompts: list[Generation], gens: list[Generation]) -> dict[str, Any]:
    """How often outputs close their `</think>`: sampled prompts, all outputs, outputs that ended (EOS)."""
    every = prompts + gens
    finished = [g for g in every if g.finished]

    def rate(gs: list[Generation]) -> float | None:
        return sum("</think>" in g.text for g in gs) / len(gs) if gs else None

    return {
        "sampled_closed_rate": rate(prompts),
        "closed_rate": rate(every),
        "finished": len(finished),
        "outputs": len(every),
        "finished_closed_rate": rate(finished),
        "truncated": len(every) - len(finished),
    }


# --- success indicators -----------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _accuracy_detail(before: dict, after: dict) -> str:
    text = f"{after['correct']}/{after['n']} vs {before['correct']}/{before['n']}"
    b_lo, b_hi = wilson_interval(before["correct"], before["n"])
    a_lo, a_hi = wilson_interval(after["correct"], after["n"])
    if after["correct"] != before["correct"] and a_lo <= b_hi and b_lo <= a_hi:
        text += " (the 95% intervals overlap: the difference may be noise)"
    return text


def success_indicators(losses: dict[str, Any], think: dict[str, Any], overall: dict | None) -> list[dict]:
    """The guide's four indicators, each passed True/False, or None when it could not be measured."""
    first, last, ev = losses["train_first"], losses["train_last"], losses["eval_last"]
    falls = None if losses["train_points"] < 2 else last < first
    closed = think["finished_closed_rate"]
    before, after = (overall or {}).get("before"), (overall or {}).get("after")
    better = None if not before or not before["n"] else after["correct"] > before["correct"]
    return [
        {"name": "Training loss falls", "passed": falls, "detail": f"{_fmt(first)} -> {_fmt(last)}"},
        {
            "name": "Eval loss < 1.0 (perplexity < 2.72)",
            "passed": None if ev is None else ev < EVAL_LOSS_TARGET,
            "detail": f"eval loss {_fmt(ev)}, perplexity {_fmt(losses['perplexity'], 2)}",
        },
        {
            "name": "Answers in <think> format (every finished answer closes </think>)",
            "passed": None if closed is None else closed == 1.0,
            "detail": f"{_fmt(closed, 2)} of {think['finished']} finished answers; "
            f"{_fmt(think['closed_rate'], 2)} of all {think['outputs']} outputs "
            f"({think['truncated']} hit the length limit); sampled prompts {_fmt(think['sampled_closed_rate'], 2)}",
        },
        {
            "name": "Accuracy after > before",
            "passed": better,
            "detail": _accuracy_detail(before, after) if better is not None else "n/a",
        },
    ]


# --- the whole evaluation ---------------------------------------------------------------------------------


def _sample_rows(name: str, items: list[Item], run: dict) -> list[dict]:
    rows = [
        {"model": name, "kind": "prompt", "id": f"prompt-{i}", "prompt": p, **asdict(g)}
        for i, (p, g) in enumerate(zip(THREE_PROMPTS, run["prompts"], strict=True))
    ]
    for item, gen, verdict in zip(items, run["gens"], run["verdicts"], strict=False):
        rows.append({"model": name, "kind": "scored", "id": item.id, "group": item.group, "prompt": item.problem,
                     "gold": item.gold or f"{item.answer_number} {item.unit}".strip(), **asdict(gen), **verdict})  # fmt: skip
    return rows


def evaluate_run(
    settings,
    run_dir: Path,
    base_path: Path,
    merged_path: Path,
    eval_examples: list[dict],
    scibench_test: list[dict],
) -> dict:
    """Score the base model (before) and the merged fine-tune (after); write `run_dir/eval/results.json`,
    `samples.jsonl` and `loss_curve.png`; return the results dict (see the module docstring)."""
    s, run_dir = settings, Path(run_dir)
    t0 = _clock()
    out_dir = run_dir / EVAL_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    items = scoring_items(s, eval_examples, scibench_test)
    device, dtype = device_and_dtype()
    log.info(
        "eval: %d problems, before (%s) and after (%s) on %s", len(items), base_path, merged_path, device
    )

    runs: dict[str, dict] = {}
    runs["base"] = run_model(Path(base_path), items, s, s.eval_time_budget_s / 2)
    left = s.eval_time_budget_s - runs["base"]["stats"].generation_s
    runs["finetuned"] = run_model(Path(merged_path), items[: runs["base"]["stats"].scored], s, left)
    for name in MODELS:
        runs[name]["verdicts"] = [
            score_item(it, g.text) for it, g in zip(items, runs[name]["gens"], strict=False)
        ]

    verdicts = {m: runs[m]["verdicts"] for m in MODELS}
    accuracy = accuracy_table(items, verdicts)
    n_common = min(len(v) for v in verdicts.values())
    scibench_items = [i for i, it in enumerate(items[:n_common]) if it.group == SCIBENCH_GROUP]
    lenient = {
        label: proportion(sum(verdicts[m][i]["correct_lenient"] for i in scibench_items), len(scibench_items))
        for label, m in zip(("before", "after"), MODELS, strict=True)
    }
    scalars = read_scalars(run_dir / "logs") if (run_dir / "logs").is_dir() else {}
    losses = loss_summary(scalars)
    curve = plot_loss_curve(scalars, run_dir / LOSS_CURVE)
    think = {m: think_stats(runs[m]["prompts"], runs[m]["gens"]) for m in MODELS}
    gen_s = sum(runs[m]["stats"].generation_s for m in MODELS)
    gen_tokens = sum(runs[m]["stats"].new_tokens for m in MODELS)

    result = {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "decoding": {
            "scoring": "greedy",
            "prompts": {**SAMPLING, "seed": s.seed, "do_sample": True},
            "max_new_tokens": s.eval_max_new_tokens,
            "batch_size": s.eval_batch_size,
        },
        "time_budget_s": s.eval_time_budget_s,
        "planned": {
            "eval": sum(it.group != SCIBENCH_GROUP for it in items),
            "scibench": sum(it.group == SCIBENCH_GROUP for it in items),
        },
        "scored": n_common,
        "models": {
            m: {
                "path": runs[m]["path"],
                **{k: v for k, v in asdict(runs[m]["stats"]).items()},
                "tokens_per_s": runs[m]["stats"].tokens_per_s,
                "seconds": runs[m]["seconds"],
                "think": think[m],
            }
            for m in MODELS
        },
        "accuracy": accuracy,
        "scibench_lenient": lenient,
        "scibench_by_textbook": accuracy_table(items, verdicts, key="textbook") if scibench_items else {},
        "prompts": [
            {
                "prompt": p,
                "base": runs["base"]["prompts"][i].text,
                "finetuned": runs["finetuned"]["prompts"][i].text,
            }
            for i, p in enumerate(THREE_PROMPTS)
        ],
        "losses": losses,
        "indicators": success_indicators(losses, think["finetuned"], accuracy.get("overall")),
        "loss_curve": LOSS_CURVE if curve else None,
        "generation_tokens_per_s": gen_tokens / gen_s if gen_s > 0 else 0.0,
        "generation_tokens": gen_tokens,
        "seconds": _clock() - t0,
    }
    result["scibench_by_textbook"].pop("", None)
    rows = [row for m in MODELS for row in _sample_rows(m, items, runs[m])]
    (out_dir / "samples.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8"
    )
    (out_dir / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return result
