"""Reading data files (issue 18): a record too large to be useful is rejected by its size before anything
tokenizes it, with bounded memory, and counted; UTF-8 byte-order marks are accepted."""

from __future__ import annotations

import codecs
import json
import resource
import time
from pathlib import Path

import pytest

from r1ft.data.prepare import prepare_data
from r1ft.data.sources import builtin_dir
from r1ft.records import BadRecord, max_record_bytes, read_records
from r1ft.settings_load import load_settings

SAMPLE = builtin_dir() / "mathcodeinstruct_sample.jsonl"


def settings(tmp_path: Path, **env: str):
    return load_settings(
        {"R1FT_PRESET": "smoke", "R1FT_WORK_DIR": str(tmp_path / "work"), **env}, env_file=None
    )


def huge_record(mb: int) -> bytes:
    """A MathCodeInstruct record whose reasoning is `mb` MB of text."""
    record = json.loads(SAMPLE.read_text(encoding="utf-8").splitlines()[0])
    record["messages"][-1]["content"][0]["content"] = "x = 1. " * (mb * 1_000_000 // 7)
    return json.dumps(record).encode()


def test_the_limit_follows_max_seq_len():
    assert max_record_bytes(2048) == 65536 and max_record_bytes(512) == 16384


def write_huge_jsonl(path: Path, mb: int) -> None:
    """A sample line, a record holding `mb` MB of reasoning (written in chunks: never whole in this
    process's memory, so its peak measures the reader), another sample line."""
    lines = SAMPLE.read_bytes().splitlines()
    with open(path, "wb") as f:
        f.write(
            lines[0] + b'\n{"messages": [{"role": "user", "content": [{"type": "text", "content": "Q?"}]}, '
            b'{"role": "assistant", "content": [{"type": "text", "content": "'
        )
        for _ in range(mb):
            f.write(b"x = 1. " * (1_000_000 // 7))
        f.write(b'\\boxed{1}"}]}]}\n' + lines[1] + b"\n")


def test_a_50_mb_line_is_rejected_unread_in_bounded_time_and_memory(tmp_path):
    path = tmp_path / "data.jsonl"
    write_huge_jsonl(path, 50)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    records = list(read_records(path, max_record_bytes(2048)))
    elapsed = time.monotonic() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert [n for n, _ in records] == [1, 2, 3]
    bad = records[1][1]
    assert isinstance(bad, BadRecord) and bad.reason == "too_large" and "50.0 MB of line" in bad.detail, bad
    assert not isinstance(records[0][1], BadRecord) and not isinstance(records[2][1], BadRecord)
    assert elapsed < 5, elapsed
    assert grown_mb < 30, grown_mb  # the 50 MB line never sits in memory whole


def test_a_record_with_more_text_than_the_limit_is_rejected_in_json_arrays_too(tmp_path):
    path = tmp_path / "data.json"
    ok = json.loads(SAMPLE.read_text(encoding="utf-8").splitlines()[0])
    path.write_text(json.dumps([ok, json.loads(huge_record(1))]))
    (_, first), (_, second) = read_records(path, max_record_bytes(512))
    assert isinstance(second, BadRecord) and second.reason == "too_large" and "of text" in second.detail
    assert first == ok


def test_too_large_records_are_counted_by_reason_with_the_limit_in_the_stats(tmp_path, tiny_tokenizer):
    data = tmp_path / "mci.jsonl"
    lines = SAMPLE.read_bytes().splitlines()
    data.write_bytes(b"\n".join([*lines, huge_record(2)]) + b"\n")
    s = settings(tmp_path, R1FT_MATHCODEINSTRUCT_SOURCE=str(data), R1FT_MAX_BAD_FRACTION="0.5")
    stats = prepare_data(s, tiny_tokenizer, tmp_path / "run").stats
    src = stats.sources["mathcodeinstruct"]
    assert src.bad.get("too_large") == 1 and src.max_record_bytes == 512 * 32
    assert stats.dropped["bad:too_large"] == 1
    assert f"record {len(lines) + 1}, field <record>: too_large" in src.bad_examples[0]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_utf8_bom_is_accepted(tmp_path, suffix):
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:3]
    path = tmp_path / f"data{suffix}"
    text = "\n".join(lines) if suffix == ".jsonl" else json.dumps([json.loads(line) for line in lines])
    path.write_bytes(codecs.BOM_UTF8 + text.encode())
    records = [r for _, r in read_records(path)]
    assert len(records) == 3 and not any(isinstance(r, BadRecord) for r in records)


def test_a_scibench_json_file_with_a_bom_loads(tmp_path, tiny_tokenizer):
    src = builtin_dir() / "scibench"
    dst = tmp_path / "scibench"
    dst.mkdir()
    for f in src.glob("*.json"):
        (dst / f.name).write_bytes(codecs.BOM_UTF8 + f.read_bytes())
    stats = prepare_data(
        settings(tmp_path, R1FT_SCIBENCH_SOURCE=str(dst)), tiny_tokenizer, tmp_path / "run"
    ).stats
    plain = prepare_data(settings(tmp_path / "plain"), tiny_tokenizer, tmp_path / "plain-run").stats
    assert stats.sources["scibench"].records == plain.sources["scibench"].records > 0
    assert not stats.sources["scibench"].bad
