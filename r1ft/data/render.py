"""Dataset records -> example records: the user turn, the reasoning inside `<think>`, the final answer.

Three record shapes are understood (`record_shape` tells them apart):

- `mathcodeinstruct`: `{"messages": [{"role", "content": [{"type": "text"|"code"|"execution",
  "content"}]}]}`. Blocks become the reasoning in order (code as a ```python fence, execution output as
  an ```output fence); the sentence holding the last `\\boxed{...}` becomes the answer after `</think>`.
- `chat`: `{"messages": [{"role", "content": str}]}`, the assistant's content with `<think>...</think>`
  or without (then split as above).
- `scibench`: SciBench's keys, rendered by `r1ft.tasks.scibench` (worked solutions become training
  examples; main-file records become held-out test problems, never examples).

System prompts are folded into the user turn (the model card recommends none). A record that cannot be
rendered raises `BadRecord(reason, field)`; the caller counts it.

Example records are dicts: `id`, `source`, `problem` (the user turn), `reasoning`, `answer`, `gold`
(the last boxed content, may be ""), and `key` (the normalised problem, for dedup, split and the
contamination guard).
"""

from __future__ import annotations

import re
from typing import Any

from r1ft.chat import user_message
from r1ft.records import (
    BadRecord,
    as_object,
    clean_text,
    get_field,
    make_example,
    normalise_problem,
)
from r1ft.tasks.answers import braced, last_boxed

SHAPES = ("mathcodeinstruct", "chat", "scibench")
MCI_SHAPE = (
    '{"messages": [{"role": "system"|"user"|"assistant", "content": [{"type": "text"|"code"|"execution", '
    '"content": str}, ...]}, ...]}'
)
CHAT_SHAPE = '{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}'
BLOCK_TYPES = ("text", "code", "execution")


# --- the final answer ---------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?](?=\s)")
_ANSWER_END = re.compile(r"[.!?](?=\s|$)|\n[ \t]*\n")


def last_box_span(text: str) -> tuple[int, int, str] | None:
    """(start, end, content) of the last `\\boxed{...}` (nested braces kept); None if none or unclosed."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = start + len("\\boxed")
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    group = braced(text, i)
    return None if group is None else (start, group[1], group[0].strip())


def answer_sentence(text: str) -> tuple[int, int] | None:
    """(start, end) of the sentence holding the last `\\boxed{...}` of `text`, delimiters included.

    The sentence starts after the last `.`/`!`/`?` + whitespace before the box and ends at the first
    such terminator after it (or a blank line, or the end of the text).
    """
    span = last_box_span(text)
    if span is None:
        return None
    box_start, box_end, _ = span
    start = 0
    for m in _SENTENCE_END.finditer(text, 0, box_start):
        start = m.end()
    m = _ANSWER_END.search(text, box_end)
    end = len(text) if m is None else (m.end() if m.group(0)[0] in ".!?" else m.start())
    while start < box_start and text[start].isspace():
        start += 1
    return start, end


def split_final_answer(blocks: list[tuple[str, str]], field: str) -> tuple[str, str, str]:
    """(reasoning, answer, gold) from rendered blocks `(type, text)` of one assistant turn.

    The answer is the sentence holding the last `\\boxed{...}` of the text blocks. When nothing but
    whitespace follows it, it moves out of the reasoning (reasoning + answer = the whole turn, nothing
    lost or repeated); when more follows (a check, a remark), the reasoning keeps the whole turn and the
    answer repeats the sentence.
    """
    where = next(
        (i for i in range(len(blocks) - 1, -1, -1) if blocks[i][0] == "text" and "\\boxed" in blocks[i][1]),
        None,
    )
    if where is None:
        raise BadRecord("no_final_answer", field, "no \\boxed{...} in the assistant's text")
    text = blocks[where][1]
    span = last_box_span(text)
    sentence = answer_sentence(text)
    if span is None or sentence is None:
        raise BadRecord("no_final_answer", field, "the last \\boxed has no closed {...}")
    if not span[2]:
        raise BadRecord("empty_answer", field, "\\boxed{} is empty")
    start, end = sentence
    answer = text[start:end].strip()
    whole = "\n\n".join(b[1] for b in blocks if b[1])
    tail = text[end:].strip() + "".join(b[1] for b in blocks[where + 1 :]).strip()
    before = [b[1] for b in blocks[:where] if b[1]] + [text[:start].strip()]
    reasoning = "\n\n".join(t for t in before if t)
    if tail or not reasoning:
        reasoning = whole
    return reasoning, answer, span[2]


# --- record shapes ------------------------------------------------------------------------------------


def record_shape(record: Any) -> str:
    """Which shape a record has ('mathcodeinstruct', 'chat' or 'scibench'); BadRecord when none fits."""
    if not isinstance(record, dict):
        raise BadRecord("wrong_type", "<record>", f"expected an object, got {type(record).__name__}")
    if "messages" in record:
        messages = get_field(record, "messages", "", list)
        if not messages:
            raise BadRecord("unsupported_shape", "messages", "no messages")
        first = messages[0]
        if not isinstance(first, dict):
            raise BadRecord("wrong_type", "messages[0]", f"expected an object, got {type(first).__name__}")
        content = get_field(first, "content", "messages[0].", (list, str))
        return "chat" if isinstance(content, str) else "mathcodeinstruct"
    if "problem_text" in record:
        return "scibench"
    raise BadRecord("missing_field", "messages", "neither 'messages' nor 'problem_text' is present")


def _turns(messages: list, content_kind: type, parse=None) -> tuple[list, list, list]:
    """The system, user and assistant contents of a one-question conversation, as (index, content);
    `parse(index, content)` checks and converts each content before the turns are counted."""
    turns: dict[str, list] = {"system": [], "user": [], "assistant": []}
    for i, message in enumerate(messages):
        path = f"messages[{i}]."
        if not isinstance(message, dict):
            raise BadRecord(
                "wrong_type", f"messages[{i}]", f"expected an object, got {type(message).__name__}"
            )
        role = get_field(message, "role", path, str)
        content = get_field(message, "content", path, content_kind)
        if role not in turns:
            raise BadRecord("unsupported_shape", f"{path}role", f"unknown role {role!r}")
        turns[role].append((i, parse(i, content) if parse else content))
    if len(turns["user"]) != 1 or len(turns["assistant"]) != 1:
        raise BadRecord(
            "unsupported_shape",
            "messages",
            f"expected one user and one assistant turn, got {len(turns['user'])} and "
            f"{len(turns['assistant'])}",
        )
    return turns["system"], turns["user"], turns["assistant"]


def _block_text(block: Any, path: str) -> tuple[str, str]:
    if not isinstance(block, dict):
        raise BadRecord("wrong_type", path, f"expected a block object, got {type(block).__name__}")
    kind = get_field(block, "type", f"{path}.", str)
    content = get_field(block, "content", f"{path}.", str)
    if kind not in BLOCK_TYPES:
        raise BadRecord("wrong_type", f"{path}.type", f"unknown block type {kind!r}")
    return kind, content


def _render_block(kind: str, content: str) -> str:
    """A block as reasoning text: prose as is, code and its output as fences."""
    if kind == "text":
        return clean_text(content)
    body = content.replace("\r\n", "\n").strip("\n").rstrip()
    if kind == "code":
        return f"```python\n{body}\n```"
    return f"```output\n{body}\n```" if body.strip() else "```output\n```"


def _user_turn(system: list[str], user: str, field: str) -> tuple[str, str]:
    """(user turn, key): the system prompt folded in before the problem, then the instruction."""
    problem = clean_text(user)
    if not problem:
        raise BadRecord("empty_text", field, "the user turn is empty")
    folded = "\n\n".join([*(clean_text(s) for s in system if s.strip()), problem])
    return user_message(folded), normalise_problem(problem)


def _blocks(i: int, content: list) -> list[tuple[str, str]]:
    return [_block_text(b, f"messages[{i}].content[{j}]") for j, b in enumerate(content)]


def render_mathcodeinstruct(record: Any) -> dict:
    """A MathCodeInstruct record (text/code/execution blocks) as an example record."""
    messages = get_field(as_object(record), "messages", "", list)
    system, user, assistant = _turns(messages, list, _blocks)
    system_text = ["\n\n".join(text for _, text in blocks) for _, blocks in system]
    (ui, ublocks), (ai, ablocks) = user[0], assistant[0]
    user_text = "\n\n".join(text for _, text in ublocks)
    problem, key = _user_turn(system_text, user_text, f"messages[{ui}].content")
    rendered = [(kind, _render_block(kind, content)) for kind, content in ablocks]
    if not any(text for _, text in rendered):
        raise BadRecord("empty_text", f"messages[{ai}].content", "the assistant turn is empty")
    reasoning, answer, gold = split_final_answer(rendered, f"messages[{ai}].content")
    return make_example("mathcodeinstruct", key, problem, reasoning, answer, gold)


def render_chat(record: Any) -> dict:
    """A chat record (string contents; `<think>...</think>` optional) as an example record."""
    messages = get_field(as_object(record), "messages", "", list)
    system, user, assistant = _turns(messages, str)
    (ui, ucontent), (ai, acontent) = user[0], assistant[0]
    problem, key = _user_turn([c for _, c in system], ucontent, f"messages[{ui}].content")
    field = f"messages[{ai}].content"
    content = clean_text(acontent)
    if "</think>" in content:
        thought, _, answer = content.rpartition("</think>")
        reasoning = clean_text(thought.replace("<think>", "", 1))
        answer = answer.strip()
        if not answer:
            raise BadRecord("empty_answer", field, "nothing after </think>")
        return make_example("chat", key, problem, reasoning, answer, last_boxed(answer) or "")
    if not content:
        raise BadRecord("empty_text", field, "the assistant turn is empty")
    reasoning, answer, gold = split_final_answer([("text", content)], field)
    return make_example("chat", key, problem, reasoning, answer, gold)
