"""The training data: load both sources, render, clean, mix, split, tokenize, cache.

`prepare_data(settings, tokenizer, run_dir)` runs, in order:
1. load each source (`r1ft.data.sources`), check the shape of each file's first record (a wrong shape is a
   DataError naming the file, record and field), render records (`r1ft.data.render`), count bad ones by
   reason and stop when more than `max_bad_fraction` of a source is bad;
2. the contamination guard: SciBench's main files are its test set; any example whose normalised
   problem equals one of theirs is removed (and the split is verified clean afterwards);
3. duplicates across sources: the same example twice (exact), and with `R1FT_DEDUP=problem` another
   solution of a problem already kept; each example's origin (`r1ft.data.origin`) is told before, from
   the solutions each problem has;
4. MathCodeInstruct's draw (`mathcodeinstruct_samples`, 0 = all): the examples ranked by a hash of
   (seed, problem) (with `pair`, of (seed, problem, solution)), taken in order until enough fit the length
   policy at `max_seq_len`; the completion's labels leave out the interpreter's output blocks when
   `R1FT_INTERPRETER_OUTPUT_LOSS=false`;
5. the split: an example is held out when a hash of its normalised problem falls under `eval_fraction`,
   so the same problem always lands on the same side whatever else changes (seed included);
6. SciBench's train examples repeated `scibench_upsample` times (after the split: no duplicate straddles
   train and eval), train shuffled under the seed.

Nothing is dropped silently: every count is in `stats` (and so in `r1ft data --stats` and report.json), and
so is the mix by origin at each step. The eval split's examples for generation scoring hold one solution
per problem (with `pair`, a problem's other solutions stay in the eval loss only).
The result is cached in `run_dir/data/`, keyed by `data_fingerprint(settings)` (file hashes or Hub
revisions, and the settings that shape the data), the tokenizer and the policy; reused when they match.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r1ft.chat import loss_text
from r1ft.data.mix import deduplicate, digest, draw_and_split, guard_contamination
from r1ft.data.origin import assign_origins
from r1ft.data.sources import SOURCES, identity, load_source
from r1ft.data.stats import DataStats, mix_stats, source_stats, totals
from r1ft.records import DataError, normalise_problem

if TYPE_CHECKING:
    from r1ft.machine.signals import StopFlag

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when rendering or mixing changes: old caches and run ids stop matching
# 2: R1FT_DEDUP and R1FT_INTERPRETER_OUTPUT_LOSS in the fingerprint; records over
# `r1ft.records.max_record_bytes` rejected unread ("too_large"), BOMs accepted
SHAPING_FIELDS = (
    "mathcodeinstruct_samples",
    "scibench_upsample",
    "eval_fraction",
    "length_policy",
    "max_seq_len",
    "seed",
    "dedup",
    "interpreter_output_loss",
)
EXAMPLE_KEYS = ("id", "source", "problem", "reasoning", "answer", "gold")


@dataclass
class PreparedData:
    """Tokenized train/eval sets (`input_ids`, `labels`, `source`, `id`), the eval split's example records
    (for generation scoring), SciBench's held-out test problems, and every count."""

    train: Any  # datasets.Dataset
    eval: Any  # datasets.Dataset
    eval_examples: list[dict]
    scibench_test: list[dict]
    stats: DataStats


# --- fingerprint ----------------------------------------------------------------------------------------


def data_fingerprint(settings) -> str:
    """A hash of what the data is (file hashes, Hub id and revision) and the settings that shape it.

    Cheap (no download, no parsing): it names the run. A local source that does not exist still gets a
    fingerprint; `prepare_data` reports it.
    """
    sources = {}
    for name in SOURCES:
        try:
            sources[name] = identity(settings, name)
        except DataError:
            sources[name] = {"origin": "missing", "spec": getattr(settings, f"{name}_source")}
    shaping = {k: getattr(settings, k) for k in SHAPING_FIELDS}
    return digest({"format": FORMAT_VERSION, "sources": sources, "settings": shaping})[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's vocabulary and rules, chat template and EOS."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return digest([rules, tokenizer.chat_template, tokenizer.eos_token])[:16]


def _cache_key(settings, tokenizer) -> dict[str, Any]:
    return {
        "data": data_fingerprint(settings),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_bad_fraction": settings.max_bad_fraction,
    }


# --- the whole preparation --------------------------------------------------------------------------------


def prepare_data(settings, tokenizer, run_dir: Path, stop: StopFlag | None = None) -> PreparedData:
    """The prepared data of the run: from `run_dir/data/` when its key matches, else built and cached. A stop
    is honoured between records and tokenization chunks (`Stopped`; no cache is written)."""
    start = time.monotonic()
    cache = Path(run_dir) / "data"
    key = _cache_key(settings, tokenizer)
    cached = load_cache(cache, key)
    if cached is not None:
        cached.stats.cache_hit = True
        log.info("data: reusing the prepared data in %s", cache)
        return cached
    prepared = build(settings, tokenizer, stop)
    prepared.stats.fingerprint, prepared.stats.tokenizer = key["data"], key["tokenizer"]
    prepared.stats.cache_hit = False
    prepared.stats.seconds = round(time.monotonic() - start, 2)
    save_cache(cache, key, prepared)
    counts = prepared.stats.counts
    log.info(
        "data: %d train rows %s, %d eval %s, %d SciBench test problems held out; dropped %s (%.1fs)",
        counts.train_rows, counts.train_by_source, counts.eval_rows, counts.eval_by_source,
        counts.scibench_test, prepared.stats.dropped or "nothing", prepared.stats.seconds,
    )  # fmt: skip
    return prepared


def build(settings, tokenizer, stop: StopFlag | None = None) -> PreparedData:
    """Load, clean, draw, split, tokenize and mix (no cache)."""
    from datasets import Dataset

    clock = _Clock()
    loaded = {name: load_source(settings, name, stop) for name in SOURCES}
    if all(ld.source.origin == "none" for ld in loaded.values()):
        raise DataError(
            "both R1FT_MATHCODEINSTRUCT_SOURCE and R1FT_SCIBENCH_SOURCE are 'none': nothing to train on"
        )
    test = loaded["scibench"].test
    test_keys = {normalise_problem(t["problem_text"]) for t in test}
    examples = loaded["scibench"].examples + loaded["mathcodeinstruct"].examples
    assign_origins(examples)
    pool, contaminated = guard_contamination(examples, test_keys)
    pool, duplicates = deduplicate(pool, settings.dedup)
    clock.lap("load_render_clean")
    train_pairs, eval_pairs, lengths = draw_and_split(pool, settings, tokenizer, stop)
    clock.lap("tokenize_split")
    train_rows = [_row(ex, tok) for ex, tok in train_pairs for _ in range(_repeat(ex, settings))]
    random.Random(settings.seed).shuffle(train_rows)
    eval_rows = [_row(ex, tok) for ex, tok in eval_pairs]
    leaked = sum(ex["key"] in test_keys for ex, _ in [*train_pairs, *eval_pairs])
    if leaked:  # the guard above makes this impossible; checked anyway because it would void every score
        raise DataError(f"internal error: {leaked} SciBench test problems reached the training data")
    sources = {
        name: source_stats(
            loaded[name], name, contaminated, duplicates, lengths[name], train_pairs, eval_pairs, settings
        )
        for name in SOURCES
    }
    mix = mix_stats(examples, pool, train_pairs, eval_pairs, settings.scibench_upsample)
    stats = {
        "sources": sources,
        "mix": mix,
        "contamination": {
            "test_problems": len(test_keys),
            "removed": sum(contaminated.values()),
            "leaked": leaked,
        },
        **totals(sources, train_rows, eval_rows, len(test)),
    }
    train, held = Dataset.from_dict(_columns(train_rows)), Dataset.from_dict(_columns(eval_rows))
    clock.lap("datasets")
    stats["timings"] = clock.laps
    stats = DataStats.model_validate(stats)
    eval_examples = [{k: ex[k] for k in EXAMPLE_KEYS} for ex, _ in _one_per_problem(eval_pairs)]
    return PreparedData(train=train, eval=held, eval_examples=eval_examples, scibench_test=test, stats=stats)


class _Clock:
    """Wall seconds of each phase, for the stats."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self._last, 2)
        self._last = now


def _one_per_problem(pairs: list[tuple]) -> list[tuple]:
    """The first pair of each problem (with `R1FT_DEDUP=pair` a problem may have several solutions: the
    generation scoring asks each problem once)."""
    seen: set[str] = set()
    out = []
    for pair in pairs:
        if pair[0]["key"] not in seen:
            seen.add(pair[0]["key"])
            out.append(pair)
    return out


def _repeat(ex: dict, settings) -> int:
    return settings.scibench_upsample if ex["source"] == "scibench" else 1


def _row(ex: dict, tokens: dict) -> dict:
    """A tokenized row; `kinds` (each token's block kind) serves the statistics, not the saved dataset."""
    return {
        "input_ids": tokens["input_ids"],
        "labels": tokens["labels"],
        "kinds": tokens["kinds"],
        "source": ex["source"],
        "id": ex["id"],
    }


def _columns(rows: list[dict]) -> dict[str, list]:
    return {col: [r[col] for r in rows] for col in ("input_ids", "labels", "source", "id")}


# --- cache ----------------------------------------------------------------------------------------------


def save_cache(cache: Path, key: dict, prepared: PreparedData) -> None:
    """Write the prepared data beside the final folder, then swap it in (a crash leaves no half cache)."""
    tmp = cache.with_name(cache.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with _quiet_progress():
        prepared.train.save_to_disk(str(tmp / "train"))
        prepared.eval.save_to_disk(str(tmp / "eval"))
    _write_jsonl(tmp / "eval_examples.jsonl", prepared.eval_examples)
    _write_jsonl(tmp / "scibench_test.jsonl", prepared.scibench_test)
    (tmp / "stats.json").write_text(prepared.stats.model_dump_json(indent=2))
    (tmp / "key.json").write_text(json.dumps(key, indent=2))
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(cache)


@contextmanager
def _quiet_progress() -> Iterator[None]:
    """No `datasets` progress bars while saving (they would clutter `r1ft data` and the job log)."""
    import datasets

    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def load_cache(cache: Path, key: dict) -> PreparedData | None:
    """The cached prepared data if its key matches `key`, else None."""
    from datasets import Dataset

    try:
        if json.loads((cache / "key.json").read_text()) != key:
            return None
        return PreparedData(
            train=Dataset.load_from_disk(str(cache / "train")),
            eval=Dataset.load_from_disk(str(cache / "eval")),
            eval_examples=_read_jsonl(cache / "eval_examples.jsonl"),
            scibench_test=_read_jsonl(cache / "scibench_test.jsonl"),
            stats=DataStats.model_validate_json((cache / "stats.json").read_text()),
        )
    except (OSError, ValueError) as e:  # absent or damaged (pydantic's ValidationError is a ValueError)
        if (cache / "key.json").exists():
            log.warning("data: the cache in %s is unreadable (%s); rebuilding it", cache, e)
        return None


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- printing -----------------------------------------------------------------------------------------------


def iter_rendered(
    prepared: PreparedData, tokenizer, split: str = "train", limit: int | None = None
) -> Iterator[dict]:
    """`{"source", "text", "loss_text"}` per example of a split: the whole rendered example decoded from
    its ids, and the decoded text of exactly the tokens that carry loss."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    ds = prepared.train if split == "train" else prepared.eval
    n = len(ds) if limit is None else min(max(limit, 0), len(ds))
    for row in ds.select(range(n)):
        yield {
            "source": row["source"],
            "text": tokenizer.decode(row["input_ids"]),
            "loss_text": loss_text(tokenizer, row["input_ids"], row["labels"]),
        }
