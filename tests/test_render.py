"""Record -> example rendering: MathCodeInstruct blocks, chat form, SciBench, answers, bad records."""

from __future__ import annotations

import json

import pytest

from r1ft.chat import MATH_INSTRUCTION
from r1ft.data.render import (
    answer_sentence,
    record_shape,
    render_chat,
    render_mathcodeinstruct,
    split_final_answer,
)
from r1ft.data.sources import builtin_files
from r1ft.records import BadRecord, clean_text, normalise_problem, read_records
from r1ft.tasks.answers import last_boxed
from r1ft.tasks.scibench import prompt_unit, render_scibench_solution, scibench_test_record, scibench_value

SYSTEM = "Below is a math problem. Please solve it step by step."


def mci(problem: str, *blocks: tuple[str, str], system: str | None = SYSTEM) -> dict:
    """A record in MathCodeInstruct's shape."""
    messages = [{"role": "system", "content": [{"type": "text", "content": system}]}] if system else []
    messages.append({"role": "user", "content": [{"type": "text", "content": problem}]})
    messages.append({"role": "assistant", "content": [{"type": t, "content": c} for t, c in blocks]})
    return {"messages": messages}


def sci(**overrides) -> dict:
    """A SciBench `_sol` record, padded and with `\\r\\n` as the real files are."""
    record = {
        "problem_text": " A gas expands.\r\nFind the work. ",
        "answer_latex": " -1.72",
        "answer_number": "-1.72 ",
        "unit": " $\\mathrm{kJ}$\r\n",
        "source": "atkins ",
        "problemid": " 2.3",
        "comment": " ",
        "solution": "  $w=-n R T \\ln 2$\r\n$$\r\nw=-1.72 \\mathrm{~kJ}\r\n$$\r\n",
    }
    return {**record, **overrides}


# --- text helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("What is 2+2?", "what is  2+2 ?"[:0] + "WHAT IS 2+2?"),
        ("A $2.0$ kg block", "a 2.0 kg   block"),
        ("Line one\r\nline two.", "line one line two"),
        ("x\\,=\\;3~m", "x = 3 m"),
        ("ﬁnd the value", "find the value"),  # NFKC: the ligature
    ],
)
def test_normalise_problem_equates_presentation_variants(a, b):
    assert normalise_problem(a) == normalise_problem(b)


@pytest.mark.parametrize(("a", "b"), [("What is 2+3?", "What is 2+4?"), ("x^2", "x^3"), ("10 kg", "100 kg")])
def test_normalise_problem_keeps_different_problems_apart(a, b):
    assert normalise_problem(a) != normalise_problem(b)


def test_clean_text_normalises_line_ends_and_trims():
    assert clean_text("  a  \r\nb\rc \r\n\r\n") == "a\nb\nc"


# --- the final answer -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("We add. So the sum is \\(\\boxed{14}\\).", "So the sum is \\(\\boxed{14}\\)."),
        (
            "The gcd of 76 and 15922 is \n\n\\[\n\\boxed{38}\n\\]",
            "The gcd of 76 and 15922 is \n\n\\[\n\\boxed{38}\n\\]",
        ),
        ("It is \\( n = 26 \\).\n\n\\[\n\\boxed{26}\n\\]", "\\[\n\\boxed{26}\n\\]"),
        ("\\boxed{\\frac{3}{4}}", "\\boxed{\\frac{3}{4}}"),
        (
            "First \\boxed{1}. Then the answer is \\boxed{2} dollars. Check done.",
            "Then the answer is \\boxed{2} dollars.",
        ),
        ("It costs \\(\\boxed{\\$3.50}\\) in all!", "It costs \\(\\boxed{\\$3.50}\\) in all!"),
        ("x is \\boxed{5}\n\nThis can be checked.", "x is \\boxed{5}"),
    ],
)
def test_answer_sentence_is_the_sentence_of_the_last_box(text, sentence):
    start, end = answer_sentence(text)
    assert text[start:end] == sentence


@pytest.mark.parametrize(
    ("blocks", "reasoning", "answer", "gold"),
    [
        # the usual ending: the boxed sentence moves after </think>; nothing is lost or repeated
        (
            [("text", "Add them."), ("code", "```python\n1+1\n```"), ("text", "So it is \\(\\boxed{2}\\).")],
            "Add them.\n\n```python\n1+1\n```",
            "So it is \\(\\boxed{2}\\).",
            "2",
        ),
        # prose before the boxed sentence in the same block stays in the reasoning
        (
            [("text", "It is 12. Thus \\(\\boxed{12}\\).")],
            "It is 12.",
            "Thus \\(\\boxed{12}\\).",
            "12",
        ),
        # a check after the answer: the reasoning keeps everything, the answer repeats the sentence
        (
            [("text", "So \\(\\boxed{1}\\)."), ("code", "```python\nassert True\n```")],
            "So \\(\\boxed{1}\\).\n\n```python\nassert True\n```",
            "So \\(\\boxed{1}\\).",
            "1",
        ),
        # the box alone: the reasoning keeps it (an empty think would teach skipping the reasoning)
        ([("text", "\\boxed{7}")], "\\boxed{7}", "\\boxed{7}", "7"),
        # nested braces and the last of several boxes
        (
            [("text", "Maybe \\boxed{1}. No: the answer is \\boxed{\\frac{1}{\\sqrt{2}}}.")],
            "Maybe \\boxed{1}.",
            "No: the answer is \\boxed{\\frac{1}{\\sqrt{2}}}.",
            "\\frac{1}{\\sqrt{2}}",
        ),
    ],
)
def test_split_final_answer(blocks, reasoning, answer, gold):
    assert split_final_answer(blocks, "f") == (reasoning, answer, gold)


@pytest.mark.parametrize(
    ("blocks", "reason"),
    [
        ([("text", "The answer is 5.")], "no_final_answer"),
        ([("text", "The answer is \\boxed{5")], "no_final_answer"),
        ([("text", "It is \\boxed{ }.")], "empty_answer"),
        ([("code", "print('\\\\boxed{5}')")], "no_final_answer"),  # a box inside code is not an answer
    ],
)
def test_split_final_answer_refuses(blocks, reason):
    with pytest.raises(BadRecord) as e:
        split_final_answer(blocks, "f")
    assert e.value.reason == reason


# --- MathCodeInstruct -----------------------------------------------------------------------------------


def test_mathcodeinstruct_rendering_is_faithful():
    record = mci(
        "Tom has 5 apples and buys 7. How many?\r\n",
        ("text", "Add the two amounts.  "),
        ("code", "apples = 5 + 7\nprint(apples)\n"),
        ("execution", "12\n"),
        ("text", "We got 12.\n\nTom has \\(\\boxed{12}\\) apples."),
    )
    ex = render_mathcodeinstruct(record)
    assert ex["source"] == "mathcodeinstruct"
    assert ex["problem"] == f"{SYSTEM}\n\nTom has 5 apples and buys 7. How many?\n{MATH_INSTRUCTION}"
    assert ex["reasoning"] == (
        "Add the two amounts.\n\n```python\napples = 5 + 7\nprint(apples)\n```\n\n"
        "```output\n12\n```\n\nWe got 12."
    )
    assert ex["answer"] == "Tom has \\(\\boxed{12}\\) apples."
    assert ex["gold"] == "12"
    assert ex["key"] == normalise_problem("Tom has 5 apples and buys 7. How many?")
    assert ex["id"].startswith("mathcodeinstruct-") and ex["id"] == render_mathcodeinstruct(record)["id"]


def test_mathcodeinstruct_without_system_prompt_and_with_empty_output():
    ex = render_mathcodeinstruct(
        mci("Q?", ("code", "x = 1"), ("execution", ""), ("text", "So \\boxed{1}."), system=None)
    )
    assert ex["problem"] == f"Q?\n{MATH_INSTRUCTION}"
    assert ex["reasoning"] == "```python\nx = 1\n```\n\n```output\n```"


def _messages(record: dict) -> list:
    return record["messages"]


@pytest.mark.parametrize(
    ("mutate", "reason", "field"),
    [
        (lambda r: r.pop("messages"), "missing_field", "messages"),
        (lambda r: r.update(messages="hi"), "wrong_type", "messages"),
        (lambda r: _messages(r)[2].update(content="plain text"), "wrong_type", "messages[2].content"),
        (
            lambda r: _messages(r)[2]["content"][0].update(type="image"),
            "wrong_type",
            "messages[2].content[0].type",
        ),
        (
            lambda r: _messages(r)[2]["content"][0].pop("content"),
            "missing_field",
            "messages[2].content[0].content",
        ),
        (
            lambda r: _messages(r)[2]["content"][0].update(content=None),
            "wrong_type",
            "messages[2].content[0].content",
        ),
        (lambda r: _messages(r).pop(2), "unsupported_shape", "messages"),
        (lambda r: _messages(r).append(_messages(r)[1]), "unsupported_shape", "messages"),
        (lambda r: _messages(r)[1]["content"][0].update(content="  "), "empty_text", "messages[1].content"),
        (lambda r: _messages(r)[2].update(content=[]), "empty_text", "messages[2].content"),
        (
            lambda r: _messages(r)[2]["content"][0].update(content="No box."),
            "no_final_answer",
            "messages[2].content",
        ),
        (
            lambda r: _messages(r)[2]["content"][0].update(content="\\boxed{}"),
            "empty_answer",
            "messages[2].content",
        ),
        (
            lambda r: _messages(r)[1]["content"][0].update(content="bad \ud800"),
            "undecodable_text",
            "messages",
        ),
        (lambda r: _messages(r)[0].update(role="tool"), "unsupported_shape", "messages[0].role"),
    ],
)
def test_mathcodeinstruct_bad_records(mutate, reason, field):
    record = mci("Q?", ("text", "So \\boxed{1}."))
    mutate(record)
    with pytest.raises(BadRecord) as e:
        render_mathcodeinstruct(record)
    assert (e.value.reason, e.value.field) == (reason, field)


def test_builtin_mathcodeinstruct_samples_render_losslessly():
    """Every block of every shipped sample appears in the reasoning or the answer, in order."""
    (path,) = builtin_files("mathcodeinstruct")
    records = [r for _, r in read_records(path)]
    assert len(records) == 24
    for record in records:
        ex = render_mathcodeinstruct(record)
        whole = "".join((ex["reasoning"] + ex["answer"]).split())  # whitespace aside
        pos = 0
        for block in record["messages"][2]["content"]:
            found = whole.find("".join(block["content"].split()), pos)
            assert found >= 0, (block, ex)
            pos = found
        assert ex["gold"] == last_boxed(ex["answer"])


# --- chat form --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("assistant", "reasoning", "answer", "gold"),
    [
        ("<think>\nAdd.\n</think>\n\nIt is \\boxed{4}.", "Add.", "It is \\boxed{4}.", "4"),
        ("Add.\n</think>\nFour.", "Add.", "Four.", ""),  # no box after </think>: gold unknown, kept
        ("Add 2 and 2. The answer is \\boxed{4}.", "Add 2 and 2.", "The answer is \\boxed{4}.", "4"),
    ],
)
def test_chat_form(assistant, reasoning, answer, gold):
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": assistant},
        ]
    }
    ex = render_chat(record)
    assert (ex["source"], ex["reasoning"], ex["answer"], ex["gold"]) == ("chat", reasoning, answer, gold)
    assert ex["problem"] == f"Be brief.\n\nWhat is 2+2?\n{MATH_INSTRUCTION}"


@pytest.mark.parametrize(
    ("assistant", "reason"),
    [("<think>x</think>\n  ", "empty_answer"), ("no answer here", "no_final_answer"), ("", "empty_text")],
)
def test_chat_form_bad(assistant, reason):
    record = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": assistant}]}
    with pytest.raises(BadRecord) as e:
        render_chat(record)
    assert e.value.reason == reason


@pytest.mark.parametrize(
    ("record", "shape"),
    [
        (mci("Q", ("text", "\\boxed{1}")), "mathcodeinstruct"),
        ({"messages": [{"role": "user", "content": "Q"}]}, "chat"),
        (sci(), "scibench"),
    ],
)
def test_record_shape(record, shape):
    assert record_shape(record) == shape


@pytest.mark.parametrize(
    "record", [[1, 2], {"question": "Q", "answer": "A"}, {"messages": []}, {"messages": [3]}]
)
def test_record_shape_refuses_other_shapes(record):
    with pytest.raises(BadRecord):
        record_shape(record)


# --- SciBench -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "shown", "value"),
    [
        (" $\\mathrm{kJ}$", "$\\mathrm{kJ}$", "2.5"),
        ("$10^{-19} \\mathrm{~J}$", "$\\mathrm{~J}$", "2.5 \\times 10^{-19}"),
        (" $10^{-5}~\\mathrm{m^2~s^{-1}}$", "$~\\mathrm{m^2~s^{-1}}$", "2.5 \\times 10^{-5}"),
        ("$10^{42}$", "$10^{42}$", "2.5"),  # a bare power of ten is named whole, as SciBench does
        (" $10^6$ m", "m", "2.5 \\times 10^{6}"),
        (" 10^{-5} \\mathrm{~m}", "\\mathrm{~m}", "2.5 \\times 10^{-5}"),
        ("", "", "2.5"),
        (" s", "s", "2.5"),
    ],
)
def test_units_and_powers_of_ten(unit, shown, value):
    unit = " ".join(unit.split())
    assert prompt_unit(unit) == shown
    assert scibench_value("2.5", unit) == value


def test_scibench_solution_rendering():
    ex = render_scibench_solution(sci())
    assert ex["source"] == "scibench"
    assert (
        ex["problem"]
        == f"A gas expands.\nFind the work. The unit of the answer is $\\mathrm{{kJ}}$.\n{MATH_INSTRUCTION}"
    )
    assert ex["reasoning"] == "$w=-n R T \\ln 2$\n$$\nw=-1.72 \\mathrm{~kJ}\n$$"
    assert ex["answer"] == "The answer is $\\boxed{-1.72}$ $\\mathrm{kJ}$."
    assert ex["gold"] == "-1.72"
    assert ex["id"].startswith("scibench-atkins_2.3-")
    assert "\r" not in ex["problem"] + ex["reasoning"] + ex["answer"]


def test_scibench_power_of_ten_answer_is_the_absolute_value():
    ex = render_scibench_solution(sci(answer_number=" 3.20", unit=" $10^{-19} \\mathrm{~J}$"))
    assert ex["answer"] == "The answer is $\\boxed{3.20 \\times 10^{-19}}$ $\\mathrm{~J}$."
    assert "The unit of the answer is $\\mathrm{~J}$." in ex["problem"]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"solution": None}, "wrong_type"),
        ({"solution": " \r\n "}, "empty_text"),
        ({"answer_number": "about five"}, "no_final_answer"),
        ({"answer_number": " "}, "empty_answer"),
        ({"problem_text": ""}, "empty_text"),
        ({"unit": 3}, "wrong_type"),
    ],
)
def test_scibench_bad_records(overrides, reason):
    with pytest.raises(BadRecord) as e:
        render_scibench_solution(sci(**overrides))
    assert e.value.reason == reason


def test_scibench_missing_solution_and_numeric_answer():
    record = sci()
    del record["solution"]
    with pytest.raises(BadRecord) as e:
        render_scibench_solution(record)
    assert (e.value.reason, e.value.field) == ("missing_field", "solution")
    assert render_scibench_solution(sci(answer_number=-1.72))["gold"] == "-1.72"
    assert render_scibench_solution(sci(answer_number="\u22121.72"))["gold"] == "-1.72"  # Unicode minus


def test_scibench_test_record():
    record = sci(unit=" $10^{-19} \\mathrm{~J}$\r\n")
    del record["solution"]
    t = scibench_test_record(record)
    assert set(t) == {"problem_text", "answer_number", "unit", "source", "problemid", "problem"}
    assert t["problem_text"] == "A gas expands.\nFind the work."
    assert (t["answer_number"], t["unit"], t["source"], t["problemid"]) == (
        "-1.72",
        "$10^{-19} \\mathrm{~J}$",
        "atkins",
        "2.3",
    )
    assert t["problem"].endswith(f"The unit of the answer is $\\mathrm{{~J}}$.\n{MATH_INSTRUCTION}")


# --- the real files (when ../shared/data is beside the repo) -------------------------------------------


def test_real_mathcodeinstruct_sample_renders_faithfully(shared_data):
    path = shared_data / "mathcoder-sample" / "mathcodeinstruct_format_sample.jsonl"
    n = 0
    for _, record in read_records(path):
        ex = render_mathcodeinstruct(record)
        blocks = record["messages"][2]["content"]
        full = "\n\n".join(b["content"] for b in blocks if b["type"] == "text")
        assert ex["gold"] == last_boxed(full), json.dumps(record)[:300]
        assert "\\boxed" in ex["answer"]
        codes = [b["content"].replace("\r\n", "\n").strip() for b in blocks if b["type"] == "code"]
        pos = 0
        for code in codes:
            pos = ex["reasoning"].index(code, pos)
        assert ex["reasoning"].count("```python\n") >= len(codes)
        n += 1
    assert n == 4000


def test_real_scibench_solutions_render(shared_data):
    n = 0
    for path in sorted((shared_data / "scibench").glob("*_sol.json")):
        for _, record in read_records(path):
            ex = render_scibench_solution(record)
            assert "\r" not in ex["reasoning"] and ex["reasoning"] == ex["reasoning"].strip()
            assert ex["answer"].startswith("The answer is $\\boxed{")
            n += 1
    assert n == 112


def test_scibench_training_answers_score_correct_under_scibench_scoring():
    """The boxed answer of every shipped solution is what SciBench's scorer (r1ft.tasks.answers) accepts."""
    from r1ft.tasks.scibench import scibench_correct

    for path in sorted((builtin_files("scibench")[0].parent).glob("*_sol.json")):
        for _, record in read_records(path):
            ex = render_scibench_solution(record)
            assert scibench_correct(ex["answer"], record["answer_number"], record["unit"]), ex["answer"]


def test_real_scibench_training_answers_score_correct(shared_data):
    from r1ft.tasks.scibench import scibench_correct

    for path in sorted((shared_data / "scibench").glob("*_sol.json")):
        for _, record in read_records(path):
            ex = render_scibench_solution(record)
            assert scibench_correct(ex["answer"], record["answer_number"], record["unit"]), ex["answer"]
