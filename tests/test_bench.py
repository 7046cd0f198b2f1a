"""The benchmark's logic on the tiny CPU model: variants in their own processes, same sequences, the loss
check, the table and the JSON; plus its length table and FLOP count."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from r1ft.bench import lengths as benchdata
from r1ft.bench import training as bench
from r1ft.bench import training_report, variants
from r1ft.model.tiny import base_config
from r1ft.settings_load import load_settings


def bench_args(tmp_path: Path, **kw) -> argparse.Namespace:
    args = bench.parser().parse_args([])
    args.tiny, args.out = True, tmp_path / "out" / "bench.json"
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def run_bench(tmp_path: Path, capsys, **kw) -> tuple[int, dict, str]:
    settings = load_settings({"R1FT_WORK_DIR": str(tmp_path / "work")}, env_file=None)
    code = bench.main(settings, bench_args(tmp_path, **kw))
    out = capsys.readouterr().out
    return code, json.loads((tmp_path / "out" / "bench.json").read_text()), out


def test_original_recipe_and_fast_path_train_the_same(tmp_path, capsys):
    """2 x 8 padded with accumulation and 16 padding-free in one micro-batch: the same losses, step by step."""
    code, report, out = run_bench(tmp_path, capsys, variants="a,b", steps=4)
    assert code == 0
    check = report["check"]
    assert check["passed"] and check["steps"] == 4 and check["max_rel_diff"] < 1e-4
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["a"]["layout"] == [2, 8, 1] and rows["b"]["layout"] == [16, 1, 1]
    assert rows["a"]["x_original"] == pytest.approx(1.0)
    assert all(r["tokens_per_s"] > 0 and r["s_per_step"] > 0 for r in rows.values())
    raw = {r["name"]: r for r in report["raw"]}
    assert raw["a"]["step_tokens"] == raw["b"]["step_tokens"]  # same sequences, same order
    last = out.strip().splitlines()
    assert last[-1].startswith("JSON:") and last[-2] == "GPU: cpu (tiny model)"
    assert "loss check" in out and "PASSED" in out


def test_profile_of_a_variant_keeps_tables_and_trace(tmp_path, capsys):
    """--profile: two steps under cProfile, two under torch.profiler, none of them timed; the tables, the
    sync and launch counts and a loadable Chrome trace are written beside the result."""
    import gzip

    code, report, _ = run_bench(tmp_path, capsys, variants="b", steps=7, profile="b")
    assert code == 0
    vdir = tmp_path / "work" / "bench" / "b"
    prof = (vdir / "result.prof.txt").read_text()
    assert "busy" in prof and "--- by self_cpu_time_total" in prof and "aten::" in prof
    assert "cProfile of 2 steps" in (vdir / "result.prof.cprof.txt").read_text()
    assert "compute_loss" in (vdir / "result.prof.cprof.txt").read_text()
    trace = json.loads(gzip.decompress((vdir / "result.prof.trace.json.gz").read_bytes()))
    assert any(e.get("name", "").startswith("aten::") for e in trace["traceEvents"])
    raw = report["raw"][0]
    assert raw["profiled_steps"] == [3, 7]
    assert report["rows"][0]["s_per_step"] > 0


@pytest.mark.slow
def test_two_processes_with_the_global_batch_train_like_one(tmp_path, capsys):
    """torchrun, gloo: 16 sequences over 2 processes give the single process's losses; 16 per process too."""
    code, report, _ = run_bench(tmp_path, capsys, gpus="2", steps=3)
    assert code == 0
    raw = {r["name"]: r for r in report["raw"]}
    one, strong, weak = raw["c"], raw["c_strong2"], raw["c_weak2"]
    assert strong["processes"] == 2 and strong["layout"] == [8, 1, 2] and weak["layout"] == [16, 1, 2]
    assert strong["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert weak["step_tokens"][0] > 1.5 * one["step_tokens"][0]
    assert {r["name"]: r.get("x_one_gpu") for r in report["rows"]}["c_weak2"] > 0


def test_scaling_variants_for_several_gpu_counts():
    names = [v.name for v in variants.multi_gpu_variants(variants.gpu_counts("4,2"))]
    assert names == ["c", "c_strong2", "c_weak2", "c_strong4", "c_weak4"]
    weak4 = variants.multi_gpu_variants([4])[-1]
    assert weak4.gpus == 4 and weak4.env["R1FT_GLOBAL_BATCH"] == "64"
    chosen = bench.choose_variants(
        {"gpus": [2], "variants": ["a", "c", "c_weak2"], "tiny": False, "profile": ""}
    )
    assert [(v.name, v.gpus) for v in chosen] == [("a", 1), ("c", 1), ("c_weak2", 2)]
    with pytest.raises(SystemExit, match="GPU counts"):
        variants.gpu_counts("two")


def test_failed_variant_reports_its_last_lines_without_progress_bars():
    log = "Loading weights:  2%|| 6/339 [00:00<00:13, 24.55it/s]\rLoading 100%|| 339/339 [00:00, 400it/s]\n"
    log += "  warnings.warn(x)\nTraceback (most recent call last):\nValueError: out of memory\n"
    assert bench.log_tail(log) == ["Traceback (most recent call last):", "ValueError: out of memory"]


def test_unknown_variant_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown variant"):
        run_bench(tmp_path, capsys, variants="zz")


def test_every_variant_sees_a_prefix_of_the_same_sequences():
    typical = variants.Variant("x", "x")
    short = bench.sequences(typical, 2, tiny=False, vocab=151936, max_len=2048, seed=7)
    long = bench.sequences(typical, 5, tiny=False, vocab=151936, max_len=2048, seed=7)
    assert len(short) == 32 and long[:32] == short
    for row in short:
        n_prompt = row["labels"].count(-100)
        assert 0 < n_prompt < len(row["input_ids"]) <= 2048
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    worst = bench.sequences(variants.Variant("w", "w", data="worst"), 1, False, 151936, 2048, 7)
    assert {len(r["input_ids"]) for r in worst} == {2048}


def test_flops_and_summary():
    cfg = base_config()
    flops = training_report.model_flops(cfg, 16, [(400, 500)])
    n_layers = 28 * (1536 * 1536 * 2 + 2 * 1536 * 256 + 1536 + 2 * 256 + 3 * 1536 * 8960 + 2 * 1536)
    assert 4 * n_layers * 500 < flops < 1.1 * 4 * n_layers * 500 + 4 * 151936 * 1536 * 400
    result = {
        "warmup": 1,
        "processes": 1,
        "step_s": [9.0, 1.0, 2.0, 3.0, 50.0, 50.0],
        "step_tokens": [100, 100, 100, 100, 100, 100],
        "step_peak_bytes": [2**30, 3 * 2**30],
        "seq_lengths": [(80, 100)] * 6,
        "profiled_steps": [4, 6],
    }
    s = training_report.summarize(result, cfg, 16, "NVIDIA H100 80GB HBM3", mean_tokens=450.0)
    assert s["s_per_step"] == 2.0 and s["tokens_per_s"] == pytest.approx(50.0)  # warm-up and profile left out
    assert s["peak_gib"] == 3.0
    assert s["mfu"] == pytest.approx(3 * training_report.model_flops(cfg, 16, [(80, 100)]) / 6.0 / 989.4e12)
    assert s["full_recipe_h"] == pytest.approx(3 * 22_500 * 450 / 50 / 3600)
    assert (
        training_report.peak_tflops("NVIDIA H100 PCIe") == 756.0
        and training_report.peak_tflops("weird card") is None
    )


def test_loss_check_tolerance():
    ok = training_report.loss_check({"a": {"losses": [10.0, 9.0]}, "b": {"losses": [10.1, 9.1]}})
    assert ok["passed"] and ok["max_rel_diff"] == pytest.approx(0.0111, abs=1e-3)
    bad = training_report.loss_check({"a": {"losses": [10.0, 9.0]}, "b": {"losses": [10.0, 8.0]}})
    assert bad["passed"] is False
    assert training_report.loss_check({"a": {"losses": [1.0]}})["passed"] is None


def test_several_gpus_launch_through_torchrun(tmp_path):
    cmd = bench.worker_command(4, tmp_path / "spec.json")
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=4" in cmd
    assert cmd[-3:] == ["-m", "r1ft.bench.worker", str(tmp_path / "spec.json")]
    assert bench.worker_command(1, tmp_path / "s.json")[1:] == [
        "-m",
        "r1ft.bench.worker",
        str(tmp_path / "s.json"),
    ]


def test_token_estimate_and_length_table():
    assert benchdata.estimate_tokens("The answer is 1234.") == 3 + 1 + 4 + 1  # words, the space, digits, "."
    assert benchdata.estimate_tokens(" electroencephalography") > 1
    table = benchdata.load_lengths()
    assert len(table["prompt"]) == len(table["completion"]) == 4000
    assert 400 < benchdata.mean_tokens(table, 2048) < 520
    assert len(benchdata.usable_pairs(table, 2048)) < 4000  # the longest examples are dropped, as in training


def test_length_table_is_derived_from_the_shared_sample(shared_data):
    sample = shared_data / "mathcoder-sample" / "mathcodeinstruct_format_sample.jsonl"
    derived = benchdata.derive_lengths(sample)
    kept = benchdata.load_lengths()
    assert derived["prompt"] == kept["prompt"] and derived["completion"] == kept["completion"]


def test_a_variants_library_switches_reach_its_worker_and_settings_do_not(monkeypatch):
    monkeypatch.delenv("R1FT_QUANT", raising=False)
    cpp = next(v for v in variants.single_gpu_variants() if v.name == "c_cpp")
    env = bench.worker_env(1, cpp.env)
    assert env["TORCHINDUCTOR_CPP_WRAPPER"] == "1"
    assert "R1FT_QUANT" not in env  # settings go through the spec, not the environment


def test_the_4bit_variant_is_the_original_preset_so_its_ratio_to_a_is_like_for_like(tmp_path):
    from r1ft.bench.worker import variant_settings
    from r1ft.machine.gpu import Hardware
    from r1ft.presets import ORIGINAL_RECIPE
    from r1ft.recipe import make_recipe

    named = {v.name: v for v in variants.single_gpu_variants()}
    spec = {"work_dir": str(tmp_path), "steps": 4, "seed": 42}
    h100 = Hardware(device="cuda", gpu_name="NVIDIA H100 80GB HBM3", gpu_mem_gb=85.0, bf16=True)
    for name in ("a", "b", "b_16g", "b_max16"):
        s = variant_settings({**spec, "env": named[name].env})
        assert s.preset == "original" and {k: getattr(s, k) for k in ORIGINAL_RECIPE} == ORIGINAL_RECIPE
    b = variant_settings({**spec, "env": named["b"].env})
    r = make_recipe(b, h100, 1, base_config())
    assert (r.quant, r.optimizer, r.compiled, r.layout.per_device) == ("nf4", "paged_adamw_8bit", True, 16)
    tiny = variant_settings({**spec, "env": variants.tiny_variant(named["b"]).env})  # CPU: no bitsandbytes
    cpu = make_recipe(tiny, Hardware(device="cpu"), 1, base_config())
    assert (cpu.quant, cpu.optimizer) == ("none", "adamw_torch")
