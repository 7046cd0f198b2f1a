"""math-verify scoring of R1-style outputs: a table of real-shaped answers, truncation, timeouts, threads."""

from __future__ import annotations

import threading
import time

import pytest

from r1ft.tasks.problem import Verdict, answer_region
from r1ft.tasks.verify import Answer, parse_gold, run_with_deadline, score_all, score_answer


def r1(reasoning: str, answer: str) -> str:
    """An R1-distill output: the reasoning (the prompt already opened `<think>\\n`), close, the answer."""
    return f"{reasoning}\n</think>\n\n{answer}"


FRACTION = r1(
    "Okay, so I need to find f(-2) + f(-1) + f(0) for f(x) = (3x-2)/(x-2).\n"
    "f(-2) = -8/-4 = 2, f(-1) = 5/3, f(0) = 1. Sum: 2 + 5/3 + 1 = 14/3. Wait, let me double-check... yes.",
    "To find $f(-2) + f(-1) + f(0)$:\n\n1. $f(-2) = 2$\n2. $f(-1) = \\dfrac{5}{3}$\n3. $f(0) = 1$\n\n"
    "Adding these together:\n\\[\n2 + \\frac{5}{3} + 1 = \\frac{14}{3}\n\\]\n\n"
    "**Final Answer**\n\\[\n\\boxed{\\dfrac{14}{3}}\n\\]",
)
THINK_ONLY = (
    "Okay, let me compute. 2 + 5/3 + 1 = 14/3, so the answer is \\boxed{\\frac{14}{3}}.\n</think>\n\n"
    "The value is fourteen thirds."
)
LAST_OF_TWO = r1(
    "Maybe \\boxed{2}?", "First guess $\\boxed{2}$. Checking every case again carefully, it is $\\boxed{3}$."
)
CODE = r1(
    "Let me check with Python.\n```python\nprint(2 + 5/3 + 1)\n```\n```output\n4.666666666666667\n```",
    "So the sum is $\\boxed{\\frac{14}{3}}$.",
)

# (output, gold, finished, correct, method)
TABLE = [
    (FRACTION, "\\frac{14}{3}", True, True, "boxed"),  # \dfrac in a display box after </think>
    (r1("...", "The answer is $\\boxed{\\frac{14}{3}}$."), "\\frac{14}{3}", True, True, "boxed"),
    (r1("...", "$\\boxed{4.67}$"), "\\frac{14}{3}", True, False, "boxed"),  # a rounded value is not 14/3
    (r1("...", "$\\boxed{\\frac{28}{6}}$"), "\\frac{14}{3}", True, True, "boxed"),  # equal, unsimplified
    (THINK_ONLY, "\\frac{14}{3}", True, False, "no-box"),  # boxed only inside the think block
    (FRACTION, "\\frac{14}{3}", False, False, "truncated"),  # cut at the token cap: never read
    (
        "Let me think... the sum is \\boxed{\\frac{14}{3}}",
        "\\frac{14}{3}",
        True,
        True,
        "boxed",
    ),  # no </think>
    (r1("...", "$\\boxed{\\frac{14}{3}$"), "\\frac{14}{3}", True, False, "no-box"),  # never closed
    (CODE, "\\frac{14}{3}", True, True, "boxed"),
    # several boxes: the final one counts; boxes right next to each other form one answer
    (LAST_OF_TWO, "3", True, True, "boxed"),
    (r1("...", "The solutions are $\\boxed{1}$ and $\\boxed{-2}$."), "1,-2", True, True, "boxed"),
    (r1("...", "$\\boxed{-2, 1}$"), "1,-2", True, True, "boxed"),
    (r1("...", "$\\boxed{1}$"), "1,-2", True, False, "boxed"),  # half an answer
    (r1("...", "$\\boxed{7, 5, 3}$"), "3, 5, 7", True, True, "boxed"),
    # units, \text{}, degrees, percent, bases
    (r1("...", "The height is $\\boxed{5 \\text{ cm}}$."), "5", True, True, "boxed"),
    (r1("...", "$\\boxed{42\\text{ inches}}$"), "42", True, True, "boxed"),
    (r1("...", "$\\boxed{\\text{Evelyn}}$"), "\\text{Evelyn}", True, True, "boxed"),
    (r1("...", "$\\boxed{\\text{Carla}}$"), "\\text{Evelyn}", True, False, "boxed"),
    (r1("...", "$\\boxed{90^\\circ}$"), "90^\\circ", True, True, "boxed"),
    (r1("...", "$\\boxed{90}$"), "90^\\circ", True, True, "boxed"),
    (r1("...", "$\\boxed{10\\%}$"), "10", True, True, "boxed"),
    (r1("...", "$\\boxed{52_8}$"), "52_8", True, True, "boxed"),
    # equations, tuples, intervals, symbols, complex numbers, radicals
    (r1("...", "$\\boxed{x = 5}$"), "x=5", True, True, "boxed"),
    (r1("...", "$\\boxed{5}$"), "x=5", True, True, "boxed"),
    (r1("...", "$\\boxed{x = 5}$"), "5", True, True, "boxed"),
    (
        r1("...", "$\\boxed{(3, \\frac{\\pi}{2})}$"),
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        True,
        True,
        "boxed",
    ),
    (r1("...", "$\\boxed{(3, \\pi)}$"), "\\left( 3, \\frac{\\pi}{2} \\right)", True, False, "boxed"),
    (r1("...", "$\\boxed{[1, 3)}$"), "[1,3)", True, True, "boxed"),
    (r1("...", "$\\boxed{(1, 3]}$"), "[1,3)", True, False, "boxed"),
    (r1("...", "$\\boxed{p - q}$"), "p - q", True, True, "boxed"),
    (r1("...", "$\\boxed{q - p}$"), "p - q", True, False, "boxed"),
    (r1("...", "$\\boxed{6-5i}$"), "6 - 5i", True, True, "boxed"),
    (r1("...", "$\\boxed{11\\sqrt{2}}$"), "11\\sqrt2", True, True, "boxed"),
    (r1("...", "$\\boxed{\\sqrt{242}}$"), "11\\sqrt2", True, True, "boxed"),
    (r1("...", "$\\boxed{1.25}$"), "1.25", True, True, "boxed"),
    (r1("...", "$\\boxed{\\frac{5}{4}}$"), "1.25", True, True, "boxed"),
    (r1("...", "The answer is 5."), "5", True, False, "no-box"),  # the instruction asks for a box
]


@pytest.mark.parametrize(("text", "gold", "finished", "correct", "method"), TABLE)
def test_r1_outputs_are_scored_as_math_verify_reads_their_last_box(text, gold, finished, correct, method):
    v = score_answer(Answer("p", 0, gold, text, finished, 123))
    assert (v.correct, v.method) == (correct, method)
    assert v.finished is finished and v.truncated is (not finished) and v.new_tokens == 123


def test_verdict_flags_and_extracted_answer():
    v = score_answer(Answer("test/algebra/2584.json", 2, "\\frac{14}{3}", FRACTION, True, 900))
    assert v == Verdict("test/algebra/2584.json", 2, True, "\\frac{14}{3}", True, True, False, "boxed", 900)
    code = score_answer(Answer("p", 0, "\\frac{14}{3}", CODE, True, 50))
    assert code.used_code and code.think_closed
    bare = score_answer(Answer("p", 0, "5", "so \\boxed{5}", True, 5))
    assert bare.correct and not bare.think_closed and not bare.used_code
    truncated = score_answer(Answer("p", 0, "5", "<think> still going \\boxed{5", False, 16384))
    assert truncated.to_json()["truncated"] is True and truncated.extracted is None


def test_answer_region_is_after_the_last_think_close_or_everything():
    assert answer_region("a</think>b</think> c") == " c"
    assert answer_region("no close") == "no close"
    assert answer_region("reasoning</think>") == ""


def test_every_sample_gold_parses_and_an_empty_gold_is_reported():
    assert parse_gold("\\left( 3, \\frac{\\pi}{2} \\right)")
    v = score_answer(Answer("p", 0, "", r1("...", "$\\boxed{3}$"), True, 1))
    assert (v.correct, v.method) == (False, "gold-unparsed")


ANSWERS = [
    Answer(str(i), 0, gold, text, finished, 10) for i, (text, gold, finished, _, _) in enumerate(TABLE)
]


def test_worker_processes_agree_with_scoring_in_process_and_work_from_a_thread():
    expected = [(c, m) for *_, c, m in TABLE]
    assert [(v.correct, v.method) for v in score_all(ANSWERS, workers=0)] == expected
    got: list[Verdict] = []
    worker = threading.Thread(target=lambda: got.extend(score_all(ANSWERS, workers=2)))
    worker.start()
    worker.join(timeout=120)
    assert [(v.correct, v.method) for v in got] == expected
    assert [v.problem_id for v in got] == [a.problem_id for a in ANSWERS]


def test_in_process_scoring_refuses_threads_where_the_alarm_cannot_work():
    errors = []

    def run():
        try:
            score_answer(ANSWERS[0])
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert errors and "score_all" in errors[0]


def test_math_verify_timeout_scores_a_pathological_answer_wrong_not_forever():
    start = time.monotonic()
    v = score_answer(Answer("p", 0, "5", r1("...", "$\\boxed{2^{2^{2^{100}}}}$"), True, 1))
    assert not v.correct and time.monotonic() - start < 20


def sleep_then_echo(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_worker_past_its_deadline_is_killed_and_the_others_still_answer():
    start = time.monotonic()
    assert run_with_deadline(sleep_then_echo, [0.0, 60.0, 0.2, 0.0], 2, deadline_s=3.0) == [
        0.0,
        None,
        0.2,
        0.0,
    ]
    assert time.monotonic() - start < 30
