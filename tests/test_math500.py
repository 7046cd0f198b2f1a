"""MATH-500 loading (shipped sample, local files, the Hub), its schema check, and the held-out benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from r1ft.chat import MATH_INSTRUCTION
from r1ft.inputs import builtin_dir, file_sha256
from r1ft.records import DataError
from r1ft.settings import MATH500_REVISION
from r1ft.tasks import heldout, math500
from r1ft.tasks.verify import Answer, score_all

SAMPLE = builtin_dir() / math500.SAMPLE_FILE
REV = MATH500_REVISION


def sample_records() -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_shipped_sample_has_math500s_exact_schema():
    records = sample_records()
    assert 10 <= len(records) <= 20
    for r in records:
        assert list(r) == ["problem", "solution", "answer", "subject", "level", "unique_id"]
        assert isinstance(r["level"], int) and 1 <= r["level"] <= 5
        assert r["unique_id"].startswith("test/") and r["unique_id"].endswith(".json")
    assert len({r["unique_id"] for r in records}) == len(records)


def test_the_sample_answers_are_right_by_their_own_solutions():
    """Each record's reference solution, as an R1 answer, scores right against its gold (and a wrong gold
    does not): the shipped golds agree with the worked solutions."""
    records = sample_records()
    answers = [
        Answer(r["unique_id"], 0, r["answer"], f"...\n</think>\n\n{r['solution']}", True, 1) for r in records
    ]
    assert all(v.correct for v in score_all(answers, workers=0))
    shifted = [
        Answer(a.problem_id, 0, records[i - 1]["answer"], a.text, True, 1) for i, a in enumerate(answers)
    ]
    assert not any(v.correct for v in score_all(shifted, workers=0))


def test_builtin_becomes_problems_with_the_model_cards_prompt(tmp_path):
    bench = math500.load("builtin", REV, tmp_path)
    assert bench.name == "math500" and len(bench.problems) == len(sample_records()) and not bench.skipped
    first = bench.problems[0]
    assert first.id == "test/precalculus/807.json" and first.benchmark == "math500"
    assert first.gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.prompt.startswith("Convert the point $(0,3)$") and first.prompt.endswith(
        "\n" + MATH_INSTRUCTION
    )
    assert first.metadata == {"subject": "Precalculus", "level": 2}
    report = bench.to_json()
    assert report["origin"]["origin"] == "builtin" and report["n_problems"] == len(bench.problems)
    assert report["origin"]["sha256"] == {str(SAMPLE): file_sha256(SAMPLE)}


@pytest.mark.parametrize("form", ["jsonl", "json-array", "parquet", "directory"])
def test_local_files_in_every_supported_form(tmp_path, form):
    records = sample_records()[:5]
    if form == "jsonl":
        spec = write_jsonl(tmp_path / "test.jsonl", records)
    elif form == "json-array":
        spec = tmp_path / "test.json"
        spec.write_text(json.dumps(records))
    elif form == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        spec = tmp_path / "test-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(records), spec)
    else:
        spec = tmp_path / "math500"
        spec.mkdir()
        write_jsonl(spec / "test.jsonl", records)
    bench = math500.load(str(spec), REV, tmp_path)
    assert [p.id for p in bench.problems] == [r["unique_id"] for r in records]
    assert bench.to_json()["origin"]["origin"] == "local"


def test_none_is_no_problems(tmp_path):
    assert math500.load("none", REV, tmp_path).problems == []


def test_a_missing_local_file_says_what_to_set(tmp_path):
    with pytest.raises(DataError, match="R1FT_MATH500_SOURCE"):
        math500.load(str(tmp_path / "nope.jsonl"), REV, tmp_path)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda r: r.pop("answer"), "field 'answer' is missing"),
        (lambda r: r.update(level=[2]), "field 'level' is a list"),
        (lambda r: r.update(unique_id=7), "field 'unique_id' is a int"),
    ],
)
def test_a_wrong_first_record_is_a_clear_error(tmp_path, change, says):
    records = sample_records()[:3]
    change(records[0])
    path = write_jsonl(tmp_path / "test.jsonl", records)
    with pytest.raises(DataError) as e:
        math500.load(str(path), REV, tmp_path)
    message = str(e.value)
    assert says in message and "record 1" in message and str(path) in message
    assert "R1FT_MATH500_SOURCE" in message and "unique_id" in message  # the expected schema is named


def test_a_training_file_is_refused_as_math500(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match="field 'problem' is missing"):
        math500.load(str(path), REV, tmp_path)


def test_later_bad_records_are_counted_and_left_out(tmp_path):
    records = sample_records()[:4]
    del records[2]["solution"]
    path = write_jsonl(tmp_path / "test.jsonl", records)
    with path.open("a") as f:
        f.write("{not json\n")
    bench = math500.load(str(path), REV, tmp_path)
    assert len(bench.problems) == 3
    assert bench.skipped == {"wrong_schema": 1, "undecodable_text": 1}


def test_duplicate_ids_are_refused(tmp_path):
    records = sample_records()[:2]
    path = write_jsonl(tmp_path / "test.jsonl", [*records, records[0]])
    with pytest.raises(DataError, match="also appears"):
        math500.load(str(path), REV, tmp_path)


def test_hub_source_downloads_the_pinned_revision_into_the_work_dir(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        snap = Path(kwargs["cache_dir"]) / "datasets--HuggingFaceH4--MATH-500" / "snapshots" / REV
        snap.mkdir(parents=True)
        shutil.copy(SAMPLE, snap / "test.jsonl")
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    bench = math500.load(math500.MATH500_REPO, REV, tmp_path / "work", token="hf_x")
    (call,) = calls
    assert (call["repo_id"], call["repo_type"], call["revision"]) == (
        "HuggingFaceH4/MATH-500",
        "dataset",
        REV,
    )
    assert Path(call["cache_dir"]) == tmp_path / "work" / "hf_cache" and call["token"] == "hf_x"
    assert "*test*.jsonl" in call["allow_patterns"]
    assert len(bench.problems) == len(sample_records())
    assert (bench.origin["origin"], bench.origin["revision"]) == ("hub", REV)


def test_hub_failures_name_the_math500_settings(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(**kwargs):
        raise LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DataError) as e:
        math500.load(math500.MATH500_REPO, REV, tmp_path)
    assert "cannot reach the Hub" in str(e.value) and "R1FT_MATH500_SOURCE" in str(e.value)


def test_the_revision_is_a_full_commit_sha():
    assert len(REV) == 40 and int(REV, 16) >= 0


# --- the held-out split -------------------------------------------------------------------------------


def test_heldout_examples_become_an_in_distribution_benchmark():
    examples = [
        {"id": "mci-1", "source": "mathcodeinstruct", "problem": "What is 2+3?\n" + MATH_INSTRUCTION,
         "reasoning": "2+3=5", "answer": "The answer is $\\boxed{5}$.", "gold": "5"},
        {"id": "mci-2", "source": "mathcodeinstruct", "problem": "Say hi.\n" + MATH_INSTRUCTION,
         "reasoning": "hi", "answer": "hi", "gold": ""},
        {"id": "scibench-stat_1-ab", "source": "scibench", "problem": "p\n" + MATH_INSTRUCTION,
         "reasoning": "r", "answer": "a", "gold": "0.25"},
    ]  # fmt: skip
    bench = heldout.heldout_benchmark(examples)
    assert [p.id for p in bench.problems] == ["mci-1", "scibench-stat_1-ab"]
    assert bench.skipped == {"empty_answer": 1} and "in-distribution" in bench.note
    first = bench.problems[0]
    assert first.prompt == examples[0]["problem"]  # already the user turn: not wrapped twice
    assert first.prompt.count(MATH_INSTRUCTION) == 1
    assert (first.benchmark, first.gold, first.metadata) == ("heldout", "5", {"source": "mathcodeinstruct"})
    verdicts = score_all(
        [Answer(p.id, 0, p.gold, "...</think>\n\n$\\boxed{5}$", True, 3) for p in bench.problems], workers=0
    )
    assert [v.correct for v in verdicts] == [True, False]
