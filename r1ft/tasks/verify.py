"""Scoring R1-style outputs with Hugging Face's `math-verify` (parse + verify, pinned in pyproject).

One output is scored like this (`score_answer`):

1. An output that did not finish (it hit the token cap) is wrong, method 'truncated': a cut answer is
   not read, even if a box already appeared.
2. The answer region is the text after the last `</think>`, or the whole text when there is none
   (`problem.answer_region`). A box only inside a closed think block does not count.
3. The region must hold a closed `\\boxed{...}` (or `\\fbox{...}`), else wrong, method 'no-box'.
4. math-verify reads the region's last box (boxed-first LaTeX extraction, first match only; several
   boxes joined by "and"/"," right next to each other are read together, as math-verify does) and
   compares it with the gold, parsed from `\\boxed{gold}` as LaTeX, with `verify` (units, `\\dfrac`,
   `\\text{}`, percent, intervals, sets, `x=3` against `3`, numbers to 6 decimals, all as math-verify
   does), method 'boxed'. A gold math-verify cannot parse gives method 'gold-unparsed' (scored wrong).

**Timeouts.** math-verify bounds its parsing and each comparison with `signal.alarm` (5 s each here),
which only works in a process's main thread and takes over SIGALRM while it runs. So:

- `score_answer` calls math-verify in the calling process and raises RuntimeError outside the main thread;
- `score_all` (what the evaluation uses) runs math-verify in `spawn`ed worker processes: each worker's
  main thread owns its alarms, the job's own process installs no signal handler, and it may call from any
  thread. A worker that does not answer within `deadline_s` (a computation the alarm cannot interrupt,
  such as a huge integer power inside C code) is killed with its pool; that answer is wrong with method
  'timeout', and the rest are scored in a fresh pool. Spawned workers import the calling program's
  `__main__` unless it is a package's `__main__` module: it must be import-safe, as r1ft's entry points
  are (`python -m r1ft`, the `r1ft` script, pytest).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from r1ft.tasks.answers import last_boxed
from r1ft.tasks.problem import Verdict, answer_region, think_closed, used_code

log = logging.getLogger(__name__)

PARSE_TIMEOUT_S = 5  # math-verify's alarm per parse (prediction and gold)
VERIFY_TIMEOUT_S = 5  # math-verify's alarm per comparison
DEADLINE_S = 60.0  # per answer in a worker: above the alarms' worst case (2 parses + 4 comparisons)
DEFAULT_WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))
MV_PROCESS_START = "spawn"  # a fresh interpreter: no CUDA state, threads or handlers copied from the job


@dataclass(frozen=True)
class Answer:
    """One generated answer to score: which problem and sample, the gold, the engine's output."""

    problem_id: str
    sample: int
    gold: str
    text: str  # the generated text after the prompt (the prompt ends `<think>\\n`), specials dropped
    finished: bool  # stopped by EOS, not by the token cap
    new_tokens: int


def _verdict(answer: Answer, correct: bool, extracted: str | None, method: str) -> Verdict:
    return Verdict(
        problem_id=answer.problem_id,
        sample=answer.sample,
        correct=correct,
        extracted=extracted,
        finished=answer.finished,
        think_closed=think_closed(answer.text),
        used_code=used_code(answer.text),
        method=method,
        new_tokens=answer.new_tokens,
    )


def quick_verdict(answer: Answer) -> Verdict | None:
    """The verdict when no comparison is needed (truncated, or no box to read); None otherwise."""
    if not answer.finished:
        return _verdict(answer, False, None, "truncated")
    if last_boxed(answer_region(answer.text)) is None:
        return _verdict(answer, False, None, "no-box")
    return None


def score_answer(answer: Answer) -> Verdict:
    """The verdict on one answer, math-verify running in this process (main thread only, see above)."""
    quick = quick_verdict(answer)
    if quick is not None:
        return quick
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "math-verify times out with signal.alarm, which works only in the main thread: score from "
            "other threads with r1ft.tasks.verify.score_all (worker processes)"
        )
    gold = parse_gold(answer.gold)
    pred = parse_prediction(answer_region(answer.text))
    extracted = next((p for p in reversed(pred) if isinstance(p, str)), None)
    if not gold:
        return _verdict(answer, False, extracted, "gold-unparsed")
    from math_verify import verify

    correct = bool(verify(gold, pred, timeout_seconds=VERIFY_TIMEOUT_S))
    return _verdict(answer, correct, extracted, "boxed")


def parse_prediction(region: str) -> list[Any]:
    """math-verify's reading of the last box of an answer region: [sympy value, string], [string] when
    the box did not parse (it then matches nothing), or [] when there is no box."""
    from math_verify import LatexExtractionConfig, parse

    return parse(
        region,
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)],
        fallback_mode="first_match",
        extraction_mode="first_match",
        parsing_timeout=PARSE_TIMEOUT_S,
    )


@lru_cache(maxsize=1024)
def _parse_gold_cached(gold: str) -> tuple[Any, ...]:
    from math_verify import LatexExtractionConfig, parse

    return tuple(
        parse(
            f"\\boxed{{{gold}}}",
            extraction_config=[LatexExtractionConfig()],
            parsing_timeout=PARSE_TIMEOUT_S,
        )
    )


def parse_gold(gold: str) -> list[Any]:
    """The gold answer (LaTeX, as MATH writes it) as math-verify parses it; [] when it cannot."""
    return list(_parse_gold_cached(gold.strip())) if gold.strip() else []


# --- many answers, in worker processes -----------------------------------------------------------------


def _worker_init() -> None:
    # Ctrl-C and the job's signals are the parent's business: it ends the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _score_in_worker(answer: Answer) -> Verdict:
    try:
        return score_answer(answer)
    except Exception as e:  # a scorer bug must not lose the evaluation: this answer is wrong, and said so
        log.warning(
            "scoring %s sample %d failed: %s: %s", answer.problem_id, answer.sample, type(e).__name__, e
        )
        return _verdict(answer, False, None, "error")


def score_all(
    answers: Sequence[Answer], workers: int = DEFAULT_WORKERS, deadline_s: float = DEADLINE_S
) -> list[Verdict]:
    """Verdicts for many answers, in order; math-verify runs in `workers` spawned processes.

    `workers=0` scores in this process instead (main thread only). Answers needing no comparison
    (truncated, no box) are decided here without starting a worker.
    """
    verdicts: list[Verdict | None] = [quick_verdict(a) for a in answers]
    todo = [i for i, v in enumerate(verdicts) if v is None]
    if workers <= 0:
        for i in todo:
            verdicts[i] = score_answer(answers[i])
    elif todo:
        done = run_with_deadline(
            _score_in_worker, [answers[i] for i in todo], workers, deadline_s, start=MV_PROCESS_START
        )
        for i, verdict in zip(todo, done, strict=True):
            verdicts[i] = verdict if verdict is not None else _verdict(answers[i], False, None, "timeout")
    return [v for v in verdicts if v is not None]


def run_with_deadline(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int, deadline_s: float, start: str = "spawn"
) -> list[Any]:
    """`[fn(item) for item in items]` in a process pool; None for an item not done within `deadline_s`
    of waiting for it (its pool is then killed and the items left are run in a new one)."""
    results: dict[int, Any] = {}
    pending = list(range(len(items)))
    context = multiprocessing.get_context(start)
    while pending:
        with context.Pool(min(workers, len(pending)), initializer=_worker_init) as pool:  # exit: terminate
            futures = {i: pool.apply_async(fn, (items[i],)) for i in pending}
            for i in pending:
                try:
                    results[i] = futures[i].get(timeout=deadline_s)
                except multiprocessing.TimeoutError:
                    log.warning("item %d not done after %.0f s: its worker pool is killed", i, deadline_s)
                    results[i] = None
                    finished = [j for j in pending if j not in results and futures[j].ready()]
                    results.update({j: futures[j].get() for j in finished if futures[j].successful()})
                    break
        pending = [i for i in pending if i not in results]
    return [results[i] for i in range(len(items))]
