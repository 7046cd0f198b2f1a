"""Evaluation: did the fine-tune make the model better? The base model (before) and the published merged
fine-tune (after) answer the same problems under the model card's protocol (`r1ft.evaluation.protocol`):

- **Benchmarks**: MATH-500 (public; scored with math-verify, DeepSeek reports 83.9% pass@1 for the base),
  SciBench's 580 test problems (SciBench's own scoring, plus a lenient row), and the held-out split of the
  training mix (an in-distribution check, not evidence of better reasoning).
- **Generation**: the continuous-batching engine (`r1ft.evaluation.engine`), one call per model for every
  answer and the guide's three prompts, sampled at the protocol's temperature and top_p, each answer's
  noise keyed by (seed, problem, sample), so both models draw alike.
- **Budget**: R1FT_EVAL_TIME_BUDGET_S covers both models' generation: half for the base; the fine-tune then
  answers the problems the base got through, with what is left. Each scores whole problems of a prefix of
  the shared order (see the protocol); every number is over the prefix both scored. A stop request
  (SIGTERM) ends generation between decode steps; what finished is scored and the report says so.
- **Statistics** (`r1ft.evaluation.stats`): pass@1 with a bootstrap interval per model and benchmark; the
  paired difference after - before with its interval and a paired test; "better" only when significant at
  5%. Truncated answers (the token cap) are scored wrong and counted; lengths, `</think>` closure and code
  use are reported with every score.

Outputs: `run_dir/eval/results.json` (the `EvaluationRecord`), `run_dir/eval/samples.jsonl` (every answer
with its verdict), `run_dir/eval/loss_curve.png`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from r1ft.chat import prompt_ids, user_message
from r1ft.evaluation import models, stats
from r1ft.evaluation.engine import Engine
from r1ft.evaluation.generation_types import Completion, EngineStats, Request, Sampling
from r1ft.evaluation.indicators import success_indicators
from r1ft.evaluation.losses import loss_summary, plot_loss_curve, read_scalars
from r1ft.evaluation.protocol import (
    PROMPT_KEY,
    THREE_PROMPTS,
    Protocol,
    answer_key,
    answer_seed,
    protocol_for,
    scored_prefix,
    select_problems,
)
from r1ft.evaluation.results import (
    EvaluationRecord,
    Generation,
    ModelRun,
    SampledPrompt,
    ScoredModel,
)
from r1ft.files import GB
from r1ft.settings import Settings
from r1ft.tasks import scibench, verify
from r1ft.tasks.problem import Benchmark, Problem, Verdict

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
LOSS_CURVE = f"{EVAL_DIR}/loss_curve.png"
MODELS = ("base", "finetuned")
PUBLIC = ("math500", "scibench")  # the benchmarks that say whether the model reasons better

_clock = time.monotonic  # the budget's clock (tests replace it)


@dataclass(frozen=True)
class FineTune:
    """Where the fine-tune's weights come from: `merged` (the published directory), or, when its shards
    were streamed away, a merge recomputed from `adapter` onto `base` (checked against `published`)."""

    merged: Path | None = None
    base: Path | None = None
    adapter: Path | None = None
    quant: str = "none"
    revision: str | None = None
    published: dict[str, str] = field(default_factory=dict)  # shard -> sha256


@dataclass
class Answers:
    """One model's generation: the texts by answer key and how the call went."""

    texts: dict[str, Completion]
    decoded: dict[str, str]
    stats: EngineStats
    scored: int  # whole problems of the prefix
    budget_s: float
    load_s: float
    path: str
    interrupted: str = ""


# --- generation -------------------------------------------------------------------------------------------


def requests_for(problems: Sequence[Problem], tokenizer, protocol: Protocol) -> list[Request]:
    """The three prompts first, then every problem's k answers in the order's sequence."""
    out = [
        Request(
            f"{PROMPT_KEY}/{i}", prompt_ids(tokenizer, user_message(p)), answer_seed(protocol.seed, "p", i)
        )
        for i, p in enumerate(THREE_PROMPTS)
    ]
    for p in problems:
        ids = prompt_ids(tokenizer, p.prompt)
        out += [
            Request(answer_key(p.id, j), ids, answer_seed(protocol.seed, p.id, j))
            for j in range(protocol.samples)
        ]
    return out


def generate_answers(
    model,
    tokenizer,
    problems: Sequence[Problem],
    protocol: Protocol,
    budget_s: float,
    stop: Callable[[], str],
) -> tuple[dict[str, Completion], EngineStats, str]:
    """Every answer of `problems` (and the three prompts) within `budget_s`; and why it stopped early."""
    engine = Engine(model, tokenizer.eos_token_id, max_slots=protocol.max_batch or 512)
    deadline = _clock() + budget_s
    why = {"reason": ""}

    def should_stop() -> bool:
        if stop():
            why["reason"] = stop()
            return True
        return _clock() > deadline

    sampling = Sampling(protocol.temperature, protocol.top_p, protocol.max_new_tokens)
    done = engine.generate(requests_for(problems, tokenizer, protocol), sampling, should_stop=should_stop)
    return {c.key: c for c in done}, engine.stats, why["reason"]


def run_model(
    load: Callable[[], tuple],
    problems: Sequence[Problem],
    protocol: Protocol,
    budget_s: float,
    stop,
    path: str,
) -> Answers:
    """Load one model, answer, free it. Asked to stop already: nothing is loaded, nothing answered."""
    if stop():
        log.warning("eval: %s not evaluated: stopped by %s", path, stop())
        return Answers({}, {}, EngineStats(requests=len(problems)), 0, budget_s, 0.0, path, stop())
    t0 = _clock()
    model, tokenizer = load()
    load_s = _clock() - t0
    try:
        texts, engine_stats, interrupted = generate_answers(
            model, tokenizer, problems, protocol, budget_s, stop
        )
        decoded = {k: tokenizer.decode(c.token_ids, skip_special_tokens=True) for k, c in texts.items()}
    finally:
        del model  # the last reference: with the engine's KV cache, freed before the next model loads
        models.release()
    scored = scored_prefix(problems, set(texts), protocol.samples)
    log.info("eval: %s answered %d of %d problems (%d tokens, %.0f tokens/s)", path, scored, len(problems),
             engine_stats.generated_tokens, engine_stats.tokens_per_s)  # fmt: skip
    return Answers(texts, decoded, engine_stats, scored, budget_s, load_s, path, interrupted)


# --- scoring ------------------------------------------------------------------------------------------------


def answers_of(run: Answers, problems: Sequence[Problem], k: int) -> list[verify.Answer]:
    return [
        verify.Answer(p.id, j, p.gold, run.decoded[key], run.texts[key].finished, run.texts[key].new_tokens)
        for p in problems
        for j in range(k)
        if (key := answer_key(p.id, j)) in run.texts
    ]


def score(
    problems: Sequence[Problem], runs: dict[str, Answers], k: int
) -> dict[str, dict[str, list[Verdict]]]:
    """model -> benchmark -> verdicts (SciBench twice: its own scoring, and the lenient row)."""
    by_id = {p.id: p for p in problems}
    out: dict[str, dict[str, list[Verdict]]] = {}
    for name, run in runs.items():
        out[name] = {}
        answers = answers_of(run, problems, k)
        sci = [a for a in answers if by_id[a.problem_id].benchmark == scibench.NAME]
        others = [a for a in answers if by_id[a.problem_id].benchmark != scibench.NAME]
        for v in verify.score_all(others):
            out[name].setdefault(by_id[v.problem_id].benchmark, []).append(v)
        if sci:
            out[name][scibench.NAME] = scibench.score_all(by_id, sci)
            out[name][scibench.LENIENT] = scibench.score_all(by_id, sci, lenient=True)
    return out


# --- the whole evaluation -------------------------------------------------------------------------------


def evaluate_run(
    settings: Settings,
    run_dir: Path,
    base: Path,
    finetune: FineTune,
    benchmarks: Sequence[Benchmark],
    stop: Callable[[], str] = lambda: "",
    eval_loss_base: float | None = None,
) -> EvaluationRecord:
    """Score the base model (before) and the fine-tune (after); write `run_dir/eval/`; return the record.

    `stop()` returns why to stop ('' to go on); `eval_loss_base` is the base model's eval loss (step 0),
    against which the eval-loss indicator is read."""
    t0 = _clock()
    protocol = protocol_for(settings)
    problems = select_problems(benchmarks, protocol.sizes, protocol.seed)
    device, dtype = models.device_and_dtype()
    log.info("eval: %d problems x %d answers, before (%s) and after, on %s", len(problems), protocol.samples,
             base, device)  # fmt: skip
    runs: dict[str, Answers] = {}
    runs["base"] = run_model(lambda: models.load_model(base), problems, protocol, protocol.budget_s / 2, stop,
                             str(base))  # fmt: skip
    left = max(1.0, protocol.budget_s - runs["base"].stats.seconds)
    subset = problems[: runs["base"].scored]
    scored_model = ScoredModel(source="merged/", method="the published merged/ directory")
    matches: dict[str, bool | None] = {}

    def load_finetune():
        if finetune.merged is not None:
            return models.load_model(finetune.merged)
        model, tokenizer, matches["ok"] = models.recompute_merge(
            finetune.base, finetune.revision, finetune.adapter, finetune.quant, finetune.published
        )
        return model, tokenizer

    ft_path = str(finetune.merged or finetune.adapter)
    runs["finetuned"] = run_model(load_finetune, subset, protocol, left, stop, ft_path)
    if finetune.merged is None:
        scored_model = ScoredModel(source="recomputed merge", matches_published=matches.get("ok"),
                                   method="merged again in memory; its shards' sha256 against the published ones")  # fmt: skip
    compared = problems[: min(runs["base"].scored, runs["finetuned"].scored)]
    verdicts = score(compared, runs, protocol.samples)
    record = _record(
        run_dir, protocol, benchmarks, problems, compared, runs, verdicts, device, dtype, eval_loss_base
    )
    record.scored_model = scored_model
    record.seconds = _clock() - t0
    _write(run_dir, record, compared, runs, verdicts)
    return record


def _record(run_dir, protocol, benchmarks, problems, compared, runs, verdicts, device, dtype, eval_loss_base):
    seed = protocol.seed
    results = {m: {b: stats.summary(vs, seed).to_json() for b, vs in verdicts[m].items()} for m in MODELS}
    names = sorted({b for m in MODELS for b in verdicts[m]})
    comparison = {
        b: stats.comparison(verdicts["base"].get(b, []), verdicts["finetuned"].get(b, []), seed).to_json()
        for b in names
    }
    public = {m: [v for b in PUBLIC for v in verdicts[m].get(b, [])] for m in MODELS}
    if any(public.values()):
        comparison["public"] = stats.comparison(public["base"], public["finetuned"], seed).to_json()
        for m in MODELS:
            results[m]["public"] = stats.summary(public[m], seed).to_json()
    scalars = read_scalars(run_dir / "logs") if (run_dir / "logs").is_dir() else {}
    losses = loss_summary(scalars)
    curve = plot_loss_curve(scalars, run_dir / LOSS_CURVE)
    finetuned_all = [v for b, vs in verdicts["finetuned"].items() if b != scibench.LENIENT for v in vs]
    return EvaluationRecord(
        protocol=protocol.to_json(),
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        benchmarks={b.name: b.to_json() for b in benchmarks},
        planned={b.name: sum(p.benchmark == b.name for p in problems) for b in benchmarks},
        compared_problems=len(compared),
        models={
            m: _model_run(runs[m], len(problems) if m == "base" else runs["base"].scored) for m in MODELS
        },
        results=results,
        comparison=comparison,
        prompts=[
            SampledPrompt(
                prompt=p, base=_prompt_text(runs["base"], i), finetuned=_prompt_text(runs["finetuned"], i)
            )
            for i, p in enumerate(THREE_PROMPTS)
        ],
        losses=losses,
        indicators=success_indicators(losses, eval_loss_base, finetuned_all, comparison.get("public")),
        loss_curve=LOSS_CURVE if curve else None,
    )


def _prompt_text(run: Answers, i: int) -> str:
    return run.decoded.get(f"{PROMPT_KEY}/{i}", "(not generated: the evaluation was stopped first)")


def _model_run(run: Answers, planned: int) -> ModelRun:
    s = run.stats
    return ModelRun(
        path=run.path,
        planned_problems=planned,
        scored_problems=run.scored,
        budget_s=run.budget_s,
        budget_exhausted=run.scored < planned and not run.interrupted,
        interrupted=run.interrupted,
        load_s=run.load_s,
        generation=Generation(
            seconds=s.seconds,
            setup_s=s.setup_s,
            new_tokens=s.generated_tokens,
            tokens_per_s=s.tokens_per_s,
            slots=s.slots,
            row_len=s.row_len,
            peak_memory_gb=s.peak_memory_bytes / GB,
            oom_fallbacks=list(s.oom_fallbacks),
            kernel_fallback=s.kernel_fallback,
            stopped=s.stopped,
        ),
    )


def _write(run_dir: Path, record: EvaluationRecord, compared, runs, verdicts) -> None:
    out = Path(run_dir) / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    by_id = {p.id: p for p in compared}
    rows = []
    for m in MODELS:
        for i, p in enumerate(THREE_PROMPTS):
            rows.append({"model": m, "kind": "prompt", "id": f"{PROMPT_KEY}/{i}", "prompt": p,
                         "text": _prompt_text(runs[m], i)})  # fmt: skip
        for bench, vs in verdicts[m].items():
            for v in vs:
                key = answer_key(v.problem_id, v.sample)
                rows.append({"model": m, "kind": "scored", "benchmark": bench, "prompt": by_id[v.problem_id].prompt,
                             "gold": by_id[v.problem_id].gold, "text": runs[m].decoded[key], **v.to_json()})  # fmt: skip
    (out / "samples.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8"
    )
    (out / "results.json").write_text(record.model_dump_json(indent=2) + "\n", "utf-8")
