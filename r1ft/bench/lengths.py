"""The benchmark's sequences: lengths that follow the MathCodeInstruct-format sample, random token ids.

The length table (`assets/bench_lengths.json`) is derived once from the shared sample
(`../shared/data/mathcoder-sample/mathcodeinstruct_format_sample.jsonl`, 4,000 records) and kept in the
project, so the benchmark needs neither the data nor the real tokenizer. Each record is rendered the way
training renders it (`r1ft.data.render.render_mathcodeinstruct`, then the R1 prompt and completion of
`r1ft.chat`) and its tokens are *estimated*, because the real tokenizer cannot be downloaded here:
the text is split with the Qwen2 BPE pre-tokenizer's own regular expression (digits are single
pre-tokens, as in Qwen2), and each pre-token is costed: a letter run of up to 9 letters is one token
(longer ones one more per 5 letters), a punctuation run one token per 3 characters, a whitespace run one
token; each special token counts one. This gives about 3.4 characters per token on this text (mean 459
tokens per example); the plain `characters / 3.2` rule gives 494. The benchmark's throughput does not
depend on the estimate, only its projection of the full run's time does (linearly in the mean).
"""

from __future__ import annotations

import json
import math
import random
from importlib import resources
from pathlib import Path

from r1ft.chat import completion_text
from r1ft.data.render import render_mathcodeinstruct
from r1ft.records import BadRecord

ASSET = "bench_lengths.json"
# Qwen2's pre-tokenizer pattern (tokenizer.json of Qwen2.5 / DeepSeek-R1-Distill-Qwen).
PRETOKEN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PROMPT_SPECIALS = 3  # BOS, <｜User｜>, <｜Assistant｜> (+ "<think>\n", counted as text)
COMPLETION_SPECIALS = 2  # </think>, EOS


def estimate_tokens(text: str) -> int:
    """Estimated Qwen2 BPE tokens of `text` (see the module docstring for the rule)."""
    import regex

    n = 0
    for match in regex.finditer(PRETOKEN, text):
        piece = match.group()
        letters = sum(c.isalpha() for c in piece)
        if letters:
            n += 1 if letters <= 9 else 1 + math.ceil((letters - 9) / 5)
        elif piece.isspace() or piece.isdigit():
            n += 1
        else:
            n += max(1, math.ceil(len(piece.strip()) / 3))
    return n


def derive_lengths(sample: Path) -> dict:
    """The length table of a MathCodeInstruct-format JSONL file: estimated prompt and completion tokens."""

    prompts, completions, skipped = [], [], 0
    for line in Path(sample).read_text(encoding="utf-8").splitlines():
        try:
            ex = render_mathcodeinstruct(json.loads(line))
        except (BadRecord, json.JSONDecodeError):
            skipped += 1
            continue
        prompts.append(PROMPT_SPECIALS + estimate_tokens(ex["problem"] + "<think>\n"))
        completion = completion_text(ex["reasoning"], ex["answer"], "").replace("</think>", "")
        completions.append(COMPLETION_SPECIALS + estimate_tokens(completion))
    return {
        "source": "mathcoder-sample/mathcodeinstruct_format_sample.jsonl (shared data), R1 rendering",
        "method": "Qwen2 pre-tokenizer regex + per-pre-token cost (r1ft.bench.lengths.estimate_tokens)",
        "skipped": skipped,
        "prompt": prompts,
        "completion": completions,
    }


def load_lengths() -> dict:
    """The length table kept in the project."""
    return json.loads(resources.files("r1ft.assets").joinpath(ASSET).read_text(encoding="utf-8"))


def usable_pairs(table: dict, max_len: int) -> list[tuple[int, int]]:
    """(prompt, completion) token counts of the examples the data policy keeps (`drop` above max_len)."""
    pairs = zip(table["prompt"], table["completion"], strict=True)
    return [(p, c) for p, c in pairs if p + c <= max_len]


def mean_tokens(table: dict, max_len: int) -> float:
    """Mean tokens per training example after the length policy."""
    pairs = usable_pairs(table, max_len)
    return sum(p + c for p, c in pairs) / len(pairs)


def draw_lengths(table: dict, n: int, seed: int, max_len: int, scale: float = 1.0) -> list[tuple[int, int]]:
    """`n` (prompt, completion) pairs drawn with replacement, seeded; `scale` shrinks them (tiny mode)."""
    pairs = usable_pairs(table, max_len)
    rng = random.Random(seed)
    drawn = [pairs[rng.randrange(len(pairs))] for _ in range(n)]
    if scale == 1.0:
        return drawn
    return [(max(2, round(p * scale)), max(2, round(c * scale))) for p, c in drawn]


def make_sequences(lengths: list[tuple[int, int]], vocab: int, seed: int) -> list[dict[str, list[int]]]:
    """Token ids for each (prompt, completion) pair; labels -100 on the prompt, loss on the completion.

    Ids come from a Zipf-like distribution over a random 4,096-id subset of the vocabulary, so the loss
    can fall as the adapter learns the frequent ids: the correctness check compares moving curves.
    """
    rng = random.Random(seed + 1)
    subset = rng.sample(range(vocab), min(vocab, 4096))
    weights = [1.0 / (rank + 10) for rank in range(len(subset))]
    rows = []
    for p, c in lengths:
        ids = rng.choices(subset, weights=weights, k=p + c)
        rows.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    return rows


def worst_case_sequences(n: int, max_len: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    """`n` sequences of exactly `max_len` tokens (for the peak-memory check)."""
    prompt = max(1, max_len // 8)
    return make_sequences([(prompt, max_len - prompt)] * n, vocab, seed)
