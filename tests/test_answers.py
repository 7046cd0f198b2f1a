"""Answer extraction and comparison: tables of tricky cases, SciBench's scoring, real SciBench answers."""

from __future__ import annotations

import json
import math

import pytest

from r1ft.tasks.answers import (
    answers_match,
    clean_answer,
    extract_answer,
    last_boxed,
    parse_number,
    wilson_interval,
)
from r1ft.tasks.scibench import (
    scibench_boxed,
    scibench_correct,
    scibench_correct_lenient,
    scibench_gold,
    scibench_prompt_unit,
    scibench_unit_exponent,
)

LAST_BOXED = [
    (r"so \boxed{5}", "5"),
    (r"\boxed{1} then \boxed{2}", "2"),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),
    (r"\boxed{\left( \frac{a}{b}, \{c\} \right)}", r"\left( \frac{a}{b}, \{c\} \right)"),
    (r"$\boxed{ 42 }$.", "42"),
    (r"\fbox{7}", "7"),
    (r"\boxed{3} and finally \fbox{4}", "4"),
    (r"The answer is $\boxed 5$.", "5"),
    (r"\boxed {9}", "9"),
    (r"\boxed{\frac{1}{2}", None),  # truncated: never closed
    ("no box here", None),
    (r"\boxed", None),
]


@pytest.mark.parametrize(("text", "expected"), LAST_BOXED)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


EXTRACT = [
    (r"<think>\nx=5\n</think>\n\nSo \boxed{5}.", "5", "boxed"),
    (r"reasoning \boxed{4} ... </think> answer \boxed{5}", "5", "boxed"),
    ("The answer is 42.", "42", "answer-is"),
    ("Thus, the final answer is: $3.5$. Done.", "3.5", "answer-is"),
    ("Final Answer: x = 7\nThanks", "x = 7", "answer-is"),
    ("<think>try 3, then 4</think>\n\nIt equals 12 apples", "12", "last-number"),
    ("<think>we get 1,250 and 3.0e-4", "3.0e-4", "last-number"),  # truncated in the think block
    ("nothing numeric", None, "none"),
]


@pytest.mark.parametrize(("text", "answer", "method"), EXTRACT)
def test_extract_answer(text, answer, method):
    assert extract_answer(text) == (answer, method)


NUMBERS = [
    ("5", 5.0),
    ("-3", -3.0),
    ("−2", -2.0),  # Unicode minus
    (r"\frac{1}{2}", 0.5),
    (r"\dfrac{3}{4}", 0.75),
    (r"\tfrac{3}{4}", 0.75),
    (r"\frac12", 0.5),
    (r"-\frac{1}{2}", -0.5),
    (r"\frac{\sqrt{3}}{2}", math.sqrt(3) / 2),
    (r"2\sqrt{3}", 2 * math.sqrt(3)),
    (r"2\pi", 2 * math.pi),
    (r"\left(\frac{1}{4}\right)", 0.25),
    ("1,234", 1234.0),
    ("1,234,567.5", 1234567.5),
    ("1{,}000", 1000.0),
    (r"1\,000", 1000.0),
    ("1.2e-3", 1.2e-3),
    ("6.02E+23", 6.02e23),
    (r"1.2 \times 10^{-3}", 1.2e-3),
    (r"1.2\cdot10^{-3}", 1.2e-3),
    ("1.2 x 10^5", 1.2e5),
    ("10^{5}", 1e5),
    ("10^5", 1e5),
    ("$3.5$", 3.5),
    (r"\$5.00", 5.0),
    (r"50 \text{ N}", 50.0),
    (r"50\ \mathrm{N}", 50.0),
    (r"9.8 \, \mathrm{m/s^2}", 9.8),
    (r"3.0 \times 10^{8} \mathrm{~m/s}", 3e8),
    ("12 apples", 12.0),
    (r"30^\circ", 30.0),
    (r"30^{\circ}", 30.0),
    ("x = 3", 3.0),
    (r"\text{5}", 5.0),
]


@pytest.mark.parametrize(("answer", "value"), NUMBERS)
def test_parse_number(answer, value):
    parsed = parse_number(answer)
    assert parsed is not None
    assert math.isclose(parsed.value, value, rel_tol=1e-12)


@pytest.mark.parametrize(
    "answer",
    ["x", "3x + 1", "3x^2 + 4x - 5", "(1, 2)", r"\text{(B)}", "", "2 - y", "1,23", r"\frac{1}{0}", "10^{999}",
     "__import__('os')", "a.b()"],
)  # fmt: skip
def test_parse_number_rejects_non_numbers(answer):
    assert parse_number(answer) is None


def test_parse_number_flags_percent():
    assert parse_number(r"25\%") == (25.0, True)
    assert parse_number("25%") == (25.0, True)
    assert parse_number("0.25") == (0.25, False)


MATCH = [
    # (pred, gold, expected)
    ("5", "5", True),
    ("5.0", "5", True),
    (r"\frac{1}{2}", "0.5", True),
    ("0.5", r"\frac{1}{2}", True),
    (r"\dfrac{1}{2}", r"\frac{1}{2}", True),
    (r"\frac12", r"\frac{1}{2}", True),
    ("x=3", "3", True),
    ("3", "x = 3", True),
    ("1,000", "1000", True),
    ("1000", "1{,}000", True),
    (r"25\%", "25", True),
    ("0.25", r"25\%", True),
    (r"25\%", "0.25", True),
    (r"1.2 \times 10^{-3}", "0.0012", True),
    ("1.2e-3", "0.0012", True),
    (r"\frac{1}{3}", "0.333", True),  # gold rounded to 3 decimals
    ("0.3333", "0.33", True),
    ("0.45", "0.5", False),  # a 1-decimal gold may be exact: no rounding rule
    ("50 N", "50", True),
    (r"$\$18$", "18", True),
    ("5.0001", "5", True),  # within 1e-4 relative
    ("5.01", "5", False),
    ("6", "5", False),
    ("-5", "5", False),
    ("3x", "3", True),  # trailing letters read as a unit when the gold is a number
    ("3", "3x", False),
    (r"\left( 1, 2 \right)", "(1,2)", True),
    (r"\text{(B)}", "(B)", True),
    ("B", "(B)", False),
    (r"3x^2 + 4x - 5", r"3x^{2}+4x-5", True),
    (r"x \in [0, 1]", r"x\in[0,1]", True),
    (None, "5", False),
    ("5", "", False),
    ("", "5", False),
]


@pytest.mark.parametrize(("pred", "gold", "expected"), MATCH)
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected


def test_answers_match_with_scibench_tolerance():
    assert answers_match("3.1", "3.2", rel_tol=0.05)
    assert not answers_match("3.1", "3.2")


def test_clean_answer_strips_presentation():
    assert clean_answer(r"$\left( \dfrac{1}{2} \right)$.") == r"( \frac{1}{2} )"
    assert clean_answer(r"\text{ yes }") == "yes"
    assert clean_answer(r"y \leq 3") == r"y \leq 3"  # no '=' split inside \leq
    assert clean_answer(r"a \geq 2 = b") == "b"


# --- SciBench ---------------------------------------------------------------------------------------------

PROMPT_UNITS = [
    (r"$\mathrm{atm}$", r"$\mathrm{atm}$"),
    (r"$10^{-19} \mathrm{~J}$", r"$\mathrm{~J}$"),  # SciBench's text is `\mathrm{~J}$`: `$` reopened
    (r"$10^7 \mathrm{yr}$", r"$\mathrm{yr}$"),
    (r"$\mathrm{10^7} \mathrm{~km}$", r"$\mathrm{~km}$"),
    (r"$10^{-3} \%$", r"$\%$"),
    (r"$10^{16}$ photons", "photons"),
    (r"$10^{42}$", r"$10^{42}$"),  # nothing after the power: SciBench keeps the unit whole
    (r"$10^6$", r"$10^6$"),
    ("", ""),
]


@pytest.mark.parametrize(("unit", "prompt_unit"), PROMPT_UNITS)
def test_scibench_prompt_unit(unit, prompt_unit):
    assert scibench_prompt_unit(unit) == prompt_unit


def test_scibench_unit_exponent_only_when_the_prompt_hid_it():
    assert scibench_unit_exponent(r"$10^{-19} \mathrm{~J}$") == -19
    assert scibench_unit_exponent(r"$10^7 \mathrm{yr}$") == 7
    assert scibench_unit_exponent(r"$10^{42}$") is None
    assert scibench_unit_exponent(r"$\mathrm{atm}$") is None


SCIBENCH_BOXED = [
    (r"so \boxed{50.7}", "50.7"),
    (r"\boxed{1} \boxed{2}", "2"),
    (r"\boxed{p = 50.7}", "50.7"),
    (r"\boxed{a = b = 3}", "3"),
    (r"\boxed {50.7}", None),  # SciBench's remove_boxed wants 'oxed{'
    (r"\fbox{50.7}", None),
    (r"\boxed{5", None),
    ("no box", None),
]


@pytest.mark.parametrize(("output", "expected"), SCIBENCH_BOXED)
def test_scibench_boxed(output, expected):
    assert scibench_boxed(output) == expected


SCIBENCH = [
    # (output, answer_number, unit, strict, lenient)
    (r"\boxed{50.7}", "50.7", r"$\mathrm{atm}$", True, True),
    (r"\boxed{52}", "50.7", r"$\mathrm{atm}$", True, True),  # within 5%
    (r"\boxed{54}", "50.7", r"$\mathrm{atm}$", False, False),  # 6.5% off
    (r"\boxed{50.7 atm}", "50.7", r"$\mathrm{atm}$", True, True),  # first token
    (r"\boxed{50.7\,\mathrm{atm}}", "50.7", r"$\mathrm{atm}$", False, True),
    (r"\boxed{$50.7$}", "50.7", r"$\mathrm{atm}$", False, True),
    (r"\boxed{\frac{101.4}{2}}", "50.7", r"$\mathrm{atm}$", False, True),
    ("The answer is 50.7", "50.7", r"$\mathrm{atm}$", False, True),  # not boxed
    (r"\boxed{1,234}", "1234", "", True, True),
    (r"\boxed{89034.79}", "89,034.79", "", True, True),  # gold commas normalised
    (r"\boxed{-2}", "−2", "", True, True),  # gold Unicode minus normalised
    # power of ten in the unit with a rest: both sides rescaled, the model must give the absolute value
    (r"\boxed{3.2 \times 10^{-19}}", "3.2", r"$10^{-19} \mathrm{~J}$", True, True),
    (r"\boxed{3.2*10^{-19}}", "3.2", r"$10^{-19} \mathrm{~J}$", True, True),
    (r"\boxed{3.2e-19}", "3.2", r"$10^{-19} \mathrm{~J}$", True, True),
    (r"\boxed{3.2}", "3.2", r"$10^{-19} \mathrm{~J}$", False, False),
    (r"\boxed{3.2 \times 10^{-19} \times 1}", "3.2", r"$10^{-19} \mathrm{~J}$", False, True),
    (r"\boxed{3.2 \times 10^{-18}}", "3.2", r"$10^{-19} \mathrm{~J}$", False, False),
    # a power-only unit is named whole in the prompt: no rescaling, the mantissa is the answer
    (r"\boxed{4.16}", "4.16", r"$10^{42}$", True, True),
    (r"\boxed{4.16 \times 10^{42}}", "4.16", r"$10^{42}$", True, True),  # SciBench: first token "4.16"
    (r"\boxed{}", "4.16", r"$10^{42}$", False, False),
    ("", "4.16", "", False, False),
]


@pytest.mark.parametrize(("output", "answer_number", "unit", "strict", "lenient"), SCIBENCH)
def test_scibench_scoring(output, answer_number, unit, strict, lenient):
    assert scibench_correct(output, answer_number, unit) is strict
    assert scibench_correct_lenient(output, answer_number, unit) is lenient


def test_scibench_gold_rescales_like_scibench():
    assert math.isclose(scibench_gold("4.16", r"$10^{-19} \mathrm{~J}$"), 4.16e-19)
    assert scibench_gold("4.16", r"$10^{42}$") == 4.16
    assert scibench_gold("n/a", "") is None


def _scibench_main_records(shared_data):
    files = sorted(p for p in (shared_data / "scibench").glob("*.json") if not p.stem.endswith("_sol"))
    return [r for p in files for r in json.loads(p.read_text(encoding="utf-8"))]


def test_real_scibench_answers_score_as_scibench(shared_data):
    """Every real SciBench test answer, written the way its prompt asks, is right; 10% off is wrong."""
    records = _scibench_main_records(shared_data)
    assert len(records) == 580
    rescaled = 0
    for r in records:
        answer, unit = r["answer_number"].strip(), r["unit"].strip()
        gold = scibench_gold(answer, unit)
        assert gold is not None, r
        exponent = scibench_unit_exponent(unit)
        mantissa = gold if exponent is None else gold / 10.0**exponent
        suffix = "" if exponent is None else f" \\times 10^{{{exponent}}}"
        rescaled += exponent is not None
        right = f"... so \\boxed{{{mantissa!r}{suffix}}}"
        wrong = f"... so \\boxed{{{mantissa * 1.1 + (1 if mantissa == 0 else 0)!r}{suffix}}}"
        assert scibench_correct(right, answer, unit), (right, r)
        assert scibench_correct_lenient(right, answer, unit), (right, r)
        assert not scibench_correct(wrong, answer, unit), (wrong, r)
        assert not scibench_correct_lenient(wrong, answer, unit), (wrong, r)
    assert rescaled > 50  # the data really exercises the power-of-ten path


def test_real_scibench_plain_latex_answers_parse(shared_data):
    """Most `answer_latex` values of unrescaled problems parse to answer_number within 5%."""
    records = [
        r for r in _scibench_main_records(shared_data) if scibench_unit_exponent(r["unit"].strip()) is None
    ]
    ok = sum(
        scibench_correct_lenient(f"\\boxed{{{r['answer_latex'].strip()}}}", r["answer_number"], r["unit"])
        for r in records
    )
    assert ok / len(records) > 0.95  # the rest are expressions (e^{-1}, \cos) or SciBench's own typos


# --- statistics -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("correct", "n", "lo", "hi"),
    [(0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634), (81, 263, 0.2553, 0.3662)],
)
def test_wilson_interval(correct, n, lo, hi):
    got = wilson_interval(correct, n)
    assert got == pytest.approx((lo, hi), abs=1e-3)


def test_wilson_interval_of_nothing_is_everything():
    assert wilson_interval(0, 0) == (0.0, 1.0)
