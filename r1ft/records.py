"""Records from data files, and the text helpers that turn a record into clean fields.

Shared by the training data (`r1ft.data`) and the benchmarks (`r1ft.tasks`): reading JSONL, JSON arrays and
parquet files record by record (a line that is not valid UTF-8 or JSON comes back as a `BadRecord` to count,
not an exception; a UTF-8 byte-order mark is accepted), the reasons a record is skipped, and the
normalised problem text that deduplication, the split and the contamination guard compare.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")

# Reasons a record is skipped; every one is counted in the data statistics.
BAD_REASONS = (
    "missing_field",  # a required key is absent
    "wrong_type",  # a value of the wrong type (e.g. content not a list of blocks)
    "unsupported_shape",  # several user/assistant turns, no user or no assistant turn
    "empty_text",  # an empty problem or solution
    "empty_answer",  # `\boxed{}` with nothing in it, nothing after `</think>`, an empty answer_number
    "no_final_answer",  # no `\boxed{...}` (or an unclosed one); an answer_number that is not a number
    "undecodable_text",  # invalid UTF-8 or JSON, lone surrogates
)


class DataError(Exception):
    """A fatal data problem (bad shape, too many bad records, no Hub); the message says what to do."""


class BadRecord(Exception):
    """A record that cannot become an example: why (one of BAD_REASONS) and which field."""

    def __init__(self, reason: str, field: str, detail: str = ""):
        assert reason in BAD_REASONS, reason
        self.reason, self.field, self.detail = reason, field, detail
        super().__init__(f"{reason} at {field}" + (f": {detail}" if detail else ""))


_PRESENTATION = re.compile(r"\\(?:[,;:! ]|q?quad\b|left\b|right\b|displaystyle\b)|[~$\s]")


def normalise_problem(text: str) -> str:
    """The comparison key of a problem: NFKC, lower case, without `$`, LaTeX spacing and sizing, and
    whitespace (presentation differences such as `$2.0$ kg` vs `2.0 kg` or `} .` vs `}.` vanish)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _PRESENTATION.sub("", text).rstrip(".?")


def clean_text(text: str) -> str:
    """`\\r\\n` and `\\r` as `\\n`, trailing spaces of each line and surrounding whitespace removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def check_decodable(field: str, *texts: str) -> None:
    """Lone surrogates (from `\\ud800` escapes or undecodable bytes) make text untokenizable."""
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise BadRecord("undecodable_text", field, f"undecodable character at offset {e.start}") from e


def example_id(source: str, key: str, label: str = "") -> str:
    """A stable id: the source, an optional readable label, a hash of the normalised problem."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{source}-{label}-{digest}" if label else f"{source}-{digest}"


def get_field(record: dict, name: str, path: str, kind: type | tuple[type, ...]) -> Any:
    if name not in record:
        raise BadRecord("missing_field", f"{path}{name}")
    value = record[name]
    if not isinstance(value, kind):
        raise BadRecord(
            "wrong_type", f"{path}{name}", f"expected {kind_name(kind)}, got {type(value).__name__}"
        )
    return value


def kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def as_object(record: Any) -> dict:
    if not isinstance(record, dict):
        raise BadRecord("wrong_type", "<record>", f"expected an object, got {type(record).__name__}")
    return record


def make_example(
    source: str, key: str, problem: str, reasoning: str, answer: str, gold: str, label: str = ""
) -> dict:
    check_decodable("messages", problem, reasoning, answer)
    return {
        "id": example_id(source, key, label),
        "source": source,
        "problem": problem,
        "reasoning": reasoning,
        "answer": answer,
        "gold": gold,
        "key": key,
    }


def read_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based position, record) for each record of a file; a BadRecord for an undecodable line."""
    if path.suffix == ".parquet":
        yield from _read_parquet(path)
    elif path.suffix == ".json":
        yield from _read_json(path)
    else:
        yield from _read_jsonl(path.read_bytes().split(b"\n"))


def _read_jsonl(lines: list[bytes]) -> Iterator[tuple[int, Any]]:
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            yield n, json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield n, BadRecord("undecodable_text", f"line {n}", f"invalid UTF-8 at byte {e.start}")
        except json.JSONDecodeError as e:
            yield n, BadRecord("undecodable_text", f"line {n}", f"invalid JSON: {e.msg} at column {e.colno}")


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    """A JSON array (SciBench's files), or JSON lines in a `.json` file."""
    raw = path.read_bytes()
    # Undecodable bytes become lone surrogates, which the renderer counts per record.
    text = raw.decode("utf-8", errors="surrogateescape")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("{"):
            yield from _read_jsonl(raw.split(b"\n"))
            return
        raise DataError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); expected a JSON "
            "array of records or JSON lines"
        ) from e
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise DataError(
            f"{path}: the top level is a {type(value).__name__}; expected a JSON array of records"
        )
    yield from enumerate(value, start=1)


def _read_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a damaged file
        raise DataError(f"{path}: not a readable parquet file ({e})") from e
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield n, row
