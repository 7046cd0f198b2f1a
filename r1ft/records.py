"""Records from data files, and the text helpers that turn a record into clean fields.

Shared by the training data (`r1ft.data`) and the benchmarks (`r1ft.tasks`): reading JSONL, JSON arrays and
parquet files record by record (a line that is not valid UTF-8 or JSON comes back as a `BadRecord` to count,
not an exception; a UTF-8 byte-order mark at the start of a file is accepted), the reasons a record is
skipped, and the normalised problem text that deduplication, the split and the contamination guard compare.

A record too large to be useful is rejected by its size before anything tokenizes it (`max_record_bytes`):
a record whose text (every string in it, UTF-8) has more than `MAX_BYTES_PER_TOKEN` bytes per token of
R1FT_MAX_SEQ_LEN cannot fit unless its text averages that many bytes a token, which prose, LaTeX and code
(3-5 bytes a token) never do; under R1FT_LENGTH_POLICY=truncate only its first R1FT_MAX_SEQ_LEN tokens, a
small part of it with no final answer, would be kept. JSONL is read line by line with a bounded buffer: a line
over `JSON_ESCAPE_MAX` times the limit is skipped unread (no JSON line holds more than that many bytes per
byte of text, `\u0000` being the longest escape), so memory stays bounded whatever a file holds.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from r1ft.files import format_bytes

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
MAX_BYTES_PER_TOKEN = 32  # 6-10x what real text averages (3-5 bytes a token)
JSON_ESCAPE_MAX = 6  # bytes of JSON per byte of text at most ("\u0000" for one control byte)
_SKIP_CHUNK = 1 << 20

# Reasons a record is skipped; every one is counted in the data statistics.
BAD_REASONS = (
    "missing_field",  # a required key is absent
    "wrong_type",  # a value of the wrong type (e.g. content not a list of blocks)
    "unsupported_shape",  # several user/assistant turns, no user or no assistant turn
    "empty_text",  # an empty problem or solution
    "empty_answer",  # `\boxed{}` with nothing in it, nothing after `</think>`, an empty answer_number
    "no_final_answer",  # no `\boxed{...}` (or an unclosed one); an answer_number that is not a number
    "undecodable_text",  # invalid UTF-8 or JSON, lone surrogates
    "too_large",  # more text than R1FT_MAX_SEQ_LEN tokens could hold (`max_record_bytes`): not tokenized
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


def max_record_bytes(max_seq_len: int) -> int:
    """The most text (UTF-8 bytes) a record may hold at this R1FT_MAX_SEQ_LEN (see the module docstring)."""
    return max_seq_len * MAX_BYTES_PER_TOKEN


def text_bytes(value: Any) -> int:
    """UTF-8 bytes of every string in a record (keys left out)."""
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        return sum(text_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(text_bytes(v) for v in value)
    return 0


def read_records(path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
    """(1-based position, record) for each record of a file; a BadRecord for an undecodable line, and for
    a record with more than `max_bytes` of text (rejected before any tokenization)."""
    if path.suffix == ".parquet":
        records = _read_parquet(path)
    elif path.suffix == ".json":
        records = _read_json(path)
    else:
        records = _read_jsonl_file(path, max_bytes)
    for n, record in records:
        if max_bytes is not None and not isinstance(record, BadRecord):
            size = text_bytes(record)
            if size > max_bytes:
                record = _too_large(size, max_bytes)
        yield n, record


def _too_large(size: int, max_bytes: int, unread: bool = False) -> BadRecord:
    what = "line" if unread else "text"
    return BadRecord("too_large", "<record>", f"{format_bytes(size)} of {what}, more than the "
                     f"{format_bytes(max_bytes)} R1FT_MAX_SEQ_LEN allows")  # fmt: skip


def _read_jsonl_file(path: Path, max_bytes: int | None) -> Iterator[tuple[int, Any]]:
    """JSON lines, one line in memory at a time; a line over JSON_ESCAPE_MAX x `max_bytes` is skipped unread."""
    cap = None if max_bytes is None else JSON_ESCAPE_MAX * max_bytes
    with open(path, "rb") as f:
        n = 0
        while raw := (f.readline(cap + 1) if cap is not None else f.readline()):
            n += 1
            if cap is not None and len(raw) > cap and not raw.endswith(b"\n"):
                yield n, _too_large(len(raw) + _skip_line(f), max_bytes or 0, unread=True)
                continue
            yield from _parse_line(n, raw.removeprefix(codecs.BOM_UTF8) if n == 1 else raw)


def _skip_line(f: IO[bytes]) -> int:
    """Read past the rest of the current line in bounded chunks; the bytes skipped."""
    skipped = 0
    while chunk := f.readline(_SKIP_CHUNK):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def _read_jsonl(lines: list[bytes]) -> Iterator[tuple[int, Any]]:
    for n, raw in enumerate(lines, start=1):
        yield from _parse_line(n, raw)


def _parse_line(n: int, raw: bytes) -> Iterator[tuple[int, Any]]:
    if not raw.strip():
        return
    try:
        yield n, json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        yield n, BadRecord("undecodable_text", f"line {n}", f"invalid UTF-8 at byte {e.start}")
    except json.JSONDecodeError as e:
        yield n, BadRecord("undecodable_text", f"line {n}", f"invalid JSON: {e.msg} at column {e.colno}")


def _read_json(path: Path) -> Iterator[tuple[int, Any]]:
    """A JSON array (SciBench's files), or JSON lines in a `.json` file."""
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
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
