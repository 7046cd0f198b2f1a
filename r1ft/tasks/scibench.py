"""SciBench, in one place: its records (problem_text, answer_number, unit, source, problemid, and a worked
solution in the `_sol` files), the prompt (the problem with SciBench's unit sentence and the math
instruction, the same for training and evaluation), the training examples made of the 112 worked solutions,
the 580 held-out test problems, and SciBench's own scoring.

Scoring (SciBench `eval/post_process.py` and `eval/eval_zero.py` of mandyyyyii/scibench, ported
faithfully): the last `\\boxed{}`, the text after its last `=`, `float()` after removing commas (or of the
first whitespace token), `math.isclose(..., rel_tol=0.05)`, and, when the unit carries a power of ten *and*
some other unit, both sides rescaled to absolute values (the prompt then names only the rest of the unit,
see `scibench_prompt_unit`). `scibench_correct_lenient` is the same comparison with the robust parser of
`r1ft.tasks.answers` instead of `float()`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from r1ft.chat import user_message
from r1ft.records import (
    BadRecord,
    as_object,
    check_decodable,
    clean_text,
    get_field,
    make_example,
    normalise_problem,
)
from r1ft.tasks.answers import braced, extract_answer, parse_number
from r1ft.tasks.problem import Benchmark, Problem, Verdict, answer_region, think_closed, used_code
from r1ft.tasks.verify import Answer

SCIBENCH_FIELDS = ("problem_text", "answer_number", "unit", "source", "problemid")
SCIBENCH_SHAPE = (
    "a JSON array of objects with string keys " + ", ".join(SCIBENCH_FIELDS) + " (+ solution in *_sol)"
)
SCIBENCH_REL_TOL = 0.05
# SciBench's `remove_not` pattern: an optional `$`, `10^{-3}` / `10^7`, an optional closing `}` and `$`.
_SCIBENCH_POWER = re.compile(r"[\$]?\ *10\^[{]?\ *-?[0-9]+\ *[}]?\ *[\$]?")
_SCIBENCH_EXPONENT = re.compile(r"10\^[{]?\ *(-?[0-9]+)\ *[}]?")


def scibench_prompt_unit(unit: str) -> str:
    """The unit SciBench names in its prompt: the text after the unit's power of ten, when there is any.

    `$10^{-19} \\mathrm{~J}$` -> `$\\mathrm{~J}$` (the model must then answer the absolute value, e.g.
    `3.2 \\times 10^{-19}`); `$10^{42}$` alone, or a unit without a power, is kept whole.

    Units are taken trimmed (as the data module stores them). SciBench ran on the raw strings, where a
    trailing space after a power-only unit (`$10^6$ `) left a blank rest and flipped that problem onto the
    rescaled path with an empty unit; here every power-only unit is treated alike.
    """
    if _SCIBENCH_POWER.search(unit):
        rest = _SCIBENCH_POWER.split(unit)[-1].strip()
        if rest:
            # SciBench's split leaves the closing `$` of `$10^{-19} \\mathrm{~J}$` alone; reopen it
            return "$" + rest if rest.count("$") % 2 else rest
    return unit


def scibench_unit_exponent(unit: str) -> int | None:
    """The power of ten SciBench rescales by (None when the prompt names the unit whole)."""
    if scibench_prompt_unit(unit) == unit:
        return None
    m = _SCIBENCH_EXPONENT.search(unit)
    return int(m.group(1)) if m else None


def scibench_boxed(output: str) -> str | None:
    """SciBench's `parse_math_answer`: the last `\\boxed{...}`'s content, after its last '='; None if none."""
    idx = output.rfind("oxed")
    if idx < 0:
        return None  # SciBench also tries `\fbox`, whose content its remove_boxed then rejects
    if not output.startswith("oxed{", idx):
        return None
    found = braced(output, idx + len("oxed"))
    if found is None:
        return None
    answer = found[0]
    if "=" in answer:
        answer = answer.split("=")[-1].lstrip(" ")
    return answer


def _scibench_times(pred: str) -> str | None:
    """SciBench's `parse_not` + `cal_not` on a prediction: `a \\times 10^{b}` -> str(a * 10**b).

    Returns the prediction unchanged when it has no `\\times` or `*`, and None where SciBench fails
    (several `\\times`, a second factor without a power of ten, a head that is not a float).
    """
    sep = "\\times" if "\\times" in pred else "*" if "*" in pred else None
    if sep is None:
        return pred
    parts = pred.split(sep)
    if len(parts) != 2:
        return None
    m = _SCIBENCH_EXPONENT.search(parts[1])
    try:
        return str(float(parts[0].strip()) * 10 ** float(m.group(1))) if m else None
    except ValueError:
        return None


def _scibench_float_equiv(pred: str, gold: float) -> bool:
    """SciBench's `equiv`: commas removed; float of the whole or of its first token; 5% relative."""
    pred = pred.replace(",", "")
    for candidate in (pred.strip(), (pred.strip().split() or [""])[0]):
        try:
            if math.isclose(float(candidate), gold, rel_tol=SCIBENCH_REL_TOL):
                return True
        except ValueError:
            continue
    return False


def scibench_gold(answer_number: str, unit: str) -> float | None:
    """The gold value SciBench compares with: answer_number, times 10**power when the prompt hid the power.

    Departure from SciBench: commas and the Unicode minus are normalised first (SciBench's float() fails on
    '89,034.79' and '−2', which makes those problems unwinnable there).
    """
    try:
        value = float(answer_number.strip().replace(",", "").replace("−", "-"))
    except ValueError:
        return None
    exponent = scibench_unit_exponent(unit)
    return value * 10.0**exponent if exponent is not None else value


def scibench_correct(output: str, answer_number: str, unit: str) -> bool:
    """SciBench's zero-shot verdict for a model output (prompted with `scibench_prompt_unit(unit)`)."""
    gold = scibench_gold(answer_number, unit)
    pred = scibench_boxed(output)
    if gold is None or pred is None:
        return False
    if scibench_unit_exponent(unit) is not None:
        pred = _scibench_times(pred)
        if pred is None:
            return False
    return _scibench_float_equiv(pred, gold)


def scibench_correct_lenient(output: str, answer_number: str, unit: str) -> bool:
    """SciBench's comparison (5% relative, power of ten as SciBench) with the robust extraction and parser.

    Accepts `\\frac`, units, `$..$` and `\\times 10^{}` anywhere; where the prompt named a power-only unit
    (`$10^{42}$`), both the mantissa and the absolute value count.
    """
    gold = scibench_gold(answer_number, unit)
    pred = parse_number(extract_answer(output).answer)
    if gold is None or pred is None:
        return False
    golds = [gold]
    m = _SCIBENCH_EXPONENT.search(unit)
    if m and scibench_unit_exponent(unit) is None:
        golds.append(gold * 10.0 ** int(m.group(1)))
    return any(math.isclose(pred.value, g, rel_tol=SCIBENCH_REL_TOL) for g in golds)


# --- records and the prompt ---------------------------------------------------------------------


def _scibench_fields(record: Any, solution: bool) -> dict[str, str]:
    """The record's fields as trimmed strings (`\\r\\n` normalised); answer_number may be a number."""
    record = as_object(record)
    out = {}
    for name in (*SCIBENCH_FIELDS, *(("solution",) if solution else ())):
        kind = (str, int, float) if name == "answer_number" else str
        value = get_field(record, name, "", kind)
        out[name] = (
            " ".join(str(value).split()) if name in ("unit", "answer_number") else clean_text(str(value))
        )
    check_decodable("problem_text", *out.values())
    if not out["problem_text"]:
        raise BadRecord("empty_text", "problem_text")
    return out


def user_turn(problem_text: str, unit: str) -> str:
    """The user turn of a SciBench problem, in training and evaluation alike: the problem, SciBench's unit
    sentence (`prompt_unit`), DeepSeek's math instruction."""
    return user_message(problem_text, prompt_unit(unit))


def prompt_unit(unit: str) -> str:
    """The unit named in the prompt, as SciBench's evaluation does (a power of ten beside another unit is
    left out: the answer is then the absolute value), with SciBench's cut `\\mathrm{~J}$` re-balanced."""
    shown = scibench_prompt_unit(unit).strip()
    if shown.count("$") % 2:
        shown = "$" + shown if shown.endswith("$") else shown + "$"
    return shown


def scibench_value(answer_number: str, unit: str) -> str:
    """The boxed answer: answer_number, times the unit's power of ten when the prompt leaves it out."""
    number = answer_number.replace("−", "-").strip()
    if not number:
        raise BadRecord("empty_answer", "answer_number")
    try:
        float(number.replace(",", ""))
    except ValueError as e:
        raise BadRecord("no_final_answer", "answer_number", f"{answer_number!r} is not a number") from e
    exponent = scibench_unit_exponent(unit)
    return number if exponent is None else f"{number} \\times 10^{{{exponent}}}"


def render_scibench_solution(record: Any) -> dict:
    """A SciBench `_sol` record as an example: the worked solution, then the boxed answer and its unit."""
    f = _scibench_fields(record, solution=True)
    if not f["solution"]:
        raise BadRecord("empty_text", "solution", "the worked solution is empty")
    value = scibench_value(f["answer_number"], f["unit"])
    shown = prompt_unit(f["unit"])
    key = normalise_problem(f["problem_text"])
    answer = f"The answer is $\\boxed{{{value}}}$" + (f" {shown}." if shown else ".")
    label = re.sub(r"[^A-Za-z0-9.]+", "_", f"{f['source']}_{f['problemid']}").strip("_")
    problem = user_turn(f["problem_text"], f["unit"])
    return make_example("scibench", key, problem, f["solution"], answer, value, label)


def scibench_test_record(record: Any) -> dict:
    """A SciBench main-file record as a held-out test problem (never a training example)."""
    f = _scibench_fields(record, solution=False)
    if not f["answer_number"]:
        raise BadRecord("empty_answer", "answer_number")
    return {**f, "problem": user_turn(f["problem_text"], f["unit"])}


# --- the benchmark ----------------------------------------------------------------------------------------

NAME = "scibench"
LENIENT = "scibench_lenient"
NOTE = "SciBench's test set (the 580 problems of its main files), scored as SciBench scores: last \\boxed{}, 5% relative"


def test_problem(record: dict) -> Problem:
    """A held-out test record (`scibench_test_record`) as a Problem: the gold is answer_number, with the unit."""
    return Problem(
        id=f"scibench/{record['source']}/{record['problemid']}",
        benchmark=NAME,
        prompt=user_turn(record["problem_text"], record["unit"]),
        gold=str(record["answer_number"]),
        metadata={"unit": record["unit"], "source": record["source"]},
    )


def test_benchmark(test_records: list[dict]) -> Benchmark:
    """SciBench's held-out test problems (the data module's `scibench_test`) as a benchmark."""
    return Benchmark(NAME, [test_problem(r) for r in test_records], origin={"origin": "SciBench main files"},
                     note=NOTE)  # fmt: skip


def score_all(problems: dict[str, Problem], answers: list[Answer], lenient: bool = False) -> list[Verdict]:
    """SciBench's verdicts (or the lenient ones) on answers: read after the last `</think>`; an answer that
    did not finish is wrong (truncated)."""
    correct_fn = scibench_correct_lenient if lenient else scibench_correct
    out = []
    for a in answers:
        p = problems[a.problem_id]
        region = answer_region(a.text)
        ok = a.finished and correct_fn(region, p.gold, str(p.metadata.get("unit", "")))
        method = "truncated" if not a.finished else ("lenient" if lenient else "scibench-boxed")
        extracted = scibench_boxed(region) if not lenient else extract_answer(region).answer
        out.append(
            Verdict(
                a.problem_id,
                a.sample,
                bool(ok),
                extracted,
                a.finished,
                think_closed(a.text),
                used_code(a.text),
                method,
                a.new_tokens,
            )
        )
    return out
