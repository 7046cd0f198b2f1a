"""Data preparation: sources, schema checks, bad-record policy, contamination guard, dedup, draw, split,
length policy, up-sampling, cache, fingerprint, Hub failures, and the real files when they are there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_render import mci, sci  # the record builders (tests/ is on sys.path)

from r1ft.chat import IGNORE_INDEX, tokenize_example
from r1ft.data import mix
from r1ft.data import prepare as data
from r1ft.data.sources import builtin_files
from r1ft.data.stats import DataStats
from r1ft.inputs import builtin_dir
from r1ft.records import normalise_problem, read_records
from r1ft.settings_load import SettingsError, load_settings


def make_settings(tmp_path: Path, **values):
    """Smoke settings (builtin sources) with a work dir under tmp_path; values are R1FT_* fields."""
    env = {"R1FT_PRESET": "smoke", "R1FT_WORK_DIR": str(tmp_path / "work")}
    env.update({f"R1FT_{k.upper()}": str(v) for k, v in values.items()})
    return load_settings(env, env_file=None)


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def word_problems(n: int, start: int = 0) -> list[dict]:
    """n distinct, valid MathCodeInstruct records."""
    return [
        mci(
            f"Ann has {i} pens and buys {i + 3} more. How many pens does she have?",
            ("text", "Add the two amounts."),
            ("code", f"{i} + {i + 3}"),
            ("execution", str(2 * i + 3)),
            ("text", f"Ann has \\(\\boxed{{{2 * i + 3}}}\\) pens."),
        )
        for i in range(start, start + n)
    ]


def prepare(tmp_path: Path, tokenizer, **values) -> data.PreparedData:
    settings = make_settings(tmp_path, **values)
    return data.prepare_data(settings, tokenizer, tmp_path / "run")


@pytest.fixture(scope="module")
def builtin(tmp_path_factory, tiny_tokenizer) -> data.PreparedData:
    """The smoke preset's data: the shipped samples."""
    return prepare(tmp_path_factory.mktemp("builtin"), tiny_tokenizer)


# --- the shipped samples ----------------------------------------------------------------------------------


def test_builtin_counts(builtin):
    mci_stats, sci_stats = (
        builtin.stats.model_dump()["sources"]["mathcodeinstruct"],
        builtin.stats.model_dump()["sources"]["scibench"],
    )
    assert (mci_stats["records"], mci_stats["bad"], mci_stats["contaminated"]) == (24, {}, 1)
    assert mci_stats["duplicates"] == {"exact": 0, "problem": 0}  # R1FT_DEDUP=pair: a second solution stays
    assert (sci_stats["records"], sci_stats["solution_records"], sci_stats["test_records"]) == (14, 7, 7)
    assert sci_stats["duplicates"] == {"exact": 0, "problem": 0}
    assert builtin.stats.model_dump()["dropped"] == {"contaminated": 1}
    assert builtin.stats.model_dump()["contamination"] == {"test_problems": 7, "removed": 1, "leaked": 0}
    assert len(builtin.train) + len(builtin.eval) == 23 + 7  # every sample fits the smoke length (512)
    assert len(builtin.eval) >= 1 and len(builtin.scibench_test) == 7
    assert builtin.stats.model_dump()["cache_hit"] is False


def test_rows_are_the_chat_modules_tokenization(builtin, tiny_tokenizer):
    assert builtin.train.column_names == ["input_ids", "labels", "source", "id"]
    by_id = {ex["id"]: ex for ex in builtin.eval_examples}
    for row in builtin.eval:
        ex = by_id[row["id"]]
        assert set(ex) == {"id", "source", "problem", "reasoning", "answer", "gold"}
        assert {k: row[k] for k in ("input_ids", "labels")} == tokenize_example(
            tiny_tokenizer, ex["problem"], ex["reasoning"], ex["answer"]
        )


def test_scibench_test_records(builtin):
    for t in builtin.scibench_test:
        assert set(t) == {"problem_text", "answer_number", "unit", "source", "problemid", "problem"}
        assert all(v == v.strip() for v in t.values())
    units = {t["problemid"]: t for t in builtin.scibench_test}
    assert units["e1.4(a)"]["problem"].startswith("What is the wavelength")
    assert "The unit of the answer is $\\mathrm{~m}$." in units["e1.4(a)"]["problem"]


def test_iter_rendered(builtin, tiny_tokenizer):
    lines = list(data.iter_rendered(builtin, tiny_tokenizer, "train", 3))
    assert len(lines) == 3
    for line in lines:
        assert set(line) == {"source", "text", "loss_text"}
        assert line["text"].startswith("<｜begin▁of▁sentence｜><｜User｜>")
        assert line["text"].count("<｜begin▁of▁sentence｜>") == 1
        _, _, completion = line["text"].partition("<｜Assistant｜><think>\n")
        assert completion == line["loss_text"]  # the loss is exactly the completion, EOS included
        assert line["loss_text"].endswith("<｜end▁of▁sentence｜>")
        assert "\n</think>\n\n" in line["loss_text"] and "\\boxed{" in line["loss_text"].split("</think>")[1]
    assert len(list(data.iter_rendered(builtin, tiny_tokenizer, "eval", None))) == len(builtin.eval)
    with pytest.raises(ValueError):
        list(data.iter_rendered(builtin, tiny_tokenizer, "test", 1))


def test_stats_are_json(builtin):
    stats = json.loads(builtin.stats.model_dump_json())
    assert DataStats.model_validate(stats) == builtin.stats  # report.json and the cache round-trip
    assert {"sources", "dropped", "counts", "tokens", "contamination", "fingerprint", "cache_hit"} <= set(
        stats
    )
    assert stats["tokens"]["length"]["max"] <= 512


# --- contamination guard ----------------------------------------------------------------------------------


def test_no_scibench_test_problem_reaches_train_or_eval(tmp_path, tiny_tokenizer):
    """MathCodeInstruct records and SciBench solutions that repeat main-file problems (case, spacing, `$`
    and line ends changed) are removed; no main-file problem is in any train or eval text."""
    mains = [
        r
        for p in sorted((builtin_dir() / "scibench").glob("*.json"))
        if "_sol" not in p.name
        for _, r in read_records(p)
    ]
    variants = [m["problem_text"].upper().replace(" ", "  ").replace("$", "") + "\r\n" for m in mains]
    records = word_problems(20) + [mci(v, ("text", "So \\boxed{1}.")) for v in variants]
    sci_dir = tmp_path / "sci"
    shutil.copytree(builtin_dir() / "scibench", sci_dir)
    leaked_sol = [sci(problem_text=m["problem_text"] + " ") for m in mains[:2]]
    (sci_dir / "leak_sol.json").write_text(json.dumps(leaked_sol))
    p = prepare(
        tmp_path,
        tiny_tokenizer,
        mathcodeinstruct_source=write_jsonl(tmp_path / "mci.jsonl", records),
        scibench_source=sci_dir,
        eval_fraction=0.3,
    )
    assert p.stats.model_dump()["contamination"]["removed"] == len(mains) + 2
    assert p.stats.model_dump()["sources"]["mathcodeinstruct"]["contaminated"] == len(mains)
    test_keys = {normalise_problem(m["problem_text"]) for m in mains}
    for split in ("train", "eval"):
        for line in data.iter_rendered(p, tiny_tokenizer, split, None):
            problem = line["text"].split("<｜User｜>")[1].split("\nPlease reason step by step")[0]
            problem = problem.split(" The unit of the answer is")[0]
            assert normalise_problem(problem) not in test_keys


# --- dedup ------------------------------------------------------------------------------------------------


def test_duplicates_removed_and_counted(tmp_path, tiny_tokenizer):
    base = word_problems(6)
    again = json.loads(json.dumps(base[0]))  # exact copy
    other_solution = mci(
        base[1]["messages"][1]["content"][0]["content"].upper() + "  ", ("text", "It is \\boxed{9}.")
    )
    sol_problem = (
        "A ball is dropped from rest from a height of $20.0 \\mathrm{~m}$. How long does it take to reach "
        "the ground? Take $g=9.80 \\mathrm{~m} / \\mathrm{s}^2$."
    )  # the same problem as a builtin SciBench solution
    sol_copy = mci(sol_problem, ("text", "It is \\boxed{2}."))
    p = prepare(
        tmp_path,
        tiny_tokenizer,
        mathcodeinstruct_source=write_jsonl(tmp_path / "m.jsonl", [*base, again, other_solution, sol_copy]),
        dedup="problem",
    )
    s = p.stats.model_dump()["sources"]
    assert s["mathcodeinstruct"]["duplicates"] == {"exact": 1, "problem": 2}  # the SciBench solution wins
    assert s["scibench"]["duplicates"] == {"exact": 0, "problem": 1}
    ids = list(p.train["id"]) + list(p.eval["id"])
    assert len(ids) == len(set(ids)) == 6 + 6


def _solutions(problem: str, answers: list[int]) -> list[dict]:
    """Distinct solutions of one problem, one record each."""
    return [mci(problem, ("text", f"Way {i}: it is \\boxed{{{a}}}.")) for i, a in enumerate(answers)]


def mix_set() -> list[dict]:
    """A constructed MathCodeInstruct set: a word problem with three solutions and an exact repeat of one, a
    LaTeX problem with two solutions, and six problems with one solution each."""
    word = _solutions("Tom has 3 apples and buys 4. How many apples has he?", [7, 7, 7])
    latex = _solutions("Compute $\\frac{1}{2} + \\frac{1}{3}$.", [5, 5])
    singles = word_problems(6)
    return [*word, json.loads(json.dumps(word[0])), *latex, *singles]


@pytest.mark.parametrize(
    ("mode", "kept", "duplicates", "pool"),
    [
        ("problem", 8, {"exact": 1, "problem": 3}, {"gsm8k": 1, "math": 1, "interpolated": 6}),
        ("pair", 11, {"exact": 1, "problem": 0}, {"gsm8k": 3, "math": 2, "interpolated": 6}),
    ],
)
def test_dedup_modes_and_the_mix_they_leave(tmp_path, tiny_tokenizer, mode, kept, duplicates, pool):
    """problem: one solution per problem; pair: every distinct solution, only the exact repeat goes. The mix
    by origin is counted before and after, and every solution of a problem lands on one side of the split."""
    src = write_jsonl(tmp_path / "m.jsonl", mix_set())
    p = prepare(tmp_path, tiny_tokenizer, mathcodeinstruct_source=src, scibench_source="none", dedup=mode,
                mathcodeinstruct_samples=0, eval_fraction=0.3)  # fmt: skip
    stats = p.stats
    assert stats.sources["mathcodeinstruct"].duplicates == duplicates
    assert stats.mix.loaded == {"gsm8k": 4, "math": 2, "interpolated": 6}  # the repeat counted, told apart
    assert stats.mix.deduplicated == stats.mix.drawn == pool
    assert sum(stats.mix.train.values()) + sum(stats.mix.eval.values()) == kept
    assert stats.mix.train_rows == stats.mix.train and "no field" in stats.mix.rule
    ids = list(p.train["id"]) + list(p.eval["id"])
    assert len(ids) == len(set(ids)) == kept  # several solutions of one problem: an id each
    text = {split: " ".join(r["text"] for r in data.iter_rendered(p, tiny_tokenizer, split)) for split in
            ("train", "eval")}  # fmt: skip
    for problem in ("Tom has 3 apples", "\\frac{1}{2}"):
        assert sum(problem in t for t in text.values()) == 1  # all its solutions on one side
    keys = [ex["problem"] for ex in p.eval_examples]
    assert len(keys) == len(set(keys))  # generation scoring asks each held-out problem once


def test_the_draw_takes_each_solution_on_its_own_with_pair(tmp_path, tiny_tokenizer):
    """pair ranks (seed, problem, solution): a draw of 6 from 11 examples need not take whole problems."""
    src = write_jsonl(tmp_path / "m.jsonl", mix_set())
    seen = set()
    for seed in range(6):
        p = prepare(tmp_path / str(seed), tiny_tokenizer, mathcodeinstruct_source=src, scibench_source="none",
                    dedup="pair", mathcodeinstruct_samples=6, seed=seed)  # fmt: skip
        assert sum(p.stats.mix.drawn.values()) == 6
        seen.add(p.stats.mix.drawn.get("gsm8k", 0))
    assert seen - {0, 3}  # some draw took part of the three-solution problem


def test_a_problem_crossing_to_the_empty_split_takes_all_its_solutions():
    pairs = [({"key": k, "n": i}, {}) for i, k in enumerate(["a", "a", "b", "c", "c"])]
    for train, held in (mix.ensure_both_splits(pairs, []), mix.ensure_both_splits([], pairs)):
        assert train and held and len(train) + len(held) == 5
        assert not {ex["key"] for ex, _ in train} & {ex["key"] for ex, _ in held}  # no problem on both sides
    one = [({"key": "a", "n": i}, {}) for i in range(3)]  # a single problem: one solution has to cross
    assert [len(side) for side in mix.ensure_both_splits(one, [])] == [2, 1]


def test_origin_needs_several_solutions_and_reads_notation():
    from r1ft.data.origin import looks_like_math

    assert looks_like_math("Find $x$ if $2x = 4$.") and looks_like_math("Let \\[f(x)=x^2.\\]")
    assert looks_like_math("What is 1/6 + 1/3? Express your answer as a common fraction.")
    assert not looks_like_math("She pays $5 for one and $7 for the other. How much in all?")
    assert not looks_like_math("Janet sells eggs for $2 each.")


# --- split, draw, determinism -----------------------------------------------------------------------------


def _split_ids(p: data.PreparedData) -> tuple[set[str], set[str]]:
    return set(p.train["id"]), set(p.eval["id"])


def test_split_is_stable_and_seed_independent(tmp_path, tiny_tokenizer):
    records = word_problems(60)
    src = write_jsonl(tmp_path / "a.jsonl", records)
    a = prepare(
        tmp_path / "a", tiny_tokenizer, mathcodeinstruct_source=src, scibench_source="none", eval_fraction=0.2
    )
    b = prepare(
        tmp_path / "b", tiny_tokenizer, mathcodeinstruct_source=src, scibench_source="none", eval_fraction=0.2
    )
    assert a.train["id"] == b.train["id"] and a.train["input_ids"] == b.train["input_ids"]  # deterministic
    assert a.eval["id"] == b.eval["id"]
    reseeded = prepare(tmp_path / "c", tiny_tokenizer, mathcodeinstruct_source=src, scibench_source="none",
                       eval_fraction=0.2, seed=7)  # fmt: skip
    assert _split_ids(reseeded) == _split_ids(a)  # the same problems held out
    assert reseeded.train["id"] != a.train["id"]  # in another order
    # more data (in another order) moves no problem across the split
    more = write_jsonl(tmp_path / "more.jsonl", list(reversed(records)) + word_problems(40, start=100))
    c = prepare(
        tmp_path / "d",
        tiny_tokenizer,
        mathcodeinstruct_source=more,
        scibench_source="none",
        eval_fraction=0.2,
    )
    train_c, eval_c = _split_ids(c)
    train_a, eval_a = _split_ids(a)
    assert train_a <= train_c and eval_a <= eval_c
    assert 5 <= len(eval_c) <= 40  # about 20% of 100


def test_draw_size_and_top_up(tmp_path, tiny_tokenizer):
    long_ones = [
        mci(f"Long problem {i}?", ("text", "Think. " * 300), ("text", "So \\boxed{1}.")) for i in range(10)
    ]
    src = write_jsonl(tmp_path / "m.jsonl", word_problems(30) + long_ones)
    p = prepare(
        tmp_path,
        tiny_tokenizer,
        mathcodeinstruct_source=src,
        scibench_source="none",
        mathcodeinstruct_samples=25,
    )
    s = p.stats.model_dump()["sources"]["mathcodeinstruct"]
    assert s["train"] + s["eval"] == 25  # too-long draws replaced by the next ones
    assert s["length"]["ok"] == 25 and s["length"]["too_long"] + s["length"]["not_drawn"] == 15
    assert len(p.train) + len(p.eval) == 25


def test_truncate_policy(tmp_path, tiny_tokenizer):
    records = [*word_problems(5), mci("Long?", ("text", "Think. " * 300), ("text", "So \\boxed{1}."))]
    src = write_jsonl(tmp_path / "m.jsonl", records)
    p = prepare(
        tmp_path,
        tiny_tokenizer,
        mathcodeinstruct_source=src,
        scibench_source="none",
        length_policy="truncate",
        max_seq_len=160,
    )
    s = p.stats.model_dump()["sources"]["mathcodeinstruct"]["length"]
    assert s["truncated"] >= 1 and s["too_long"] == 0
    for row in [*p.train, *p.eval]:
        assert len(row["input_ids"]) <= 160 and any(lab != IGNORE_INDEX for lab in row["labels"])
    dropped = prepare(
        tmp_path / "d", tiny_tokenizer, mathcodeinstruct_source=src, scibench_source="none", max_seq_len=160
    )
    assert dropped.stats.model_dump()["sources"]["mathcodeinstruct"]["length"]["too_long"] >= 1
    assert dropped.stats.model_dump()["dropped"]["too_long"] >= 1


@pytest.mark.parametrize(
    ("n_prompt", "n_completion", "policy", "what", "kept"),
    [
        (10, 20, "drop", "ok", 30),
        (10, 30, "drop", "too_long", None),
        (10, 30, "truncate", "truncated", 32),
        (40, 5, "truncate", "prompt_too_long", None),
    ],
)
def test_fit_length(n_prompt, n_completion, policy, what, kept):
    tokens = {
        "input_ids": list(range(n_prompt + n_completion)),
        "labels": [IGNORE_INDEX] * n_prompt + [1] * n_completion,
    }
    fitted, happened = mix.fit_length(tokens, 32, policy)
    assert happened == what
    assert (None if fitted is None else len(fitted["input_ids"])) == kept


def test_batched_tokenization_matches_chat_module_on_both_paths(tiny_tokenizer):
    import copy

    examples = [dict(ex, problem=ex["problem"] + " " + "x" * i) for i, ex in enumerate(_builtin_examples())]
    slow_tok = copy.deepcopy(tiny_tokenizer)
    slow_tok.backend_tokenizer.enable_truncation(100_000)  # forces the tokenizer(...) path
    for output_loss in (True, False):
        fast = mix.tokenize_examples(tiny_tokenizer, examples, output_loss)
        slow = mix.tokenize_examples(slow_tok, examples, output_loss)
        for ex, a, b in zip(examples, fast, slow, strict=True):
            one = tokenize_example(tiny_tokenizer, ex["problem"], ex["reasoning"], ex["answer"], output_loss)
            assert a == b and {k: a[k] for k in one} == one
            assert len(a["kinds"]) == len(a["input_ids"])


def _builtin_examples() -> list[dict]:
    from r1ft.data.render import render_mathcodeinstruct

    (path,) = builtin_files("mathcodeinstruct")  # the samples folder also holds MATH-500's
    return [render_mathcodeinstruct(r) for _, r in read_records(path)]


def test_scibench_upsampled_in_train_only(tmp_path, tiny_tokenizer):
    p = prepare(tmp_path, tiny_tokenizer, scibench_upsample=3, eval_fraction=0.4)
    s = p.stats.model_dump()["sources"]["scibench"]
    train_ids = list(p.train["id"])
    sci_train = [i for i in train_ids if i.startswith("scibench-")]
    assert len(sci_train) == 3 * s["train"] == s["train_rows"] and len(set(sci_train)) == s["train"]
    eval_ids = list(p.eval["id"])
    assert len(eval_ids) == len(set(eval_ids)) and not set(eval_ids) & set(train_ids)


# --- bad records and schema -------------------------------------------------------------------------------


def test_bad_records_counted_and_tolerated(tmp_path, tiny_tokenizer):
    lines = [json.dumps(r) for r in word_problems(40)]
    lines[5] = '{"messages": [oops'
    lines[9] = json.dumps(mci("Q?", ("text", "No final answer here.")))
    raw = ("\n".join(lines) + "\n").encode() + b'{"messages": "\xff"}\n'
    src = tmp_path / "m.jsonl"
    src.write_bytes(raw)
    p = prepare(
        tmp_path, tiny_tokenizer, mathcodeinstruct_source=src, scibench_source="none", max_bad_fraction=0.1
    )
    s = p.stats.model_dump()["sources"]["mathcodeinstruct"]
    assert s["records"] == 41 and s["bad"] == {"undecodable_text": 2, "no_final_answer": 1}
    assert p.stats.model_dump()["dropped"]["bad:undecodable_text"] == 2
    assert s["bad_examples"][0].startswith(f"{src} record 6, field line 6: undecodable_text")


def test_too_many_bad_records_stop_with_file_and_reasons(tmp_path, tiny_tokenizer):
    records = word_problems(30) + [mci(f"Q{i}?", ("text", "No box.")) for i in range(2)]
    src = write_jsonl(tmp_path / "m.jsonl", records)
    with pytest.raises(data.DataError) as e:
        prepare(
            tmp_path,
            tiny_tokenizer,
            mathcodeinstruct_source=src,
            scibench_source="none",
            max_bad_fraction=0.05,
        )
    msg = str(e.value)
    assert "2 of 32 mathcodeinstruct records (6.2%)" in msg and "no_final_answer: 2" in msg
    assert str(src) in msg and "R1FT_MAX_BAD_FRACTION" in msg


def test_nothing_left_after_the_length_policy_says_how_many_and_why(tmp_path, tiny_tokenizer):
    """`r1ft data --stats` fails the same way, so the error itself carries the counts and the fix."""
    long = [
        mci(f"Q{i}: {'the pens of Ann ' * 40}?", ("text", f"So \\(\\boxed{{{i}}}\\).")) for i in range(12)
    ]
    src = write_jsonl(tmp_path / "m.jsonl", long)
    with pytest.raises(data.DataError) as e:
        prepare(tmp_path, tiny_tokenizer, mathcodeinstruct_source=src, scibench_source="none", max_seq_len=64)
    msg = str(e.value)
    assert "12 cleaned examples, none fits R1FT_MAX_SEQ_LEN=64 under R1FT_LENGTH_POLICY=drop" in msg
    assert "mathcodeinstruct: too_long 12" in msg and "R1FT_LENGTH_POLICY=truncate" in msg


@pytest.mark.parametrize(
    ("first", "field"),
    [
        ({"question": "Q", "answer": "A"}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"kind": "text", "content": "Q"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ],
)
def test_wrong_shape_fails_on_the_first_record(tmp_path, tiny_tokenizer, first, field):
    src = write_jsonl(tmp_path / "m.jsonl", [first, *word_problems(3)])
    with pytest.raises(data.DataError) as e:
        prepare(tmp_path, tiny_tokenizer, mathcodeinstruct_source=src)
    msg = str(e.value)
    assert msg.startswith(f"{src}: record 1, field {field}:")
    assert "Expected MathCodeInstruct's shape" in msg and "R1FT_MATHCODEINSTRUCT_SOURCE" in msg


def test_scibench_source_in_another_shape_fails(tmp_path, tiny_tokenizer):
    src = write_jsonl(tmp_path / "x.jsonl", word_problems(2))
    with pytest.raises(
        data.DataError, match=r"looks like a mathcodeinstruct record.*Expected SciBench's shape"
    ):
        prepare(tmp_path, tiny_tokenizer, scibench_source=src)


# --- sources ----------------------------------------------------------------------------------------------


def test_local_formats_glob_dir_parquet_chat(tmp_path, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "mine"
    write_jsonl(d / "a.jsonl", word_problems(3))
    (d / "b.json").write_text(json.dumps(word_problems(3, start=10)))  # a JSON array
    pq.write_table(pa.Table.from_pylist(word_problems(3, start=20)), d / "c.parquet")
    chat = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i}+{i}?"},
                {"role": "assistant", "content": f"<think>\nDouble it.\n</think>\n\n\\boxed{{{2 * i}}}"},
            ]
        }
        for i in range(3)
    ]
    write_jsonl(d / "sub" / "d.json", chat)  # JSON lines in a .json file, in a subdirectory
    (d / "notes.txt").write_text("not data")
    p = prepare(tmp_path, tiny_tokenizer, mathcodeinstruct_source=d, scibench_source="none")
    s = p.stats.model_dump()["sources"]["mathcodeinstruct"]
    assert s["records"] == 12 and s["bad"] == {} and s["shapes"] == ["chat", "mathcodeinstruct"]
    assert set(p.train["source"]) | set(p.eval["source"]) == {"mathcodeinstruct", "chat"}
    g = prepare(
        tmp_path / "g", tiny_tokenizer, mathcodeinstruct_source=f"{d}/*.json*", scibench_source="none"
    )
    assert g.stats.model_dump()["sources"]["mathcodeinstruct"]["records"] == 6


def test_scibench_single_sol_file_and_none(tmp_path, tiny_tokenizer):
    p = prepare(
        tmp_path,
        tiny_tokenizer,
        mathcodeinstruct_source="none",
        scibench_source=builtin_dir() / "scibench" / "stat_sol.json",
    )
    assert p.stats.model_dump()["sources"]["scibench"]["records"] == 2 and p.scibench_test == []
    assert p.stats.model_dump()["sources"]["mathcodeinstruct"]["origin"] == "none"
    with pytest.raises(SettingsError, match="nothing to train on"):  # refused with the settings, up front
        prepare(tmp_path / "n", tiny_tokenizer, mathcodeinstruct_source="none", scibench_source="none")


@pytest.mark.parametrize("spec", ["missing/dir/", "./nope.jsonl", "/tmp/r1ft-no-such-*.jsonl"])
def test_missing_local_source(tmp_path, tiny_tokenizer, spec):
    from r1ft.settings_load import SettingsError

    # Caught when the settings are parsed, before anything runs ...
    with pytest.raises(SettingsError, match="R1FT_MATHCODEINSTRUCT_SOURCE="):
        make_settings(tmp_path, mathcodeinstruct_source=spec)
    # ... and by the loader itself if the path vanishes after that.
    settings = make_settings(tmp_path).model_copy(update={"mathcodeinstruct_source": spec})
    with pytest.raises(data.DataError, match="R1FT_MATHCODEINSTRUCT_SOURCE="):
        data.prepare_data(settings, tiny_tokenizer, tmp_path / "run")


# --- the Hub ----------------------------------------------------------------------------------------------


def _hub_error(kind: str) -> Exception:
    import httpx2
    from huggingface_hub import errors

    def response(code: int):
        return httpx2.Response(code, request=httpx2.Request("GET", "https://huggingface.co/api/datasets/o/n"))

    return {
        "missing": errors.RepositoryNotFoundError("Repository Not Found", response=response(401)),
        "gated": errors.GatedRepoError("Access to dataset is restricted", response=response(403)),
        "revision": errors.RevisionNotFoundError("Revision Not Found", response=response(404)),
        "offline": errors.LocalEntryNotFoundError("cannot find the requested files in the local cache"),
        "connection": ConnectionError("Failed to resolve 'huggingface.co'"),
        "server": errors.HfHubHTTPError("Internal Server Error", response=response(500)),
    }[kind]


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        (
            "missing",
            ["not found or is private", "HF_TOKEN", "R1FT_MATHCODEINSTRUCT_SOURCE at the local copy"],
        ),
        ("gated", ["is gated", "accept its terms", "set HF_TOKEN", "local copy"]),
        ("revision", ["no revision 'v9'", "R1FT_MATHCODEINSTRUCT_REVISION", "local copy"]),
        ("offline", ["cannot reach the Hub", "local copy"]),
        ("connection", ["ConnectionError", "check the network", "local copy"]),
        ("server", ["HTTP 500", "local copy"]),
    ],
)
def test_hub_failures_say_what_to_do(tmp_path, tiny_tokenizer, monkeypatch, kind, says):
    import huggingface_hub

    def fail(**kwargs):
        raise _hub_error(kind)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(data.DataError) as e:
        prepare(
            tmp_path, tiny_tokenizer, mathcodeinstruct_source="owner/name", mathcodeinstruct_revision="v9"
        )
    for phrase in says:
        assert phrase in str(e.value)
    assert e.value.__cause__ is not None


def test_hub_source_downloads_into_the_work_dir(tmp_path, tiny_tokenizer, monkeypatch):
    import huggingface_hub

    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        snap = Path(kwargs["cache_dir"]) / "datasets--xw27--scibench" / "snapshots" / ("a" * 40)
        shutil.copytree(builtin_dir() / "scibench", snap / "dataset", dirs_exist_ok=True)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    settings = make_settings(tmp_path, scibench_source="xw27/scibench", scibench_revision="main")
    p = data.prepare_data(settings, tiny_tokenizer, tmp_path / "run")
    (call,) = calls
    assert (
        call["repo_id"] == "xw27/scibench" and call["repo_type"] == "dataset" and call["revision"] == "main"
    )
    assert Path(call["cache_dir"]) == tmp_path / "work" / "hf_cache"
    assert "*stat_sol.json" in call["allow_patterns"]
    s = p.stats.model_dump()["sources"]["scibench"]
    assert (s["origin"], s["revision"], s["records"]) == ("hub", "a" * 40, 14)
    assert data.prepare_data(settings, tiny_tokenizer, tmp_path / "run").stats.model_dump()["cache_hit"]
    assert len(calls) == 1  # the cache answered; no second download


# --- cache and fingerprint --------------------------------------------------------------------------------


def test_cache_reuse_and_invalidation(tmp_path, tiny_tokenizer):
    src = write_jsonl(tmp_path / "m.jsonl", word_problems(12))
    settings = make_settings(tmp_path, mathcodeinstruct_source=src)
    run = tmp_path / "run"
    first = data.prepare_data(settings, tiny_tokenizer, run)
    again = data.prepare_data(settings, tiny_tokenizer, run)
    assert again.stats.model_dump()["cache_hit"] and not first.stats.model_dump()["cache_hit"]
    assert again.train["input_ids"] == first.train["input_ids"] and again.eval_examples == first.eval_examples
    assert again.scibench_test == first.scibench_test
    write_jsonl(src, word_problems(13))  # the data changed
    assert not data.prepare_data(settings, tiny_tokenizer, run).stats.model_dump()["cache_hit"]
    other = make_settings(tmp_path, mathcodeinstruct_source=src, max_seq_len=400)  # a shaping setting changed
    assert not data.prepare_data(other, tiny_tokenizer, run).stats.model_dump()["cache_hit"]
    (run / "data" / "stats.json").write_text("{broken")
    assert not data.prepare_data(other, tiny_tokenizer, run).stats.model_dump()[
        "cache_hit"
    ]  # damaged: rebuilt
    assert not (run / "data.partial").exists()


def test_fingerprint(tmp_path):
    src = write_jsonl(tmp_path / "m.jsonl", word_problems(3))
    fp = data.data_fingerprint(make_settings(tmp_path, mathcodeinstruct_source=src))
    assert fp == data.data_fingerprint(make_settings(tmp_path, mathcodeinstruct_source=src))
    assert fp != data.data_fingerprint(make_settings(tmp_path, mathcodeinstruct_source=src, seed=1))
    for changed in ({"dedup": "problem"}, {"interpreter_output_loss": "false"}):  # they change the data
        assert fp != data.data_fingerprint(make_settings(tmp_path, mathcodeinstruct_source=src, **changed))
    write_jsonl(src, word_problems(4))
    assert fp != data.data_fingerprint(make_settings(tmp_path, mathcodeinstruct_source=src))
    hub = make_settings(tmp_path, mathcodeinstruct_source="owner/name")
    pinned = make_settings(tmp_path, mathcodeinstruct_source="owner/name", mathcodeinstruct_revision="abc")
    assert data.data_fingerprint(hub) != data.data_fingerprint(pinned)  # no network needed
    absent = make_settings(tmp_path).model_copy(
        update={"mathcodeinstruct_source": str(tmp_path / "absent.jsonl")}
    )
    assert data.data_fingerprint(absent)  # never raises: prepare_data reports a missing path


# --- the real files ---------------------------------------------------------------------------------------


def test_real_files_counts(shared_data, tmp_path, tiny_tokenizer):
    """Done-when: 692 SciBench records (112 worked solutions, two repeating another's problem; 580 held
    out), 4,000 MathCodeInstruct records; nothing bad; no test problem in the training data."""
    p = prepare(
        tmp_path,
        tiny_tokenizer,
        mathcodeinstruct_source=shared_data / "mathcoder-sample" / "mathcodeinstruct_format_sample.jsonl",
        scibench_source=shared_data / "scibench",
        mathcodeinstruct_samples=300,  # every record is read and rendered; only 300 are tokenized
        max_seq_len=2048,
    )
    m, s = p.stats.model_dump()["sources"]["mathcodeinstruct"], p.stats.model_dump()["sources"]["scibench"]
    assert (s["records"], s["solution_records"], s["test_records"], len(p.scibench_test)) == (
        692,
        112,
        580,
        580,
    )
    assert s["duplicates"] == {"exact": 1, "problem": 0} and s["bad"] == {}  # one problem, two solutions kept
    assert s["length"]["ok"] + s["length"]["too_long"] == 111
    assert (m["records"], m["examples"], m["bad"]) == (4000, 4000, {})
    assert m["length"]["ok"] == 300
    assert p.stats.model_dump()["contamination"] == {"test_problems": 580, "removed": 0, "leaked": 0}


def test_interpreter_output_mask_on_real_sample_records(shared_data, tmp_path, tiny_tokenizer):
    """R1FT_INTERPRETER_OUTPUT_LOSS=false on the shared MathCodeInstruct-format records: the same tokens, the
    output blocks (fences included) without loss, the code, the answer and the EOS with loss."""
    import re

    from r1ft.chat import IGNORE_INDEX

    sample = shared_data / "mathcoder-sample" / "mathcodeinstruct_format_sample.jsonl"
    common = {"mathcodeinstruct_source": sample, "scibench_source": "none", "mathcodeinstruct_samples": 120,
              "max_seq_len": 2048}  # fmt: skip
    kept = prepare(tmp_path / "kept", tiny_tokenizer, **common)
    masked = prepare(tmp_path / "masked", tiny_tokenizer, interpreter_output_loss="false", **common)
    assert list(kept.train["input_ids"]) == list(masked.train["input_ids"])  # the context is unchanged
    blocks_seen = 0
    for row, line in zip(masked.train, data.iter_rendered(masked, tiny_tokenizer, "train"), strict=True):
        ids, labels = row["input_ids"], row["labels"]
        start = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)  # the completion's first token
        runs, current = [], []
        for t, lab in zip(ids[start:], labels[start:], strict=True):
            if lab == IGNORE_INDEX:
                current.append(t)
            elif current:
                runs.append(tiny_tokenizer.decode(current))
                current = []
        blocks = re.findall(r"```output\n.*?```", line["text"], flags=re.DOTALL)
        assert [r.rstrip() for r in runs] == blocks  # exactly the output blocks, nothing else
        blocks_seen += len(blocks)
        answer = line["text"].rsplit("</think>", 1)[1]
        assert "```output" not in line["loss_text"] and line["loss_text"].endswith("</think>" + answer)
        assert labels[-1] == tiny_tokenizer.eos_token_id
        assert line["text"].count("```python") == line["loss_text"].count("```python")  # code keeps its loss
    assert blocks_seen > len(masked.train)  # about two output blocks an example
    for row in kept.train:
        start = next(i for i, lab in enumerate(row["labels"]) if lab != IGNORE_INDEX)
        assert row["labels"][start:] == row["input_ids"][start:]  # true: the whole completion carries loss
    k, m = kept.stats.tokens, masked.stats.tokens
    assert k.train_output_tokens == m.train_output_tokens == k.train_loss_by_block["output"] > 0
    assert m.train_loss_by_block["output"] == 0 and m.train_loss == k.train_loss - k.train_output_tokens
    assert m.train_output_blocks == blocks_seen


def test_files_a_source_directory_holds_but_cannot_read_are_named_in_the_log(tmp_path, caplog):
    from r1ft.inputs import local_files

    (tmp_path / "src" / "more").mkdir(parents=True)
    for name in ("a.jsonl", "more/b.json", "c.jsonl.gz", "notes.txt", ".hidden"):
        (tmp_path / "src" / name).write_text("")
    with caplog.at_level("WARNING"):
        files = local_files(str(tmp_path / "src"), "R1FT_MATHCODEINSTRUCT_SOURCE")
    assert [p.name for p in files] == ["a.jsonl", "b.json"]
    assert (
        "R1FT_MATHCODEINSTRUCT_SOURCE: not read (not .jsonl, .json or .parquet): c.jsonl.gz, notes.txt"
        in caplog.text
    )
