"""R1 chat rendering at the token level.

The training prompt is exactly the inference prompt (`apply_chat_template([user],
add_generation_prompt=True)`, ending `<｜Assistant｜><think>\\n`), so the completion starts inside the think
block: reasoning + `\\n</think>\\n\\n` + answer + EOS. Prompt and completion are tokenized separately with
`add_special_tokens=False` (the template already emits BOS; the post-processor would add a second one),
which is also how the model sees them at inference: prompt tokens, then generated tokens. Labels are -100
on the prompt and carry the completion including its EOS (PAD == EOS, so no pad-based masking is used).
The assistant turn is never rendered through the template, whose `split('</think>')[-1]` would delete
the reasoning.
"""

from __future__ import annotations

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
IGNORE_INDEX = -100


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


def prompt_ids(tokenizer, problem: str) -> list[int]:
    """Token ids of the inference prompt (exactly one BOS)."""
    return tokenizer(prompt_text(tokenizer, problem), add_special_tokens=False)["input_ids"]


def tokenize_example(tokenizer, problem: str, reasoning: str, answer: str) -> dict[str, list[int]]:
    """`input_ids` and `labels` of one training example; loss on the completion only, EOS included."""
    p_ids = prompt_ids(tokenizer, problem)
    c_ids = tokenizer(completion_text(reasoning, answer, tokenizer.eos_token), add_special_tokens=False)[
        "input_ids"
    ]
    return {"input_ids": p_ids + c_ids, "labels": [IGNORE_INDEX] * len(p_ids) + c_ids}


def loss_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """The decoded text of exactly the tokens that carry loss."""
    return tokenizer.decode([t for t, lab in zip(input_ids, labels, strict=True) if lab != IGNORE_INDEX])
