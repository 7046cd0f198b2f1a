"""The evaluation protocol: how both models are asked, and which problems they answer.

DeepSeek's model card for this model: temperature 0.6, top_p 0.95, no system prompt, "Please reason step
by step, and put your final answer within \\boxed{}." in the user turn, the answer starting inside
`<think>\\n` (the chat template's generation prompt), pass@1 as the mean over several sampled answers.
r1ft samples `k` answers per problem (R1FT_EVAL_SAMPLES_PER_PROBLEM) with up to R1FT_EVAL_MAX_NEW_TOKENS new
tokens each (16,384 by default; DeepSeek allows 32,768).

The problems: a seeded sample of each benchmark (MATH-500, SciBench's test set, the held-out split), then
one seeded order over all of them, shared by both models. Each answer's sampling noise is keyed by (seed,
problem, sample), so the base model and the fine-tune draw the same random numbers for the same question.
Under the time budget, a model scores whole problems (all k answers) of a prefix of that order: a prefix of
a random order is itself a fair sample of every benchmark, whereas dropping the slowest problems would
drop the hardest ones.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from r1ft.settings import Settings
from r1ft.tasks.problem import Benchmark, Problem

# The original guide's three prompts, answered by both models beside the scored problems.
THREE_PROMPTS = (
    "Solve for x: 3x + 5 = 20",
    "What is the derivative of f(x) = x^3 + 2x^2 - 5x + 3?",
    "Calculate the force required to accelerate a 10 kg object at 5 m/s^2.",
)
PROMPT_KEY = "prompt"


@dataclass(frozen=True)
class Protocol:
    """How the models are asked and how much: the same for both."""

    temperature: float
    top_p: float
    samples: int  # k answers per problem
    max_new_tokens: int
    seed: int
    budget_s: float  # generation seconds for both models together
    sizes: dict[str, int] = field(default_factory=dict)  # benchmark -> problems to draw
    max_batch: int = 0  # most answers generated at once (0: as many as the memory holds)

    def to_json(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "samples_per_problem": self.samples,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "time_budget_s": self.budget_s,
            "problems_per_benchmark": dict(self.sizes),
            "prompt": 'the user turn only (no system prompt): the problem, then "Please reason step by step, '
            'and put your final answer within \\boxed{}."; the answer starts inside <think>',
        }


def protocol_for(settings: Settings) -> Protocol:
    return Protocol(
        temperature=settings.eval_temperature,
        top_p=settings.eval_top_p,
        samples=settings.eval_samples_per_problem,
        max_new_tokens=settings.eval_max_new_tokens,
        seed=settings.seed,
        budget_s=float(settings.eval_time_budget_s),
        sizes={
            "math500": settings.eval_math500_samples,
            "scibench": settings.eval_scibench_samples,
            "heldout": settings.eval_samples,
        },
        max_batch=settings.eval_batch_size,
    )


def select_problems(benchmarks: Sequence[Benchmark], sizes: dict[str, int], seed: int) -> list[Problem]:
    """Each benchmark's seeded sample (`sizes`; all when fewer), then one seeded order over all of them."""
    chosen: list[Problem] = []
    for b in benchmarks:
        n = min(sizes.get(b.name, 0), len(b.problems))
        chosen += random.Random(f"{seed}/{b.name}").sample(b.problems, n)
    random.Random(f"{seed}/order").shuffle(chosen)
    return chosen


def answer_seed(seed: int, problem_id: str, sample: int) -> int:
    """The sampling seed of one answer: the same for both models (a stable hash, not Python's `hash`)."""
    digest = hashlib.sha256(f"{seed}/{problem_id}/{sample}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def answer_key(problem_id: str, sample: int) -> str:
    return f"{problem_id}#{sample}"


def scored_prefix(problems: Sequence[Problem], done: set[str], k: int) -> int:
    """How many leading problems of the order have all k answers in `done` (answer keys)."""
    n = 0
    for p in problems:
        if not all(answer_key(p.id, j) in done for j in range(k)):
            break
        n += 1
    return n
