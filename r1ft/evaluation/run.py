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
(every generation), `run_dir/eval/loss_curve.png`. `evaluation_markdown(result)` renders the model-card
section.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import random
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1ft.chat import prompt_text, user_message
from r1ft.tasks.answers import (
    answers_match,
    extract_answer,
    scibench_boxed,
    scibench_correct,
    scibench_correct_lenient,
    scibench_prompt_unit,
    wilson_interval,
)

log = logging.getLogger(__name__)

THREE_PROMPTS = (
    "Solve for x: 3x + 5 = 20",
    "What is the derivative of f(x) = x^3 + 2x^2 - 5x + 3?",
    "Calculate the force required to accelerate a 10 kg object at 5 m/s^2.",
)
SAMPLING = {"temperature": 0.6, "top_p": 0.95}  # the model's generation_config.json
# Greedy: neutral values override the model's 0.6 / 0.95 (unused when greedy, but transformers warns).
GREEDY_NEUTRAL = {"temperature": 1.0, "top_p": 1.0}
EVAL_LOSS_TARGET = 1.0  # the guide's target; perplexity exp(1.0) = 2.72
EVAL_DIR = "eval"
LOSS_CURVE = f"{EVAL_DIR}/loss_curve.png"
SCIBENCH_GROUP = "scibench-test"
MODELS = ("base", "finetuned")

_clock = time.monotonic  # the budget's clock (tests replace it)
SDPA_SKIP_CUDNN = True


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


def scibench_user_turn(record: dict) -> str:
    """The SciBench prompt: problem, SciBench's unit sentence (its power of ten hidden as SciBench does),
    the math instruction. The scoring (`scibench_correct`) rescales exactly when the prompt hid the power."""
    if "problem_text" not in record:
        return record["problem"]
    unit = record.get("unit", "").strip()
    return user_message(record["problem_text"], scibench_prompt_unit(unit) if unit else None)


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
                problem=scibench_user_turn(r),
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


# --- generation --------------------------------------------------------------------------------------


@dataclass
class Generation:
    """One model output: text (special tokens dropped), new tokens counted up to and including EOS."""

    text: str
    new_tokens: int
    finished: bool  # ended with EOS (not cut at max_new_tokens or by the deadline)


def device_and_dtype():
    """bf16 on a CUDA GPU, fp32 on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


def load_for_generation(path: Path):
    """Model (eval mode, on the device) and left-padding tokenizer from a local model directory.

    An adapter directory (adapter_config.json) is loaded onto its base and merged in memory: that is how
    the fine-tune is scored when the merged shards were streamed to the destination and are not on disk.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = device_and_dtype()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        adapter_config = Path(path) / "adapter_config.json"
        if adapter_config.is_file():
            from peft import PeftModel

            base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
            model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise RuntimeError(
            f"cannot load a model from {path}: {e}; check the run's merged/ or the base model"
        ) from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def release_memory() -> None:
    """Hand freed GPU memory back (call after the last reference to a model is deleted)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate(
    model,
    tokenizer,
    problems: list[str],
    max_new_tokens: int,
    sample: bool = False,
    max_time: float | None = None,
    cache_implementation: str | None = None,
) -> list[Generation]:
    """Answer a batch of user turns: chat template with the generation prompt (ends `<think>\\n`), tokens
    without added specials (the template emits BOS), left padding, KV cache; greedy or SAMPLING."""
    import torch
    from transformers import GenerationConfig

    texts = [prompt_text(tokenizer, p) for p in problems]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
    eos = tokenizer.eos_token_id
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        **(SAMPLING if sample else GREEDY_NEUTRAL),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
        max_time=max_time,
        **({"cache_implementation": cache_implementation} if cache_implementation else {}),
    )
    with torch.inference_mode(), _attention_backends(model.device):
        out = model.generate(**enc, generation_config=config)
    gens = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        finished = eos in row
        kept = row[: row.index(eos)] if finished else row
        gens.append(
            Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept) + finished, finished)
        )
    return gens


def _attention_backends(device):
    """On CUDA, SDPA without the cuDNN backend: decoding asks for a new key length at every step, and cuDNN
    builds an execution plan per shape, which made every first pass over a length ~3x slower on an H200."""
    import contextlib

    if device.type != "cuda" or not SDPA_SKIP_CUDNN:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


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


# --- TensorBoard losses ---------------------------------------------------------------------------------


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


# --- the model card section ---------------------------------------------------------------------------------

GROUP_TITLES = {
    "scibench-test": "SciBench test problems (SciBench scoring: last \\boxed{}, 5% relative)",
    "eval:mathcodeinstruct": "Held-out eval split: MathCodeInstruct",
    "eval:scibench": "Held-out eval split: SciBench worked solutions",
    "eval:chat": "Held-out eval split: chat",
    "overall": "All scored problems",
}


def _cell(p: dict) -> str:
    if not p["n"]:
        return "n/a"
    lo, hi = p["ci95"]
    return f"{100 * p['accuracy']:.1f}% ({p['correct']}/{p['n']}; 95% CI {100 * lo:.1f}–{100 * hi:.1f}%)"


def _fence(text: str) -> str:
    """`text` in a code fence longer than any backtick run inside it."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}text\n{text}\n{fence}"


def _verdict(passed: bool | None) -> str:
    return {True: "✅ pass", False: "❌ fail", None: "– not measured"}[passed]


def evaluation_markdown(result: dict) -> str:
    """The body of the model card's evaluation section (the card supplies the `## Evaluation` heading):
    before/after table, success indicators, loss curves, the three prompts with both models' outputs."""
    d = result["decoding"]
    lines = [
        f"Base model (before) and fine-tune (after) answered the same {result['scored']} problems "
        f"(planned: {result['planned']['eval']} held-out eval examples, {result['planned']['scibench']} SciBench "
        f"test problems), greedy decoding, up to {d['max_new_tokens']} new tokens, batches of {d['batch_size']}, "
        f"{result['dtype']} on {result['device']}. Accuracy with Wilson 95% confidence intervals.",
        "",
        "| Problems | Before (base) | After (fine-tune) |",
        "|---|---|---|",
    ]
    sl = result["scibench_lenient"]
    for name, row in result["accuracy"].items():
        lines.append(f"| {GROUP_TITLES.get(name, name)} | {_cell(row['before'])} | {_cell(row['after'])} |")
        if name == SCIBENCH_GROUP and sl["before"]["n"]:
            title = "SciBench, lenient parsing (\\frac, units, unboxed)"
            lines.append(f"| {title} | {_cell(sl['before'])} | {_cell(sl['after'])} |")
    for name in MODELS:
        m = result["models"][name]
        if m["budget_exhausted"]:
            lines += ["", f"The time budget ({result['time_budget_s']} s) ran out: the {name} model scored "
                          f"{m['scored']} of {m['planned']} problems."]  # fmt: skip
    lines += [
        "",
        f"Generation: {result['generation_tokens_per_s']:.0f} tokens/s over {result['generation_tokens']} tokens; "
        f"evaluation took {result['seconds']:.0f} s.",
        "",
        "### Success indicators",
        "",
        "| Indicator | Result | Measured |",
        "|---|---|---|",
    ]
    lines += [f"| {i['name']} | {_verdict(i['passed'])} | {i['detail']} |" for i in result["indicators"]]
    if result["loss_curve"]:
        lines += ["", "### Loss curves", "", f"![Training and eval loss]({result['loss_curve']})"]
    lines += [
        "",
        "### The three test prompts",
        "",
        f"Sampled at temperature {d['prompts']['temperature']}, top_p {d['prompts']['top_p']}, "
        f"seed {d['prompts']['seed']}, up to {d['max_new_tokens']} new tokens; full outputs.",
    ]
    for p in result["prompts"]:
        lines += ["", f"**{p['prompt']}**"]
        for name, label in (("base", "Base model"), ("finetuned", "Fine-tune")):
            lines += ["", f"<details><summary>{label}</summary>", "", _fence(p[name]), "", "</details>"]
    return "\n".join(lines) + "\n"
