"""MATH-500: 500 problems of the MATH test set (the PRM800K split), DeepSeek's and open-r1's math benchmark.

Hub dataset `HuggingFaceH4/MATH-500`, one file `test.jsonl` (split `test`), one JSON object a line with
`problem`, `solution`, `answer`, `subject`, `level`, `unique_id` (MIT, like MATH). DeepSeek reports 83.9%
pass@1 for DeepSeek-R1-Distill-Qwen-1.5B (open-r1 reproduces 83.1%), at temperature 0.6, top_p 0.95 and
up to 32,768 new tokens: a check of this harness when the base model is scored the same way.

A source spec is read like the training sources (`r1ft.inputs`): `builtin` (the shipped sample
`r1ft/assets/samples/math500_sample.jsonl`, 17 real MATH-500 records in the exact schema), `none`, a local
`.jsonl`/`.json`/`.parquet` file, directory or glob, or a Hub dataset id downloaded at a pinned revision
into `{work_dir}/hf_cache`. The first record of each file must have MATH-500's schema (else DataError);
later records that cannot be read are counted and left out.

Each record becomes a `Problem`: id `unique_id` (e.g. `test/precalculus/807.json`), the user turn =
problem + the math instruction, gold = `answer`, metadata subject and level; scored with
`r1ft.tasks.verify`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from r1ft.inputs import Source, builtin_dir, env_name, file_sha256, resolve_spec
from r1ft.records import BadRecord, DataError, read_records
from r1ft.tasks.problem import Benchmark, Problem

NAME = "math500"
MATH500_REPO = "HuggingFaceH4/MATH-500"
# The commit that evaluation projects pin for this dataset (found in several public repositories; the Hub
# itself could not be reached when this was written): settings.MATH500_REVISION. Its test.jsonl is PRM800K's
# `prm800k/math_splits/test.jsonl` (sha256 35dc4108...6132, 446,564 bytes, per the PRM800K LFS pointer).
MATH500_SIZE = 500
SAMPLE_FILE = "math500_sample.jsonl"
HUB_PATTERNS = ["*test*.jsonl", "*test*.parquet"]  # the test split only
FIELDS: dict[str, type | tuple[type, ...]] = {
    "problem": str,
    "solution": str,
    "answer": str,
    "subject": str,
    "level": (int, str),
    "unique_id": str,
}
SCHEMA = '{"problem": str, "solution": str, "answer": str, "subject": str, "level": int, "unique_id": str}'
NOTE = "MATH-500 (HuggingFaceH4/MATH-500, test split), scored with math-verify"


def resolve(spec: str, revision: str, work_dir: Path, token: str | None = None) -> Source:
    """The MATH-500 files on local disk for a source spec (see the module docstring)."""
    builtin = [builtin_dir() / SAMPLE_FILE]
    return resolve_spec(NAME, spec, revision, Path(work_dir) / "hf_cache", token, builtin, HUB_PATTERNS)


def check_record(record: Any, path: Path, n: int) -> None:
    """DataError naming the file, record and field when a record does not have MATH-500's schema."""
    if not isinstance(record, dict):
        raise DataError(
            f"{path}: record {n} is a {type(record).__name__}, not an object. Expected MATH-500's schema "
            f"{SCHEMA}. Point {env_name(NAME)} at MATH-500's test.jsonl (or a copy of it)."
        )
    for name, kind in FIELDS.items():
        if name not in record:
            problem = f"field {name!r} is missing (it has {sorted(record)})"
        elif not isinstance(record[name], kind) or isinstance(record[name], bool):
            problem = f"field {name!r} is a {type(record[name]).__name__}"
        else:
            continue
        raise DataError(
            f"{path}: record {n}: {problem}. Expected MATH-500's schema {SCHEMA}. "
            f"Point {env_name(NAME)} at MATH-500's test.jsonl (or a copy of it)."
        )


def to_problem(record: dict) -> Problem:
    """One MATH-500 record as a Problem (id = unique_id, gold = answer)."""
    level = record["level"]
    return Problem.from_text(
        id=record["unique_id"].strip(),
        benchmark=NAME,
        problem=record["problem"],
        gold=record["answer"].strip(),
        metadata={"subject": record["subject"], "level": int(level) if str(level).isdigit() else level},
    )


def load(spec: str, revision: str, work_dir: Path, token: str | None = None) -> Benchmark:
    """MATH-500's problems from a source spec, in file order; DataError on a wrong schema or duplicate ids."""
    source = resolve(spec, revision, work_dir, token)
    problems: list[Problem] = []
    skipped: Counter[str] = Counter()
    seen: dict[str, str] = {}
    for path in source.files:
        first = True
        for n, record in read_records(path):
            if isinstance(record, BadRecord):
                skipped[record.reason] += 1
                continue
            try:
                check_record(record, path, n)
            except DataError:
                if first:  # the file is not MATH-500: say so rather than skip all of it
                    raise
                skipped["wrong_schema"] += 1
                continue
            finally:
                first = False
            problem = to_problem(record)
            if not problem.gold or not problem.id:
                skipped["empty_answer" if not problem.gold else "missing_field"] += 1
                continue
            if problem.id in seen:
                raise DataError(
                    f"{path}: record {n}: unique_id {problem.id!r} also appears in {seen[problem.id]}; "
                    f"point {env_name(NAME)} at one copy of MATH-500's test split"
                )
            seen[problem.id] = f"{path} record {n}"
            problems.append(problem)
    origin = {**source.describe(), "sha256": {str(f): file_sha256(f) for f in source.files}}
    return Benchmark(NAME, problems, origin=origin, skipped=dict(skipped), note=NOTE)
