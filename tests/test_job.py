"""The whole job on the embedded tiny default, end to end, as `make demo` runs it."""

from __future__ import annotations

import json
import struct

import pytest
from jobrun import job_env, published_dir, run_dir_of, run_job

pytestmark = pytest.mark.slow

SECRET = "hf_NEVER_PRINT_THIS_TOKEN_123"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    env = job_env(tmp, HF_TOKEN=SECRET)
    result = run_job(env, tmp)
    return tmp, result


def test_smoke_job_exits_0_and_says_where_everything_is(smoke):
    tmp, result = smoke
    assert result.rc == 0, result.output[-3000:]
    assert f"published to {published_dir(tmp)}" in result.output
    assert "merged/" in result.output and "report" in result.output


def test_published_tree_holds_every_output(smoke):
    tmp, _ = smoke
    pub = published_dir(tmp)
    for rel in (
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "adapter/tokenizer_config.json",
        "merged/config.json",
        "merged/generation_config.json",
        "merged/tokenizer.json",
        "report.json",
        "README.md",
        "manifest.json",
        "eval/results.json",
        "eval/loss_curve.png",
    ):
        assert (pub / rel).is_file(), rel
    assert list((pub / "merged").glob("*.safetensors"))
    events = list((pub / "logs").glob("events.out.tfevents.*"))
    assert events


def test_tensorboard_events_are_real_and_hold_the_losses(smoke):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, _ = smoke
    (events,) = (published_dir(tmp) / "logs").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "eval/loss" in tags
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert len(losses) >= 10 and losses[-1] < losses[0]


def test_manifest_lists_every_published_file_with_its_checksum(smoke):
    import hashlib

    tmp, _ = smoke
    pub = published_dir(tmp)
    manifest = json.loads((pub / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {
        p.relative_to(pub).as_posix()
        for p in pub.rglob("*")
        if p.is_file() and p.name != "manifest.json" and "last-checkpoint" not in p.parts
    }
    assert on_disk == set(listed)
    for rel, f in listed.items():
        data = (pub / rel).read_bytes()
        assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"]


def test_report_has_stats_metrics_timings_disk_and_evaluation(smoke):
    tmp, _ = smoke
    report = json.loads((published_dir(tmp) / "report.json").read_text())
    for key in ("settings", "data", "training", "timings_s", "disk", "evaluation", "plan", "environment"):
        assert key in report, key
    assert report["training"]["global_step"] == 12
    assert report["disk"]["peak_gb"] > 0
    assert report["merge"]["max_logit_diff"] < 1e-4 and report["merge"]["logit_check_dtype"] == "fp32"
    card = (published_dir(tmp) / "README.md").read_text()
    assert "base_model" in card or "Recipe" in card
    assert "## Evaluation" in card and "loss_curve.png" in card
    assert report["schema_version"] == 2 and report["training"]["eval_loss_base"] > 0


def test_smoke_report_and_card_carry_every_evaluation_field(smoke):
    """Issue 20's fields, per model and benchmark, the comparisons with their paired test, the budget's
    planned and scored counts, the scored-weights check; and the card's columns."""
    tmp, _ = smoke
    e = json.loads((published_dir(tmp) / "report.json").read_text())["evaluation"]
    assert e["protocol"]["samples_per_problem"] == 2 and e["protocol"]["temperature"] == 0.6
    fields = {"pass_at_1", "ci95", "n_problems", "samples_per_problem", "truncated_fraction", "mean_new_tokens",
              "median_new_tokens", "finished_accuracy", "think_closed_fraction", "code_block_fraction"}  # fmt: skip
    for model in ("base", "finetuned"):
        assert e["models"][model]["planned_problems"] >= e["models"][model]["scored_problems"] > 0
        for bench in ("math500", "scibench", "heldout"):
            assert fields <= set(e["results"][model][bench]), (model, bench)
    for bench in ("math500", "scibench", "heldout"):
        c = e["comparison"][bench]
        assert {"difference", "ci95", "verdict"} <= set(c) and {"method", "statistic", "p_value"} <= set(
            c["paired_test"]
        )
    assert e["scored_model"]["source"] == "merged/" and len(e["prompts"]) == 3
    card = (published_dir(tmp) / "README.md").read_text()
    for needle in ("**Protocol**", "MATH-500 (math-verify)", "Difference [95% CI]", "p-value", "Truncated",
                   "Mean new tokens", "DeepSeek reports 83.9%", "### The three test prompts"):  # fmt: skip
        assert needle in card, needle


def test_no_secret_anywhere(smoke):
    tmp, result = smoke
    assert SECRET not in result.output
    for p in tmp.rglob("*"):
        if p.is_file() and p.stat().st_size < 50_000_000:
            assert SECRET.encode() not in p.read_bytes(), p


def test_merged_safetensors_are_bf16(smoke):
    tmp, _ = smoke
    (shard,) = (published_dir(tmp) / "merged").glob("*.safetensors")
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes == {"BF16"}


def test_data_limit_below_zero_is_refused(tmp_path):
    result = run_job(job_env(tmp_path), tmp_path, "data", "--limit", "-5")
    assert (
        result.rc == 2 and "--limit" in result.output and "'-5' is not a whole number >= 0" in result.output
    )


def test_data_command_prints_rendered_examples_and_stats(smoke):
    tmp, _ = smoke
    env = job_env(tmp)
    result = run_job(env, tmp, "data", "--json", "--limit", "3")
    assert result.rc == 0, result.output[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert set(row) >= {"source", "text", "loss_text"}
        assert row["text"].endswith(row["loss_text"])
        assert "<｜Assistant｜><think>\n" in row["text"] and row["loss_text"].endswith(
            "<｜end▁of▁sentence｜>"
        )
    stats = run_job(env, tmp, "data", "--stats")
    assert stats.rc == 0
    summary = json.loads(stats.stdout)
    assert summary["sources"]


def test_stage_commands_work_on_the_run_dir(smoke):
    tmp, _ = smoke
    run_dir = run_dir_of(tmp)
    env = job_env(tmp, R1FT_OUTPUT=str(tmp / "republished"))
    assert run_job(env, tmp, "publish", "--run-dir", str(run_dir)).rc == 0
    assert (tmp / "republished" / "manifest.json").is_file()
    collected = run_job(env, tmp, "collect", str(tmp / "republished"), str(tmp / "collected"))
    assert collected.rc == 0, collected.output[-2000:]
    assert (tmp / "collected" / "adapter" / "adapter_model.safetensors").is_file()


def test_merge_eval_and_gguf_stage_commands_rerun_on_the_run_dir(smoke):
    tmp, _ = smoke
    run_dir = run_dir_of(tmp)
    env = job_env(tmp)
    (run_dir / "merged" / "config.json").unlink()
    merged = run_job(env, tmp, "merge", "--run-dir", str(run_dir))
    assert merged.rc == 0, merged.output[-2000:]
    assert (run_dir / "merged" / "config.json").is_file()
    (run_dir / "eval" / "results.json").unlink()
    evaluated = run_job(env, tmp, "eval", "--run-dir", str(run_dir))
    assert evaluated.rc == 0, evaluated.output[-2000:]
    assert json.loads((run_dir / "eval" / "results.json").read_text())["comparison"]["math500"]
    gguf = run_job(job_env(tmp, R1FT_GGUF="f16"), tmp, "gguf", "--run-dir", str(run_dir))
    assert gguf.rc == 0, gguf.output[-2000:]
    assert (run_dir / "gguf" / "model-f16.gguf").is_file()
    missing = run_job(env, tmp, "eval", "--run-dir", str(tmp / "nowhere"))
    assert missing.rc != 0 and "report.json" in missing.output


def test_every_command_has_help(tmp_path):
    for cmd in ("run", "plan", "data", "merge", "eval", "publish", "collect", "gguf", "bench"):
        result = run_job(job_env(tmp_path), tmp_path, cmd, "--help")
        assert result.rc == 0 and "usage: r1ft" in result.output, cmd


def test_smoke_job_with_gguf_publishes_three_files_each_checked_by_llama_cpp(tmp_path):
    from r1ft.export.gguf_check import MAX_KL
    from r1ft.export.llamacpp import Model

    result = run_job(job_env(tmp_path, R1FT_GGUF="f16,q8_0,q4_k_m"), tmp_path)
    assert result.rc == 0, result.output[-3000:]
    pub = published_dir(tmp_path)
    names = ["model-f16.gguf", "model-q8_0.gguf", "model-q4_k_m.gguf"]
    listed = {f["path"] for f in json.loads((pub / "manifest.json").read_text())["files"]}
    assert {f"gguf/{n}" for n in names} <= listed
    report = json.loads((pub / "report.json").read_text())
    assert [(g["type"], g["verified"]) for g in report["gguf"]] == [
        (t, True) for t in ("f16", "q8_0", "q4_k_m")
    ]
    for g in report["gguf"]:
        assert g["message"].startswith("llama.cpp: prompts tokenized and rendered as in training"), g
        assert 0 <= g["kl_divergence"] <= MAX_KL[g["type"]]
    card = (pub / "README.md").read_text()
    assert "llama-cli -m gguf/model-q4_k_m.gguf --jinja" in card and "verified by llama.cpp" in card
    for name in names:  # what was published is what was checked: llama.cpp loads each
        with Model(pub / "gguf" / name, 256) as llama:
            assert llama.n_vocab == json.loads((pub / "merged" / "config.json").read_text())["vocab_size"]


def test_two_processes_train_like_one_and_publish_once(tmp_path):
    """R1FT_NUM_PROCESSES=2 on CPU (gloo): one set of outputs, published once, the same losses as one
    process. LoRA dropout is off (each process has its own RNG stream), and the steps stay inside the
    first epoch: at an epoch's end a short global batch is evened out across processes with repeats."""
    losses = {}
    for n in (1, 2):
        tmp = tmp_path / f"p{n}"
        tmp.mkdir()
        env = job_env(tmp, R1FT_NUM_PROCESSES=str(n), R1FT_LORA_DROPOUT="0", R1FT_GLOBAL_BATCH="2",
                      R1FT_MAX_STEPS="6", R1FT_SAVE_STEPS="3", R1FT_EVAL_STEPS="3")  # fmt: skip
        result = run_job(env, tmp, timeout=300)
        assert result.rc == 0, result.output[-3000:]
        report = json.loads((published_dir(tmp) / "report.json").read_text())
        assert report["recipe"]["layout"]["processes"] == n
        assert report["recipe"]["layout"]["per_device"] * n == 2
        losses[n] = {int(k): v for k, v in report["training"]["loss_by_step"].items()}
        assert result.output.count("published 1") + result.output.count("verified against manifest.json") >= 1
        assert result.output.count("== publish") == 1
        assert len(list((published_dir(tmp) / "logs").glob("events.out.tfevents.*"))) == 1
        assert len(list((tmp / "work" / "runs").iterdir())) == 1
    assert losses[1].keys() == losses[2].keys()
    for step, loss in losses[1].items():
        assert losses[2][step] == pytest.approx(loss, rel=1e-3), step


def test_compiled_job_trains_like_the_eager_one(tmp_path):
    """R1FT_TORCH_COMPILE=true (the default on large GPUs) through the whole job, evaluation during
    training included: the same losses as without it (CPU Inductor; LoRA dropout off, whose random
    streams differ between eager and compiled code)."""
    losses = {}
    for compiled in ("false", "true"):
        tmp = tmp_path / compiled
        tmp.mkdir()
        env = job_env(tmp, R1FT_TORCH_COMPILE=compiled, R1FT_LORA_DROPOUT="0", R1FT_MAX_STEPS="6",
                      R1FT_EVAL_STEPS="3")  # fmt: skip
        result = run_job(env, tmp, timeout=400)
        assert result.rc == 0, result.output[-3000:]
        report = json.loads((published_dir(tmp) / "report.json").read_text())
        assert report["recipe"]["compiled"] is (compiled == "true")
        losses[compiled] = report["training"]["loss_by_step"]
    assert losses["true"].keys() == losses["false"].keys()
    for step, loss in losses["false"].items():
        assert losses["true"][step] == pytest.approx(loss, rel=1e-4), step


def test_bad_data_exits_2_before_training_with_a_message_and_no_traceback(tmp_path):
    bad = tmp_path / "scibench.json"
    bad.write_text('[{"problem_text": 3}]')
    result = run_job(job_env(tmp_path, R1FT_SCIBENCH_SOURCE=str(bad)), tmp_path)
    assert result.rc == 2, result.output[-3000:]
    assert "Traceback" not in result.output and str(bad) in result.output
    assert "== train" not in result.output


def test_an_unforeseen_failure_stops_the_instance_and_keeps_the_report(tmp_path):
    """A crash nobody planned for (here: the merge) exits non-zero, writes the report, and on Vast asks
    for a stop, never a destroy (a local stand-in for Vast's API records the request)."""
    import http.server
    import textwrap
    import threading

    requests = []

    class Vast(http.server.BaseHTTPRequestHandler):
        def _record(self):
            length = int(self.headers.get("Content-Length") or 0)
            requests.append((self.command, self.path, self.rfile.read(length).decode()))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"success": true}')

        do_PUT = do_DELETE = do_GET = do_POST = _record

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Vast)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import r1ft.export.merge
        def broken(*args, **kwargs):
            raise RuntimeError("disk controller on fire")
        r1ft.export.merge.merge_adapter = broken
    """)
    )
    env = job_env(tmp_path, PYTHONPATH=str(hook), CONTAINER_ID="4242", CONTAINER_API_KEY="vastkey",
                  VAST_URL=f"http://127.0.0.1:{server.server_address[1]}")  # fmt: skip
    try:
        result = run_job(env, tmp_path)
    finally:
        server.shutdown()
    assert result.rc == 1, result.output[-3000:]
    assert (
        "disk controller on fire" in result.output and "resumes from the newest checkpoint" in result.output
    )
    report = json.loads((run_dir_of(tmp_path) / "report.json").read_text())
    assert "disk controller on fire" in report["error"]
    assert [(m, p) for m, p, _ in requests] == [("PUT", "/api/v0/instances/4242/")]
    assert "stopped" in requests[0][2]


def test_sigterm_after_training_skips_evaluation_and_publishes_at_once(tmp_path):
    from jobrun import run_job_until

    result = run_job_until(job_env(tmp_path), tmp_path, "== merge")
    assert result.rc == 143, result.output[-3000:]
    assert "== evaluate" not in result.output
    pub = published_dir(tmp_path)
    assert (pub / "adapter" / "adapter_model.safetensors").is_file() and (pub / "manifest.json").is_file()
    assert list((pub / "merged").glob("*.safetensors"))


def test_smoke_job_publishes_to_s3_and_collect_gets_it_back_byte_identical(tmp_path):
    from s3server import job_bucket, s3_server

    with s3_server() as (endpoint, _):
        s3 = job_bucket(endpoint)
        result = run_job(job_env(tmp_path, **s3), tmp_path)
        assert result.rc == 0, result.output[-3000:]
        assert "verified against manifest.json" in result.output
        got = run_job(
            job_env(tmp_path, **s3), tmp_path, "collect", "s3://results/runs/smoke", str(tmp_path / "got")
        )
        assert got.rc == 0, got.output[-3000:]
    run_dir = run_dir_of(tmp_path)
    manifest = json.loads((tmp_path / "got" / "manifest.json").read_text())
    assert len(manifest["files"]) > 10
    for f in manifest["files"]:
        if f["path"] == "report.json":  # the local copy goes on to record the publish itself
            continue
        assert (tmp_path / "got" / f["path"]).read_bytes() == (run_dir / f["path"]).read_bytes(), f["path"]
