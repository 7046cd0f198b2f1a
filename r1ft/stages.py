"""The job's steps: small glue functions between the settings, the run directory and each module."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from r1ft.pipeline import (
    EXIT_DISK,
    EXIT_OK,
    EXIT_PUBLISH,
    EXIT_SETTINGS,
    Job,
    JobError,
    dump_json,
    summary_lines,
)

log = logging.getLogger("r1ft")


# --- plan ---------------------------------------------------------------------------------------------
def plan_job(job: Job):
    """Hardware, then the disk/VRAM/time plan; stops with exit 4 before any download when it cannot fit."""
    from r1ft import distributed
    from r1ft import plan as planning
    from r1ft.train import detect_hardware

    hw = detect_hardware()
    p = planning.plan_for(job.settings, hw.gpu_name, hw.gpu_mem_gb, distributed.num_processes())
    log.info(planning.render_plan(p, hw.gpu_name))
    job.report["plan"] = json_safe(p)
    if not p.fits:
        raise JobError("the disk plan cannot fit:\n  " + "\n  ".join(p.problems), EXIT_DISK)
    return hw, p


def json_safe(obj):
    from dataclasses import asdict, is_dataclass

    return asdict(obj) if is_dataclass(obj) else obj


@contextlib.contextmanager
def disk_watchdog(job: Job, plan):
    """The disk watchdog thread around the heavy steps; its peak goes into the report."""
    from r1ft.watchdog import GB, DiskWatchdog

    s = job.settings
    wd = DiskWatchdog(
        Path(s.work_dir),
        job.run_dir / "checkpoints",
        s.disk_budget_gb,
        s.disk_free_floor_gb,
        keep=plan.keep_checkpoints,
    )
    if not job.main:  # rank 0 measures and prunes for the whole machine; its stop requests reach every rank
        yield wd
        return
    wd.start()
    try:
        yield wd
    finally:
        wd.stop()
        job.report["disk"] = {
            "peak_gb": round(wd.state.peak_bytes / GB, 3),
            "budget_gb": s.disk_budget_gb,
            "planned_peak_gb": plan.disk_peak_gb,
            "pruned": wd.state.pruned,
            "emergency_prunes": wd.state.emergency_prunes,
        }
        log.info(
            "disk: peak %.3f GB of %.2f GB budget (planned %.2f GB)",
            wd.state.peak_bytes / GB,
            s.disk_budget_gb,
            plan.disk_peak_gb,
        )


# --- model and data -----------------------------------------------------------------------------------
def fetch_base_model(job: Job) -> Path:
    """The base model on local disk: the embedded tiny one, a local path, or the pinned Hub revision."""
    from r1ft.hub_model import download_base_model
    from r1ft.tiny import build_tiny_base

    s = job.settings
    with job.step("base model"):
        if s.is_tiny:
            return build_tiny_base(Path(s.work_dir) / "models" / "tiny", seed=s.seed)
        if Path(s.base_model).exists():
            return Path(s.base_model)
        return download_base_model(s)


def load_tokenizer(job: Job):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(job.base))


def prepare_data(job: Job, tokenizer):
    from r1ft import data

    with job.step("data"):
        try:
            prepared = data.prepare_data(job.settings, tokenizer, job.run_dir)
        except data.DataError as e:  # before any GPU work: the message says what to fix
            raise JobError(str(e), EXIT_SETTINGS) from e
    job.report["data"] = prepared.stats
    log.info("data: %d train / %d eval examples", len(prepared.train), len(prepared.eval))
    return prepared


# --- training -----------------------------------------------------------------------------------------
def train(job: Job, tokenizer, prepared, hw, plan, watchdog, stop):
    """LoRA training under the watchdog, the signal handler and the checkpoint pusher; resumes if it can."""
    from r1ft import distributed, resume
    from r1ft.train import attn_implementation, batch_layout, run_training, use_compile, use_liger
    from r1ft.watchdog import trainer_callback

    s = job.settings
    choices = {
        "quant": plan.quant,
        "layout": batch_layout(s, distributed.num_processes()),
        "checkpointing": plan.checkpointing,
        "attn": attn_implementation(s, hw),
        "liger": use_liger(s, hw),
        "compiled": use_compile(s, hw),
    }
    job.report["training_choices"] = {**choices, "layout": vars(choices["layout"]), "device": hw.device}
    with distributed.main_process_first():  # rank 0 may fetch last-checkpoint/ for everyone
        start = resume.find_resume_point(s, job.run_dir, job.run_id)
    if job.main:
        job.report["resume"] = start.as_dict()
        _record_resume(job, start)
    job.pusher = resume.CheckpointPusher(s, job.run_dir, s.push_checkpoint_every)
    callbacks = [
        trainer_callback(watchdog, stop, {"run_id": job.run_id}),
        resume.pusher_callback(job.pusher),
        distributed.stop_agreement_callback(stop),  # last: every rank stops at the same step
    ]
    with job.step("train"):
        result = run_training(
            s,
            job.run_dir,
            job.base,
            tokenizer,
            prepared.train,
            prepared.eval,
            hw,
            choices,
            callbacks,
            resume_from=start.checkpoint,
            stop_flag=stop,
        )
    result.interrupted = stop.reason
    job.report["training"] = {
        "global_step": result.global_step,
        "loss_by_step": {h["step"]: h["loss"] for h in result.log_history if "loss" in h and "step" in h},
        "metrics": result.metrics,
        "interrupted": stop.reason,
        "resumed_from": result.resumed_from,
    }
    return result


def finish_interrupted(job: Job, stop, watchdog) -> int:
    """After a signal or a disk stop: the checkpoint is saved; push it, publish what exists, exit."""
    from r1ft import resume

    log.warning("training stopped early (%s); the newest checkpoint is saved", stop.reason)
    pushed = resume.push_latest(job.pusher)
    step = job.report.get("training", {}).get("global_step", 0)
    entry = {"reason": stop.reason, "step": step, "checkpoint_pushed": pushed, "at": _now()}
    job.report.setdefault("history", {}).setdefault("interruptions", []).append(entry)
    save_report(job)
    _publish_partial(job)
    if stop.reason == "disk":
        log.error("disk budget exceeded: %s", watchdog.state.reason)
        return EXIT_DISK
    return stop.exit_code


def _publish_partial(job: Job) -> None:
    """Publish what exists (logs, report) beside the pushed checkpoint; never raises."""
    from r1ft.publish import publish_run

    try:
        publish_run(job.settings, job.run_dir, job.run_id, dest=job.destination())
    except Exception as e:
        log.warning("could not publish the partial run (%s); it stays in %s", e, job.run_dir)


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _record_resume(job: Job, start) -> None:
    """Carry the run's history (interruptions, resumes, steps redone) across processes."""
    import json

    previous = job.run_dir / "report.json"
    history = {}
    if previous.is_file():
        try:
            history = json.loads(previous.read_text()).get("history", {})
        except ValueError:
            history = {}
    if start.checkpoint is not None:
        from r1ft.evaluate import read_scalars

        series = read_scalars(job.run_dir / "logs") if (job.run_dir / "logs").is_dir() else {}
        last = max((step for points in series.values() for step, _ in points), default=0)
        redone = max(0, last - start.step)
        history.setdefault("resumes", []).append(
            {"source": start.source, "step": start.step, "steps_redone": redone, "at": _now()}
        )
        log.info(
            "resumed from %s checkpoint at step %d (%d step(s) to redo)", start.source, start.step, redone
        )
    job.report["history"] = history


# --- after training -----------------------------------------------------------------------------------
def merge(job: Job, tokenizer, hw, plan) -> Path:
    """Merge into a bf16 base; check merged logits against the adapter model's."""
    import torch

    from r1ft.merge import load_base_for_merge, merge_adapter, save_sharded

    s = job.settings
    out = job.run_dir / "merged"
    with job.step("merge"):
        dtype = torch.bfloat16
        base = load_base_for_merge(job.base, s.base_revision, plan.quant, hw.device, dtype)
        merged = merge_adapter(base, job.run_dir / "adapter")
        on_shard = None
        if getattr(plan, "stream_merged", False):
            dest = job.destination()
            log.info("streaming merged shards to %s (disk plan)", dest.location)

            def on_shard(path: Path) -> None:
                dest.stage_file(path, f"merged/{path.name}", delete_after=True)

        info = save_sharded(merged, tokenizer, out, max_shard_size="2GB", on_shard=on_shard)
        del merged, base
    job.report["merge"] = info
    if s.is_tiny:  # the full check runs in the tests and on the GPU run; cheap on the tiny model
        job.report["merge"]["max_logit_diff_fp32"] = _merge_check(job, tokenizer)
    return out


def _merge_check(job: Job, tokenizer) -> float:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(job.base), dtype=torch.float32)
    adapter_model = PeftModel.from_pretrained(base, str(job.run_dir / "adapter")).eval()
    from r1ft.merge import load_base_for_merge, max_logit_diff, merge_adapter

    merged = merge_adapter(
        load_base_for_merge(job.base, None, "none", "cpu", torch.float32), job.run_dir / "adapter"
    )
    return max_logit_diff(adapter_model, merged.eval(), tokenizer)


def evaluate(job: Job, prepared, merged: Path) -> None:
    from r1ft.evaluate import evaluate_run

    if not list(merged.glob("*.safetensors")):  # streamed away: score base + adapter, merged in memory
        merged = job.run_dir / "adapter"

    with job.step("evaluate"):
        job.report["evaluation"] = evaluate_run(
            job.settings, job.run_dir, Path(job.base), merged, prepared.eval_examples, prepared.scibench_test
        )


def export_gguf(job: Job, merged: Path, plan, stream: bool = True) -> None:
    """GGUF files from the merged model, each verified; in the job each is staged to the destination and
    deleted before the next is written, so at most one is ever on disk."""
    if not job.settings.gguf_types:
        return
    from r1ft.export.gguf import export_gguf as export

    on_file_ready = None
    if stream:
        dest = job.destination()

        def on_file_ready(path: Path) -> None:
            dest.stage_file(path, f"gguf/{path.name}", delete_after=True)

    with job.step("gguf"):
        results = export(merged, job.run_dir / "gguf", job.settings.gguf_types, on_file_ready=on_file_ready)
    job.report["gguf"] = [{**json_safe(r), "path": str(r.path)} for r in results]
    for r in results:
        if not r.verified:
            log.warning("GGUF %s not published: %s", r.type, r.message)


def write_report(job: Job) -> None:
    from r1ft.report import write_model_card

    save_report(job)
    write_model_card(job.run_dir, job.report)


def save_report(job: Job) -> None:
    job.report["timings_s"] = job.timings
    dump_json(job.run_dir / "report.json", job.report)


# --- publish and stop ---------------------------------------------------------------------------------
def publish(job: Job):
    from r1ft.publish import PublishError, publish_run

    if job.pusher is not None:
        job.pusher.wait()  # a periodic checkpoint push still in flight finishes first
    with job.step("publish"):
        try:
            result = publish_run(job.settings, job.run_dir, job.run_id, dest=job.destination())
        except PublishError as e:
            job.report["publish"] = {"verified": False, "error": str(e)}
            save_report(job)
            raise JobError(f"publish failed: {e}", EXIT_PUBLISH) from e
    job.report["publish"] = json_safe(result)
    save_report(job)
    for line in summary_lines(job, result.location):
        log.info(line)
    return result


def stop_instance(job: Job, published=None, published_ok: bool | None = None) -> int:
    from r1ft.instance import stop_instance as stop

    s = job.settings
    ok = bool(published is not None and published.verified) if published_ok is None else published_ok
    exit_code = EXIT_OK if ok else EXIT_PUBLISH
    if ok and s.container_id and not s.output.startswith(("hf://", "s3://")):
        log.warning(
            "R1FT_OUTPUT is a directory inside this instance: stopping it (disk kept), not destroying it"
        )
        ok = False
    log.info(stop(s, ok))
    return exit_code
