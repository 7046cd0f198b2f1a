"""Cleaning and mixing: the contamination guard, dedup, the seeded draw, the length policy, the split.

Every decision is a function of the normalised problem (and the seed for the draw), never of a position
in a shuffled list, so the same data always gives the same draw and the same split.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from r1ft.chat import (
    IGNORE_INDEX,
    PROMPT,
    completion_labels,
    completion_text,
    fence_spans,
    prompt_text,
    token_kinds,
)
from r1ft.data.sources import SOURCES
from r1ft.records import DataError

if TYPE_CHECKING:
    from r1ft.machine.signals import StopFlag

TOKENIZE_CHUNK = 2048


def digest(value: Any) -> str:
    """sha256 hex of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def guard_contamination(examples: list[dict], test_keys: set[str]) -> tuple[list[dict], Counter]:
    """Examples whose normalised problem is not a SciBench test problem; the removed counted per source."""
    kept, removed = [], Counter()
    for ex in examples:
        if ex["key"] in test_keys:
            removed[ex["source"]] += 1
        else:
            kept.append(ex)
    return kept, removed


def solution_key(ex: dict) -> str:
    """What makes two examples the same example: the normalised problem, the reasoning and the answer
    (whitespace runs as one space)."""
    return digest([ex["key"], " ".join(ex["reasoning"].split()), " ".join(ex["answer"].split())])


def deduplicate(examples: list[dict], mode: str) -> tuple[list[dict], dict[str, Counter]]:
    """Examples without repeats, the removed counted per source as exact duplicates (the same problem,
    reasoning and answer) or problem duplicates (another solution of a problem already kept). `problem`
    keeps the first example of each normalised problem; `pair` keeps every distinct solution, each with an
    id of its own."""
    firsts: dict[str, str] = {}  # problem -> its first solution
    seen: set[str] = set()
    kept, counts = [], {"exact": Counter(), "problem": Counter()}
    for ex in examples:
        whole = solution_key(ex)
        if whole in seen:
            counts["exact"][ex["source"]] += 1
            continue
        if mode == "problem" and ex["key"] in firsts:
            counts["problem"][ex["source"]] += 1
            continue
        seen.add(whole)
        firsts.setdefault(ex["key"], whole)
        kept.append(ex)
    solutions = Counter(ex["key"] for ex in kept)
    for ex in kept:  # several solutions of one problem (`pair`): an id each, from the solution's own text
        if solutions[ex["key"]] > 1:
            ex["id"] = f"{ex['id']}-{solution_key(ex)[:8]}"
    return kept, counts


def _unit_hash(*parts: Any) -> float:
    """A uniform number in [0, 1) from the parts (stable across processes and machines)."""
    return int(digest([str(p) for p in parts])[:15], 16) / 16**15


def is_eval(key: str, fraction: float) -> bool:
    """Whether the problem with this normalised text is held out (independent of the seed and the rest)."""
    return _unit_hash("split", key) < fraction


def tokenize_examples(
    tokenizer, examples: list[dict], output_loss: bool = True, stop: StopFlag | None = None
) -> list[dict]:
    """`chat.tokenize_example` for many examples, in batched fast-tokenizer calls (the same ids and labels),
    with `kinds`: each token's block kind (`chat.PROMPT`, `TEXT`, `CODE`, `OUTPUT`) as bytes; a stop is
    honoured between chunks."""
    out = []
    for i in range(0, len(examples), TOKENIZE_CHUNK):
        if stop is not None:
            stop.check()
        chunk = examples[i : i + TOKENIZE_CHUNK]
        prompts = [prompt_text(tokenizer, ex["problem"]) for ex in chunk]
        completions = [completion_text(ex["reasoning"], ex["answer"], tokenizer.eos_token) for ex in chunk]
        p_ids = _encode(tokenizer, prompts)
        c_ids, c_offsets = _encode_with_offsets(tokenizer, completions)
        for ex, p, c, offsets in zip(chunk, p_ids, c_ids, c_offsets, strict=True):
            kinds = token_kinds(offsets, fence_spans(ex["reasoning"]))
            out.append(
                {
                    "input_ids": p + c,
                    "labels": [IGNORE_INDEX] * len(p) + completion_labels(c, kinds, output_loss),
                    "kinds": bytes([PROMPT] * len(p)) + kinds,
                }
            )
    return out


def _fast_backend(tokenizer):
    """A fast tokenizer's Rust backend when it has no truncation or padding set (then it gives the same ids
    as `tokenizer(...)`, without building attention masks), else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return backend
    return None


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens."""
    backend = _fast_backend(tokenizer)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _encode_with_offsets(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Token ids without special tokens and each token's character offsets in its text."""
    backend = _fast_backend(tokenizer)
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings], [e.offsets for e in encodings]
    out = tokenizer(texts, add_special_tokens=False, verbose=False, return_offsets_mapping=True)
    return out["input_ids"], out["offset_mapping"]


def fit_length(tokens: dict[str, list[int]], max_len: int, policy: str) -> tuple[dict | None, str]:
    """The tokens within `max_len` under the policy, and what happened: 'ok', 'truncated', 'too_long'
    (dropped) or 'prompt_too_long' (truncation would leave no token with loss)."""
    if len(tokens["input_ids"]) <= max_len:
        return tokens, "ok"
    if policy == "drop":
        return None, "too_long"
    cut = {k: v[:max_len] for k, v in tokens.items()}
    if all(label == IGNORE_INDEX for label in cut["labels"]):
        return None, "prompt_too_long"
    return cut, "truncated"


def draw(
    examples: list[dict], want: int, settings, tokenizer, stop: StopFlag | None = None
) -> tuple[list[tuple[dict, dict]], Counter]:
    """Up to `want` examples (0: all) that fit the length policy, ranked by a hash of (seed, problem) (with
    `R1FT_DEDUP=pair`, of (seed, problem, solution): each solution is drawn on its own); examples that do
    not fit are replaced by the next ones. Returns (example, tokens) pairs and counts."""
    ranked = sorted(examples, key=lambda ex: _draw_rank(ex, settings))
    want = want or len(ranked)
    kept, counts, pos = [], Counter(), 0
    while len(kept) < want and pos < len(ranked):
        batch = ranked[pos : pos + max(want - len(kept), 256)]
        tokenized = tokenize_examples(tokenizer, batch, settings.interpreter_output_loss, stop)
        for ex, tokens in zip(batch, tokenized, strict=True):
            pos += 1
            fitted, what = fit_length(tokens, settings.max_seq_len, settings.length_policy)
            counts[what] += 1
            if fitted is not None:
                kept.append((ex, fitted))
                if len(kept) == want:
                    break
    counts["not_drawn"] = len(ranked) - pos
    return kept, counts


def _draw_rank(ex: dict, settings) -> float:
    if settings.dedup == "pair":
        return _unit_hash(settings.seed, "draw", ex["key"], solution_key(ex))
    return _unit_hash(settings.seed, "draw", ex["key"])  # one solution per problem: the problem decides


def source_of(ex: dict) -> str:
    """The source setting an example came from (chat-form records come through MathCodeInstruct's)."""
    return "scibench" if ex["source"] == "scibench" else "mathcodeinstruct"


def draw_and_split(
    pool: list[dict], settings, tokenizer, stop: StopFlag | None = None
) -> tuple[list[tuple], list[tuple], dict[str, Counter]]:
    """Each source's draw (MathCodeInstruct: `mathcodeinstruct_samples`; SciBench: all), tokenized under
    the length policy, split by problem hash; eval ordered by that hash. Returns (train, eval, counts)."""
    train, held, lengths = [], [], {}
    for name in SOURCES:
        mine = [ex for ex in pool if source_of(ex) == name]
        want = settings.mathcodeinstruct_samples if name == "mathcodeinstruct" else 0
        drawn, lengths[name] = draw(mine, want, settings, tokenizer, stop)
        for pair in drawn:
            (held if is_eval(pair[0]["key"], settings.eval_fraction) else train).append(pair)
    if not train and not held:
        raise DataError(_nothing_left(len(pool), lengths, settings))
    train, held = ensure_both_splits(train, held)
    held.sort(key=lambda pair: _unit_hash("split", pair[0]["key"]))
    return train, held, lengths


def _nothing_left(pooled: int, lengths: dict[str, Counter], settings) -> str:
    """Why no example is left, with the counts (`r1ft data --stats` fails the same way, so they are said here)."""
    if not pooled:
        return (
            "no example is left after cleaning (duplicates and SciBench test problems removed): "
            "check the data sources"
        )
    seen = "; ".join(
        f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()) if v)
        for name, c in lengths.items()
        if sum(c.values())
    )
    return (
        f"no example is left after the length policy: {pooled} cleaned examples, none fits "
        f"R1FT_MAX_SEQ_LEN={settings.max_seq_len} under R1FT_LENGTH_POLICY={settings.length_policy} ({seen}); "
        "raise R1FT_MAX_SEQ_LEN, or set R1FT_LENGTH_POLICY=truncate"
    )


def ensure_both_splits(train: list[tuple], held: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """Small data can hash every problem to one side: then the problem with the lowest (or highest) split
    hash crosses over with all its solutions, so both eval loss and training have an example. DataError
    when nothing is left."""
    if not train and not held:
        raise DataError(
            "no example is left after cleaning and the length policy: see the counts in `r1ft data --stats`"
        )
    if len(train) + len(held) < 2:
        return train, held
    if train and held:
        return train, held
    rank = sorted(held or train, key=lambda pair: _unit_hash("split", pair[0]["key"]))
    crossing = rank[0] if not held else rank[-1]
    moved = [pair for pair in rank if pair[0]["key"] == crossing[0]["key"]]  # every solution of the problem
    if len(moved) == len(rank):  # one problem only: one of its solutions crosses
        moved = [crossing]
    rest = [pair for pair in rank if not any(pair is m for m in moved)]
    return (rest, moved) if not held else (moved, rest)
