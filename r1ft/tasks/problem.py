"""The types every benchmark shares: a `Problem` to answer and the `Verdict` on one answer to it.

A benchmark module (MATH-500, SciBench, the held-out split) turns its records into Problems; the
generation engine answers each Problem k times; a scorer turns each answer into a Verdict; the statistics
(`r1ft.evaluation.stats`) aggregate Verdicts per model and benchmark. Everything here is plain data with a
`to_json()` export for report.json and samples.jsonl.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from r1ft.chat import user_message

THINK_CLOSE = "</think>"
PYTHON_FENCE = "```python"


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: what the model is asked and what its answer is checked against.

    `prompt` is the whole user turn (the problem and DeepSeek's instruction "Please reason step by step,
    and put your final answer within \\boxed{}."), sent as is with no system prompt. `metadata` holds
    small descriptive values (subject, level, unit, source) for per-group tables, never scoring inputs.
    """

    id: str
    benchmark: str
    prompt: str
    gold: str
    metadata: dict[str, str | int] = field(default_factory=dict)

    @classmethod
    def from_text(
        cls, id: str, benchmark: str, problem: str, gold: str, metadata: dict[str, str | int] | None = None
    ) -> Problem:
        """A Problem whose prompt is `problem` followed by the model card's math instruction."""
        return cls(id, benchmark, user_message(problem), gold, dict(metadata or {}))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The verdict on one generated answer (one sample of one problem).

    - `correct`: the answer was scored right; always False when the output did not finish.
    - `extracted`: the final answer as the scorer read it (None when there was none to read).
    - `finished`: generation stopped by itself (EOS); False when it hit the token cap (truncated).
    - `think_closed`: the output contains `</think>` (the reasoning block was closed).
    - `used_code`: the output contains a ```python fence.
    - `method`: how the verdict was reached, e.g. 'boxed', 'no-box', 'truncated' (see the scorer).
    - `new_tokens`: generated tokens, EOS included when it was generated.
    """

    problem_id: str
    sample: int
    correct: bool
    extracted: str | None
    finished: bool
    think_closed: bool
    used_code: bool
    method: str
    new_tokens: int

    @property
    def truncated(self) -> bool:
        """The output hit the token cap (did not finish); such an answer is scored wrong."""
        return not self.finished

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "truncated": self.truncated}


def think_closed(text: str) -> bool:
    """Whether an output closes its reasoning block (the prompt opens it with `<think>\\n`)."""
    return THINK_CLOSE in text


def used_code(text: str) -> bool:
    """Whether an output writes Python in a ```python fence (the training data's code blocks)."""
    return PYTHON_FENCE in text


def answer_region(text: str) -> str:
    """Where the final answer is read: the text after the last `</think>`, or the whole text without one.

    No fallback into the reasoning: an answer boxed only inside a closed think block is not an answer.
    """
    return text.rsplit(THINK_CLOSE, 1)[1] if THINK_CLOSE in text else text


@dataclass
class Benchmark:
    """A loaded benchmark: its problems and where they came from (for the report)."""

    name: str
    problems: list[Problem]
    origin: dict[str, Any] = field(default_factory=dict)  # spec, origin, revision, files with sha256
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records left out
    note: str = ""  # how to read its score, e.g. "in-distribution check"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_problems": len(self.problems),
            "origin": self.origin,
            "skipped": dict(self.skipped),
            "note": self.note,
        }
