"""Training-signal correctness at the token level, with the real chat template and special tokens."""

from __future__ import annotations

from r1ft import chat
from r1ft.model.tiny import ASSISTANT, BOS, EOS, THINK, USER

PROBLEM = chat.user_message("Solve for x: 3x + 5 = 20")
REASONING = "Subtract 5: 3x = 15.\nDivide by 3: x = 5."
ANSWER = "The answer is \\boxed{5}."


def test_prompt_is_exactly_the_inference_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    expected = tok.apply_chat_template(
        [{"role": "user", "content": PROBLEM}], tokenize=False, add_generation_prompt=True
    )
    assert chat.prompt_text(tok, PROBLEM) == expected
    assert expected == f"{BOS}{USER}{PROBLEM}{ASSISTANT}{THINK}\n"
    ex = chat.tokenize_example(tok, PROBLEM, REASONING, ANSWER)
    n = len(chat.prompt_ids(tok, PROBLEM))
    assert ex["input_ids"][:n] == tok(expected, add_special_tokens=False)["input_ids"]


def test_completion_reasoning_then_answer_then_eos_with_loss_only_there(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = chat.tokenize_example(tok, PROBLEM, REASONING, ANSWER)
    n = len(chat.prompt_ids(tok, PROBLEM))
    assert all(lab == chat.IGNORE_INDEX for lab in ex["labels"][:n])
    assert ex["labels"][n:] == ex["input_ids"][n:]
    assert chat.loss_text(tok, ex["input_ids"], ex["labels"]) == f"{REASONING}\n</think>\n\n{ANSWER}{EOS}"


def test_eos_carries_loss_although_pad_is_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    ex = chat.tokenize_example(tok, PROBLEM, REASONING, ANSWER)
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert ex["labels"][-1] == tok.eos_token_id


def test_exactly_one_bos(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = chat.tokenize_example(tok, PROBLEM, REASONING, ANSWER)
    assert ex["input_ids"][0] == tok.bos_token_id
    assert ex["input_ids"].count(tok.bos_token_id) == 1
    # The trap this avoids: tokenizing the rendered prompt with special tokens adds a second BOS.
    doubled = tok(chat.prompt_text(tok, PROBLEM))["input_ids"]
    assert doubled[:2] == [tok.bos_token_id, tok.bos_token_id]


def test_template_would_delete_reasoning_but_training_text_keeps_it(tiny_tokenizer):
    tok = tiny_tokenizer
    full = f"{REASONING}\n</think>\n\n{ANSWER}"
    via_template = tok.apply_chat_template(
        [{"role": "user", "content": PROBLEM}, {"role": "assistant", "content": full}], tokenize=False
    )
    assert REASONING not in via_template  # the template's split('</think>')[-1]
    ex = chat.tokenize_example(tok, PROBLEM, REASONING, ANSWER)
    assert REASONING in tok.decode(ex["input_ids"])


def test_user_message_follows_the_model_card():
    msg = chat.user_message("  A gas expands.  ", unit="kJ")
    assert msg == f"A gas expands. The unit of the answer is kJ.\n{chat.MATH_INSTRUCTION}"
    assert chat.user_message("x?") == f"x?\n{chat.MATH_INSTRUCTION}"


def test_tokenizer_roundtrip_is_lossless(tiny_tokenizer):
    text = "∫ x² dx = x³/3 + C; ΔH = −285.8 kJ/mol 🙂"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids) == text


# --- interpreter output and the loss ----------------------------------------------------------------------

CODE_REASONING = (
    "Add them.\n\n```python\nx = 2 + 3\nx\n```\n\n```output\n5\n```\n\nSo x is 5.\n\n"
    "```python\nprint(x * 2)\n```\n\n```output\n10\n```"
)


def _masked_runs(tok, ex: dict, n_prompt: int) -> list[str]:
    """The decoded runs of completion tokens that carry no loss."""
    runs, current = [], []
    for t, lab in zip(ex["input_ids"][n_prompt:], ex["labels"][n_prompt:], strict=True):
        if lab == chat.IGNORE_INDEX:
            current.append(t)
        elif current:
            runs.append(tok.decode(current))
            current = []
    return runs + ([tok.decode(current)] if current else [])


def test_interpreter_output_blocks_can_stay_in_the_context_without_loss(tiny_tokenizer):
    tok = tiny_tokenizer
    kept = chat.tokenize_example(tok, PROBLEM, CODE_REASONING, ANSWER)
    masked = chat.tokenize_example(tok, PROBLEM, CODE_REASONING, ANSWER, output_loss=False)
    n = len(chat.prompt_ids(tok, PROBLEM))
    assert masked["input_ids"] == kept["input_ids"]  # the same context
    assert (
        chat.loss_text(tok, kept["input_ids"], kept["labels"])
        == f"{CODE_REASONING}\n</think>\n\n{ANSWER}{EOS}"
    )
    runs = _masked_runs(tok, masked, n)
    assert [r.rstrip() for r in runs] == [
        "```output\n5\n```",
        "```output\n10\n```",
    ]  # the blocks, fences and all
    loss = chat.loss_text(tok, masked["input_ids"], masked["labels"])
    assert "```output" not in loss and "```python\nx = 2 + 3" in loss and "print(x * 2)" in loss
    assert loss.endswith(f"</think>\n\n{ANSWER}{EOS}") and masked["labels"][-1] == tok.eos_token_id


def test_token_kinds_follow_the_fences_by_offset():
    reasoning = "Hi\n\n```python\n1\n```\n\n```output\n1\n```"
    spans = chat.fence_spans(reasoning)
    assert [(reasoning[s:e], k) for s, e, k in spans] == [
        ("```python\n1\n```", chat.CODE),
        ("```output\n1\n```", chat.OUTPUT),
    ]
    # "Hi", "\n\n", "```python", "\n1", "\n```\n\n" (straddles the code fence's end), "```output", "\n1\n```", EOS
    offsets = [(0, 2), (2, 4), (4, 13), (13, 15), (15, 21), (21, 30), (30, 36), (36, 36)]
    kinds = chat.token_kinds(offsets, spans)
    assert list(kinds) == [chat.TEXT, chat.TEXT, chat.CODE, chat.CODE, chat.CODE, chat.OUTPUT, chat.OUTPUT,
                           chat.TEXT]  # fmt: skip
    assert chat.completion_labels([7] * 8, kinds, output_loss=False) == [7] * 5 + [chat.IGNORE_INDEX] * 2 + [
        7
    ]
