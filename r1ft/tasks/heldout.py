"""The held-out split as a benchmark: an in-distribution check, not evidence of better reasoning.

The eval split is cut from the training mix, so its problems and golds (the last `\\boxed{}` of the
training solutions, in MathCodeInstruct's own style) are what the fine-tune was trained to imitate. A
gain here shows the model learned the data's format and distribution; MATH-500 and SciBench say whether
it reasons better. Scored with math-verify like MATH-500 (`r1ft.tasks.verify`). Golds of the SciBench
solutions are rounded numbers, which math-verify compares to 6 decimals: those few are scored strictly.
"""

from __future__ import annotations

from r1ft.tasks.problem import Benchmark, Problem

NAME = "heldout"
NOTE = (
    "in-distribution check: the held-out part of the training mix, golds in the training data's own style; "
    "not evidence of better reasoning"
)


def to_problem(example: dict) -> Problem | None:
    """An eval example record (`id`, `source`, `problem`, `gold`) as a Problem; None without a gold.

    The record's `problem` is already the whole user turn (instruction included), sent as is.
    """
    gold = str(example.get("gold", "")).strip()
    if not gold:
        return None
    return Problem(
        id=str(example["id"]),
        benchmark=NAME,
        prompt=example["problem"],
        gold=gold,
        metadata={"source": str(example.get("source", "unknown"))},
    )


def heldout_benchmark(eval_examples: list[dict]) -> Benchmark:
    """The eval split's examples with a gold answer, as the 'heldout' benchmark (an in-distribution check)."""
    problems = [p for p in map(to_problem, eval_examples) if p is not None]
    skipped = (
        {"empty_answer": len(eval_examples) - len(problems)} if len(problems) < len(eval_examples) else {}
    )
    return Benchmark(NAME, problems, origin={"origin": "eval split"}, skipped=skipped, note=NOTE)
