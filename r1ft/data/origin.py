"""Where each training example comes from: SciBench, or one of MathCodeInstruct's three parts.

MathCodeInstruct (the MathCoder paper, ICLR 2024) has about 49k GPT-4 solutions to GSM8K and MATH training
problems, several for most problems, and about 31k solutions to interpolated problems (GPT-4-written
problems between the two in difficulty), one each. Its records carry no field that says which part a
record belongs to: each is a system, a user and an assistant message, nothing else. So the part is
inferred, per normalised problem, from what the records do carry:

- several distinct solutions to the problem among the source's records: a GSM8K or MATH problem; of these,
  a problem in LaTeX notation (a TeX command, or a `$...$` span without surrounding spaces) or with MATH's
  phrase "express your answer" is `math`, the others `gsm8k`;
- one solution: `interpolated`.

The rule misreads a GSM8K or MATH problem that has only one solution in the data (counted as interpolated)
and a MATH problem written in plain words (counted as gsm8k); on the shared 4,000-record sample, whose
sources are known, the notation test found 79% of the MATH problems and took none of the other 2,899 for
one. Chat-form records given as the MathCodeInstruct source get the same rule.
"""

from __future__ import annotations

import re
from collections import defaultdict

from r1ft.chat import MATH_INSTRUCTION
from r1ft.data.mix import solution_key

ORIGINS = ("scibench", "gsm8k", "math", "interpolated")
RULE = (
    "inferred: MathCodeInstruct's records have no field naming their part; a problem with several distinct "
    "solutions is GSM8K's or MATH's (MATH when written in LaTeX or asking to 'express your answer'), a "
    "problem with one is interpolated"
)
_LATEX = re.compile(r"\\[A-Za-z]+|\\[\[(]|\$[^$\s](?:[^$]*[^$\s])?\$")


def looks_like_math(problem: str) -> bool:
    """MATH's style: LaTeX notation (a TeX command, `\\[`, `\\(`, or a tight `$...$` span; a dollar amount
    such as `$5 and $7` is not one) or its house phrase 'express your answer'."""
    return bool(_LATEX.search(problem)) or "express your answer" in problem.lower()


def assign_origins(examples: list[dict]) -> None:
    """Set each example's `origin` (one of ORIGINS), counting the distinct solutions of each problem over
    all of them (before any dedup: the count is what tells the parts apart)."""
    solutions: dict[str, set[str]] = defaultdict(set)
    for ex in examples:
        if ex["source"] != "scibench":
            solutions[ex["key"]].add(solution_key(ex))
    for ex in examples:
        if ex["source"] == "scibench":
            ex["origin"] = "scibench"
        elif len(solutions[ex["key"]]) > 1:
            problem = ex["problem"].removesuffix(
                f"\n{MATH_INSTRUCTION}"
            )  # the instruction's \boxed is no sign
            ex["origin"] = "math" if looks_like_math(problem) else "gsm8k"
        else:
            ex["origin"] = "interpolated"
