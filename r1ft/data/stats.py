"""The data statistics: every count of what was loaded, dropped (and why), drawn, split and tokenized.

They are built as plain data while the data is prepared and handed over as a `DataStats` (the type
`r1ft data --stats`, report.json and the model card read). Nothing is dropped silently: each reason has a
count here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from r1ft.chat import IGNORE_INDEX
from r1ft.data.mix import source_of
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


class TokenStats(_Stats):
    train_total: int = 0
    train_loss: int = 0
    eval_total: int = 0
    length: dict[str, float] = Field(default_factory=dict)  # min, p50, p90, p99, max, mean (tokens)


class DataStats(_Stats):
    sources: dict[str, SourceStats] = Field(default_factory=dict)
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
            "eval_total": sum(len(r["input_ids"]) for r in eval_rows),
            "length": _percentiles(list(unique.values())),
        },
    }
