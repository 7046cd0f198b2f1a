"""R1 chat rendering at the token level.

The training prompt is exactly the inference prompt (`apply_chat_template([user],
add_generation_prompt=True)`, ending `<｜Assistant｜><think>\\n`), so the completion starts inside the think
block: reasoning + `\\n</think>\\n\\n` + answer + EOS. Prompt and completion are tokenized separately with
`add_special_tokens=False` (the template already emits BOS; the post-processor would add a second one),
which is also how the model sees them at inference: prompt tokens, then generated tokens. Labels are -100
on the prompt and carry the completion including its EOS (PAD == EOS, so no pad-based masking is used).
The assistant turn is never rendered through the template, whose `split('</think>')[-1]` would delete
the reasoning.

Each completion token also has a block kind (prose, code, or interpreter output: the ```python and ```output
fences of the reasoning, `r1ft.data.render`), from the tokenizer's character offsets. With the interpreter's
output kept out of the loss (`R1FT_INTERPRETER_OUTPUT_LOSS=false`), the tokens of an output block, its fences
included, stay in the input and get label -100; the answer and the EOS always carry loss.
"""

from __future__ import annotations

import re

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
IGNORE_INDEX = -100
# Block kinds of a token, one byte each (`token_kinds`): the prompt, then the completion's prose, code, output.
PROMPT, TEXT, CODE, OUTPUT = 0, 1, 2, 3
KIND_NAMES = {TEXT: "text", CODE: "code", OUTPUT: "output"}
# The fences `r1ft.data.render` writes: ```python\n...\n``` and ```output\n...\n``` (or ```output\n``` when empty).
_FENCES = (
    (OUTPUT, re.compile(r"```output\n.*?```", re.DOTALL)),
    (CODE, re.compile(r"```python\n.*?```", re.DOTALL)),
)


def user_message(problem: str, unit: str | None = None) -> str:
    """The user turn the model card recommends: the problem, SciBench's unit sentence, the instruction."""
    text = problem.strip()
    if unit and unit.strip():
        text += f" The unit of the answer is {unit.strip()}."
    return f"{text}\n{MATH_INSTRUCTION}"


def prompt_text(tokenizer, problem: str) -> str:
    """The inference prompt for one user turn (BOS + `<｜User｜>` + problem + `<｜Assistant｜><think>\\n`)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
    )


def completion_text(reasoning: str, answer: str, eos: str) -> str:
    """What the model must generate after the prompt: reasoning, close think, answer, EOS."""
    return f"{reasoning.strip()}\n</think>\n\n{answer.strip()}{eos}"


def fence_spans(reasoning: str) -> list[tuple[int, int, int]]:
    """(start, end, kind) of each code and output fence of the reasoning (character offsets): where the
    completion, which starts with the stripped reasoning, holds code and interpreter output."""
    text = reasoning.strip()
    return sorted((m.start(), m.end(), kind) for kind, pattern in _FENCES for m in pattern.finditer(text))


def token_kinds(offsets: list[tuple[int, int]], spans: list[tuple[int, int, int]]) -> bytes:
    """The block kind of each completion token from its character offsets: a token that overlaps a fence is
    of that fence's kind (so an output block's tokens, its fences included, are all OUTPUT), else TEXT."""
    kinds = bytearray([TEXT] * len(offsets))
    first = 0  # spans are sorted and disjoint, tokens in order: skip the spans that end before this token
    for i, (start, end) in enumerate(offsets):
        while first < len(spans) and spans[first][1] <= start:
            first += 1
        k = first
        while k < len(spans) and spans[k][0] < end:
            kinds[i] = max(kinds[i], spans[k][2])  # OUTPUT over CODE, should a token straddle both
            k += 1
    return bytes(kinds)


def completion_labels(ids: list[int], kinds: bytes, output_loss: bool) -> list[int]:
    """The completion's labels: every token, or every token but the interpreter's output."""
    if output_loss:
        return list(ids)
    return [IGNORE_INDEX if kind == OUTPUT else t for t, kind in zip(ids, kinds, strict=True)]


def prompt_ids(tokenizer, problem: str) -> list[int]:
    """Token ids of the inference prompt (exactly one BOS)."""
    return tokenizer(prompt_text(tokenizer, problem), add_special_tokens=False)["input_ids"]


def tokenize_example(
    tokenizer, problem: str, reasoning: str, answer: str, output_loss: bool = True
) -> dict[str, list[int]]:
    """`input_ids` and `labels` of one training example; loss on the completion only, EOS included (and not
    on the interpreter's output blocks unless `output_loss`)."""
    p_ids = prompt_ids(tokenizer, problem)
    encoded = tokenizer(
        completion_text(reasoning, answer, tokenizer.eos_token),
        add_special_tokens=False,
        return_offsets_mapping=True,
    )
    c_ids = encoded["input_ids"]
    kinds = token_kinds(encoded["offset_mapping"], fence_spans(reasoning))
    labels = completion_labels(c_ids, kinds, output_loss)
    return {"input_ids": p_ids + c_ids, "labels": [IGNORE_INDEX] * len(p_ids) + labels}


def loss_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """The decoded text of exactly the tokens that carry loss."""
    return tokenizer.decode([t for t, lab in zip(input_ids, labels, strict=True) if lab != IGNORE_INDEX])
