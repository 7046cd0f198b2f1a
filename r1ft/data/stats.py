"""The data statistics: every count of what was loaded, dropped (and why), drawn, split and tokenized.

They are built as plain data while the data is prepared and handed over as a `DataStats` (the type
`r1ft data --stats`, report.json and the model card read). Nothing is dropped silently: each reason has a
count here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from r1ft.chat import CODE, IGNORE_INDEX, KIND_NAMES, OUTPUT, PROMPT, TEXT
from r1ft.data.mix import source_of
from r1ft.data.origin import ORIGINS, RULE
from r1ft.data.sources import Loaded


class _Stats(BaseModel):
    model_config = ConfigDict(extra="allow")


class SourceStats(_Stats):
    """One source (MathCodeInstruct or SciBench) from its files to its train and eval rows."""

    spec: str = ""
    origin: str = ""  # builtin, local, hub, none
    revision: str | None = None
    files: list[str] = Field(default_factory=list)
    shapes: list[str] = Field(default_factory=list)
    records: int = 0
    max_record_bytes: int = 0  # records with more text were rejected before tokenization ("too_large")
    bad: dict[str, int] = Field(default_factory=dict)  # reason -> records skipped
    bad_fraction: float = 0.0
    bad_examples: list[str] = Field(default_factory=list)
    examples: int = 0
    contaminated: int = 0
    duplicates: dict[str, int] = Field(default_factory=dict)  # exact / problem -> removed
    length: dict[str, int] = Field(
        default_factory=dict
    )  # ok, truncated, too_long, prompt_too_long, not_drawn
    train: int = 0
    eval: int = 0
    train_rows: int = 0  # train examples after up-sampling
    requested: int | None = None  # MathCodeInstruct's draw (0: all)
    solution_records: int | None = None  # SciBench: worked solutions (_sol files)
    test_records: int | None = None  # SciBench: test problems (main files)
    test: int | None = None
    upsample: int | None = None


class Contamination(_Stats):
    test_problems: int = 0
    removed: int = 0
    leaked: int = 0


class Counts(_Stats):
    train_rows: int = 0
    eval_rows: int = 0
    train_by_source: dict[str, int] = Field(default_factory=dict)
    eval_by_source: dict[str, int] = Field(default_factory=dict)
    scibench_test: int = 0
    truncated: int = 0


class Mix(_Stats):
    """Examples by origin (`r1ft.data.origin`: scibench, gsm8k, math, interpolated) at each step from the
    rendered records to what training sees; `rule` says how the origin was told."""

    rule: str = ""
    loaded: dict[str, int] = Field(default_factory=dict)  # rendered, before the contamination guard and dedup
    deduplicated: dict[str, int] = Field(default_factory=dict)  # the pool the draw takes from
    drawn: dict[str, int] = Field(default_factory=dict)  # after the draw and the length policy (train + eval)
    train: dict[str, int] = Field(default_factory=dict)
    eval: dict[str, int] = Field(default_factory=dict)
    train_rows: dict[str, int] = Field(default_factory=dict)  # train after SciBench's up-sampling


class TokenStats(_Stats):
    train_total: int = 0
    train_loss: int = 0
    train_loss_by_block: dict[str, int] = Field(default_factory=dict)  # text, code, output: loss tokens
    train_output_tokens: int = 0  # tokens of interpreter-output blocks, with loss or not
    train_output_blocks: int = 0
    eval_total: int = 0
    length: dict[str, float] = Field(default_factory=dict)  # min, p50, p90, p99, max, mean (tokens)


class DataStats(_Stats):
    sources: dict[str, SourceStats] = Field(default_factory=dict)
    mix: Mix = Field(default_factory=Mix)
    contamination: Contamination = Field(default_factory=Contamination)
    counts: Counts = Field(default_factory=Counts)
    dropped: dict[str, int] = Field(default_factory=dict)
    tokens: TokenStats = Field(default_factory=TokenStats)
    timings: dict[str, float] = Field(default_factory=dict)
    fingerprint: str = ""
    tokenizer: str = ""
    cache_hit: bool = False
    seconds: float = 0.0


def source_stats(
    ld: Loaded, name: str, contaminated: Counter, duplicates: dict, lengths: Counter, train, held, settings
) -> dict[str, Any]:
    labels = ("scibench",) if name == "scibench" else ("mathcodeinstruct", "chat")
    n_train = sum(source_of(ex) == name for ex, _ in train)
    out: dict[str, Any] = {
        **ld.source.describe(),
        "shapes": sorted(ld.shapes),
        "records": ld.records,
        "max_record_bytes": ld.max_record_bytes,
        "bad": dict(ld.bad.most_common()),
        "bad_fraction": round(sum(ld.bad.values()) / ld.records, 6) if ld.records else 0.0,
        "bad_examples": ld.first_bad,
        "examples": len(ld.examples),
        "contaminated": sum(contaminated[s] for s in labels),
        "duplicates": {kind: sum(c[s] for s in labels) for kind, c in duplicates.items()},
        "length": {
            k: lengths.get(k, 0) for k in ("ok", "truncated", "too_long", "prompt_too_long", "not_drawn")
        },
        "train": n_train,
        "eval": sum(source_of(ex) == name for ex, _ in held),
        "train_rows": n_train * (settings.scibench_upsample if name == "scibench" else 1),
    }
    if name == "scibench":
        out |= {
            "solution_records": ld.solution_records,
            "test_records": ld.test_records,
            "test": len(ld.test),
        }
        out["upsample"] = settings.scibench_upsample
    else:
        out["requested"] = settings.mathcodeinstruct_samples
    return out


def origin_counts(examples: Iterable[dict]) -> dict[str, int]:
    """Examples per origin, in ORIGINS' order (origins with none left out)."""
    counts = Counter(ex["origin"] for ex in examples)
    return {origin: counts[origin] for origin in ORIGINS if counts[origin]}


def mix_stats(loaded: list[dict], pool: list[dict], train, held, upsample: int) -> dict[str, Any]:
    """The mix by origin at each step: rendered, after the guard and dedup, drawn, train, eval, train rows
    (SciBench's train examples repeated `upsample` times)."""
    train_ex, held_ex = [ex for ex, _ in train], [ex for ex, _ in held]
    rows = [ex for ex in train_ex for _ in range(upsample if ex["source"] == "scibench" else 1)]
    return {
        "rule": RULE,
        "loaded": origin_counts(loaded),
        "deduplicated": origin_counts(pool),
        "drawn": origin_counts([*train_ex, *held_ex]),
        "train": origin_counts(train_ex),
        "eval": origin_counts(held_ex),
        "train_rows": origin_counts(rows),
    }


_OUTPUT_RUN = re.compile(bytes([OUTPUT]) + b"+")


def block_tokens(rows: list[dict]) -> dict[str, Any]:
    """Train tokens by block kind (`chat.token_kinds`): loss tokens of prose, code and interpreter output, and
    the output blocks' tokens and count whether they carry loss or not. Only the prompt and (when masked)
    output tokens are without loss, so the output tokens with loss are the output tokens less the masked
    completion tokens."""
    loss: Counter = Counter()
    output_tokens = blocks = 0
    for r in rows:
        kinds = r["kinds"]
        masked_output = r["labels"].count(IGNORE_INDEX) - kinds.count(PROMPT)
        loss[TEXT] += kinds.count(TEXT)
        loss[CODE] += kinds.count(CODE)
        loss[OUTPUT] += kinds.count(OUTPUT) - masked_output
        output_tokens += kinds.count(OUTPUT)
        blocks += len(_OUTPUT_RUN.findall(kinds))
    return {
        "train_loss_by_block": {KIND_NAMES[k]: loss[k] for k in (TEXT, CODE, OUTPUT)},
        "train_output_tokens": output_tokens,
        "train_output_blocks": blocks,
    }


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return {
        "min": v[0],
        "p50": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "max": v[-1],
        "mean": round(sum(v) / len(v), 1),
    }


def totals(sources: dict, train_rows: list[dict], eval_rows: list[dict], n_test: int) -> dict:
    dropped: Counter = Counter()
    for s in sources.values():
        dropped.update({f"bad:{reason}": c for reason, c in s["bad"].items()})
        dropped["contaminated"] += s["contaminated"]
        dropped["duplicate_exact"] += s["duplicates"]["exact"]
        dropped["duplicate_problem"] += s["duplicates"]["problem"]
        for what in ("too_long", "prompt_too_long"):
            dropped[what] += s["length"][what]
    unique = {r["id"]: len(r["input_ids"]) for r in [*train_rows, *eval_rows]}
    return {
        "counts": {
            "train_rows": len(train_rows),
            "eval_rows": len(eval_rows),
            "train_by_source": dict(Counter(r["source"] for r in train_rows)),
            "eval_by_source": dict(Counter(r["source"] for r in eval_rows)),
            "scibench_test": n_test,
            "truncated": sum(s["length"]["truncated"] for s in sources.values()),
        },
        "dropped": {k: v for k, v in sorted(dropped.items()) if v},
        "tokens": {
            "train_total": sum(len(r["input_ids"]) for r in train_rows),
            "train_loss": sum(len(r["labels"]) - r["labels"].count(IGNORE_INDEX) for r in train_rows),
            **block_tokens(train_rows),
            "eval_total": sum(len(r["input_ids"]) for r in eval_rows),
            "length": _percentiles(list(unique.values())),
        },
    }
