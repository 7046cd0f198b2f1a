"""The job's stages: small glue functions between the settings, the run directory, the typed run report and
each stage's package. `r1ft.pipeline.run_job` calls them in order; `r1ft.commands` reruns single ones on a
finished run."""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Iterator
from pathlib import Path

from r1ft.checkpoints import markers, pusher, resume
from r1ft.checkpoints.watchdog import DiskWatchdog, trainer_callback
from r1ft.data import prepare
from r1ft.evaluation.losses import read_scalars
from r1ft.evaluation.run import FineTune, evaluate_run
from r1ft.export import merge
from r1ft.export.adapter import name_base_by_id
from r1ft.export.gguf import export_gguf
from r1ft.files import GB
from r1ft.job import ExitCode, Job, JobError
from r1ft.machine import instance
from r1ft.machine.gpu import Hardware, detect_hardware
from r1ft.machine.signals import StopFlag
from r1ft.model.base import fetch_base_model, hub_origin
from r1ft.plan import Plan, plan_for, render_plan
from r1ft.publish import preflight
from r1ft.publish.connect import destination_for
from r1ft.publish.destination import Destination, DestinationDenied, PublishError, PublishResult
from r1ft.publish.location import output_location
from r1ft.publish.manifest import CHECKPOINT_DIR
from r1ft.publish.run import publish_run
from r1ft.records import DataError
from r1ft.report.card import write_model_card
from r1ft.report.schema import (
    DiskRecord,
    FailedPublish,
    GgufRecord,
    Interruption,
    LastCheckpointRecord,
    MergeRecord,
    PublishRecord,
    ResumeRecord,
    Resumption,
    RunReport,
    TrainingRecord,
)
from r1ft.tasks import heldout, math500, scibench
from r1ft.tasks.problem import Benchmark
from r1ft.training import distributed
from r1ft.training.train import run_training

log = logging.getLogger(__name__)
PUBLISH_FAILED = "publish failed: "  # how the report's error starts when the publish was what failed


# --- plan ---------------------------------------------------------------------------------------------
def plan_run(job: Job) -> tuple[Hardware, Plan]:
    """Hardware, then the recipe and the disk/VRAM/time plan; exit 4 before any download when it cannot fit."""
    hw = detect_hardware()
    plan = plan_for(job.settings, hw, distributed.num_processes())
    log.info(render_plan(plan, hw.gpu_name))
    job.report.plan, job.report.recipe = plan, plan.recipe
    if not plan.fits:
        raise JobError("the disk plan cannot fit:\n  " + "\n  ".join(plan.problems), ExitCode.DISK)
    return hw, plan


def check_destination(job: Job) -> None:
    """Before the base model download: prove that the destination can be written now, so a run that could
    not be delivered never trains (`r1ft.publish.preflight`). Exit 2 with the fix when it refuses the
    credentials or permissions (or is a file, or inside the run directory), 3 when it does not answer within
    the bound (a few tries, at most a minute)."""
    if not job.main:  # rank 0 publishes, so rank 0 checks
        return
    with job.step("destination"):
        try:
            preflight.check_destination(job.settings, job.run_dir, job.run_id)
        except DestinationDenied as e:
            raise JobError(f"{e}. Nothing was downloaded or trained.", ExitCode.SETTINGS) from e
        except PublishError as e:
            raise JobError(
                f"{e}. Nothing was downloaded or trained: rerun when the destination answers.",
                ExitCode.PUBLISH,
            ) from e


@contextlib.contextmanager
def watch_disk(job: Job, plan: Plan) -> Iterator[DiskWatchdog]:
    """The disk watchdog thread around the heavy stages; its peak goes into the report."""
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
        job.report.disk = DiskRecord(
            peak_gb=round(wd.state.peak_bytes / GB, 3),
            budget_gb=s.disk_budget_gb,
            planned_peak_gb=plan.disk_peak_gb,
            pruned=wd.state.pruned,
            emergency_prunes=wd.state.emergency_prunes,
        )
        log.info(
            "disk: peak %.3f GB of %.2f GB budget (planned %.2f GB)",
            wd.state.peak_bytes / GB,
            s.disk_budget_gb,
            plan.disk_peak_gb,
        )


# --- model and data -----------------------------------------------------------------------------------
def fetch_base(job: Job) -> Path:
    with job.step("base model"):
        job.base = fetch_base_model(job.settings)
    return job.base


def load_tokenizer(base: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base))


def prepare_data(job: Job, tokenizer) -> prepare.PreparedData:
    with job.step("data"):
        try:
            prepared = prepare.prepare_data(job.settings, tokenizer, job.run_dir)
        except DataError as e:  # before any GPU work: the message says what to fix
            raise JobError(str(e), ExitCode.SETTINGS) from e
    job.report.data = prepared.stats
    log.info("data: %d train / %d eval examples", len(prepared.train), len(prepared.eval))
    return prepared


# --- training -----------------------------------------------------------------------------------------
def train_adapter(
    job: Job, tokenizer, prepared: prepare.PreparedData, hw: Hardware, plan: Plan, watchdog, stop: StopFlag
):
    """LoRA training under the watchdog, the signal handler and the checkpoint pusher; resumes if it can."""

    s = job.settings
    with distributed.main_process_first():  # rank 0 may fetch last-checkpoint/ for everyone
        start = resume.find_resume_point(s, job.run_dir, job.run_id)
    if job.main:
        job.report.resume = ResumeRecord(
            checkpoint=str(start.checkpoint or ""), source=start.source, step=start.step
        )
        _record_resume(job, start)
    job.pusher = pusher.CheckpointPusher(s, job.run_dir, s.push_checkpoint_every)
    callbacks = [
        markers.completion_callback({"run_id": job.run_id}),
        trainer_callback(watchdog, stop),
        pusher.pusher_callback(job.pusher),
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
            plan.recipe,
            hw,
            callbacks,
            resume_from=start.checkpoint,
            stop_flag=stop,
        )
    result.interrupted = stop.reason
    job.report.training = TrainingRecord(
        global_step=result.global_step,
        eval_loss_base=result.eval_loss_base if result.eval_loss_base is not None else previous_base(job),
        loss_by_step={h["step"]: h["loss"] for h in result.log_history if "loss" in h and "step" in h},
        metrics=result.metrics,
        interrupted=stop.reason,
        resumed_from=result.resumed_from,
    )
    return result


def previous_base(job: Job) -> float | None:
    """The base model's step-0 eval loss measured by an earlier process of this run (a resumed run)."""
    path = job.run_dir / "report.json"
    try:
        earlier = RunReport.load(path).training if path.is_file() else None
    except ValueError:
        return None
    return earlier.eval_loss_base if earlier else None


def push_final_checkpoint(job: Job) -> bool:
    """After training, before the merge: `last-checkpoint/` ends at the newest checkpoint (a push still in
    flight is waited for, then the newest is pushed unless it is already there), so an instance lost in a
    later stage resumes at the end of training. The step it holds goes into the report."""
    if job.pusher is None:
        return False
    pushed = pusher.push_latest(job.pusher)
    p = job.pusher
    record = LastCheckpointRecord(location=f"{destination(job).location}/{CHECKPOINT_DIR}",
                                  step=max(p.pushed_step, 0), newest_step=p.newest_step(), pushed=pushed,
                                  error=p.last_error)  # fmt: skip
    job.report.last_checkpoint = record
    if pushed:
        log.info("%s holds step %d, the newest checkpoint", record.location, record.step)
    else:
        log.warning("%s holds step %d, not the newest (%d): %s", record.location, record.step,
                    record.newest_step, record.error or "no push")  # fmt: skip
    return pushed


def finish_interrupted(job: Job, stop: StopFlag, watchdog: DiskWatchdog) -> ExitCode:
    """After a signal or a disk stop: the checkpoint is saved; push it, publish what exists, exit."""
    log.warning("training stopped early (%s); the newest checkpoint is saved", stop.reason)
    pushed = push_final_checkpoint(job)
    step = job.report.training.global_step if job.report.training else 0
    job.report.history.interruptions.append(
        Interruption(reason=stop.reason, step=step, checkpoint_pushed=pushed, at=_now())
    )
    save_report(job)
    _publish_partial(job)
    if stop.reason == "disk":
        log.error("disk budget exceeded: %s", watchdog.state.reason)
        return ExitCode.DISK
    return stop.exit_code


def _publish_partial(job: Job) -> None:
    """Publish what exists (logs, report) beside the pushed checkpoint; never raises."""
    try:
        _publish(job)
    except Exception as e:
        log.warning("could not publish the partial run (%s); it stays in %s", e, job.run_dir)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _record_resume(job: Job, start: resume.ResumePoint) -> None:
    """Carry the run's history (interruptions, resumes, steps redone) across processes."""
    previous = job.run_dir / "report.json"
    if previous.is_file():
        try:
            job.report.history = RunReport.load(previous).history
        except ValueError:
            log.warning("the previous report.json in %s is unreadable; its history is lost", job.run_dir)
    if start.checkpoint is not None:
        series = read_scalars(job.run_dir / "logs") if (job.run_dir / "logs").is_dir() else {}
        last = max((step for points in series.values() for step, _ in points), default=0)
        redone = max(0, last - start.step)
        job.report.history.resumes.append(
            Resumption(source=start.source, step=start.step, steps_redone=redone, at=_now())
        )
        log.info(
            "resumed from %s checkpoint at step %d (%d step(s) to redo)", start.source, start.step, redone
        )


# --- after training -----------------------------------------------------------------------------------
def merge_model(job: Job, tokenizer, quant: str, stream: bool) -> Path:
    """Merge the adapter into a bf16 base (`r1ft.export.merge`); with `stream`, each shard is published and
    deleted as soon as it is written (the disk plan). On the tiny model, merged logits are checked against
    the adapter model's."""

    out = job.run_dir / "merged"
    with job.step("merge"):
        on_shard = None
        if stream:
            dest = destination(job)
            log.info("streaming merged shards to %s (disk plan)", dest.location)

            def on_shard(path: Path) -> None:
                dest.stage_file(path, f"merged/{path.name}", delete_after=True)

        info = merge.merge_to_dir(job.base, job.settings.base_revision, job.run_dir / "adapter", quant,
                                  tokenizer, out, on_shard=on_shard)  # fmt: skip
    job.report.merge = MergeRecord(
        shards=info["shards"], total_bytes=info["total_bytes"], sha256=info["sha256"], streamed=stream
    )
    with job.step("merge check"):
        worst = merge.adapter_logit_check(job.base, job.settings.base_revision, job.run_dir / "adapter", quant,
                                          tokenizer)  # fmt: skip
    job.report.merge.max_logit_diff = worst
    job.report.merge.logit_check_dtype = (
        "bf16" if job.report.recipe and job.report.recipe.device == "cuda" else "fp32"
    )
    log.info("merge: merged and adapter logits differ by at most %.3g on the check prompts", worst)
    return out


def load_benchmarks(job: Job, prepared: prepare.PreparedData) -> list[Benchmark]:
    """The evaluation's benchmarks, loaded before any training (a Hub or schema error costs no GPU time)."""
    s = job.settings
    benchmarks = [
        scibench.test_benchmark(prepared.scibench_test),
        heldout.heldout_benchmark(prepared.eval_examples),
    ]
    if s.eval_math500_samples and s.math500_source.strip().lower() != "none":
        token = s.hf_token.get_secret_value() if s.hf_token else None
        try:
            benchmarks.insert(0, math500.load(s.math500_source, s.math500_revision, Path(s.work_dir), token))
        except DataError as e:
            raise JobError(str(e), ExitCode.SETTINGS) from e
    log.info("eval: benchmarks %s", ", ".join(f"{b.name} ({len(b.problems)})" for b in benchmarks))
    return benchmarks


def evaluate_models(job: Job, benchmarks: list[Benchmark], merged: Path, stop: StopFlag) -> None:
    """Base vs fine-tune under the protocol; the fine-tune is the published merged weights (recomputed and
    checked by their sha256 when the disk plan streamed the shards away)."""
    if list(merged.glob("*.safetensors")):
        finetune = FineTune(merged=merged)
    else:
        recipe, record = job.report.recipe, job.report.merge
        finetune = FineTune(base=job.base, adapter=job.run_dir / "adapter", quant=recipe.quant if recipe else "none",
                            revision=job.settings.base_revision, published=record.sha256 if record else {})  # fmt: skip
    base_loss = job.report.training.eval_loss_base if job.report.training else None
    with job.step("evaluate"):
        job.report.evaluation = evaluate_run(job.settings, job.run_dir, job.base, finetune, benchmarks,
                                             stop=lambda: stop.reason, eval_loss_base=base_loss)  # fmt: skip


def export_gguf_files(job: Job, merged: Path, stream: bool = True) -> None:
    """GGUF files from the merged model, each verified; with `stream` each is staged to the destination and
    deleted before the next is written, so at most one is ever on disk."""
    if not job.settings.gguf_types:
        return

    on_file_ready = None
    if stream:
        dest = destination(job)

        def on_file_ready(path: Path) -> None:
            dest.stage_file(path, f"gguf/{path.name}", delete_after=True)

    with job.step("gguf"):
        results = export_gguf(
            merged, job.run_dir / "gguf", job.settings.gguf_types, on_file_ready=on_file_ready
        )
    job.report.gguf = [
        GgufRecord(type=r.type, path=str(r.path), size_bytes=r.size_bytes, seconds=r.seconds,
                   verified=r.verified, kl_divergence=r.kl_divergence, check_seconds=r.check_seconds,
                   message=r.message)
        for r in results
    ]  # fmt: skip
    for r in results:
        if not r.verified:
            log.warning("GGUF %s not published: %s", r.type, r.message)


def write_report(job: Job) -> None:
    """report.json and the model card (README.md) in the run directory."""
    save_report(job)
    write_model_card(job.run_dir, job.report)


def save_report(job: Job) -> None:
    job.report.timings_s = job.timings
    job.report.save(job.run_dir)


# --- publish and stop ---------------------------------------------------------------------------------
def destination(job: Job) -> Destination:
    """The run's destination, opened once (merge shards, GGUF files and the final publish share it)."""
    if job.destination is None:
        job.destination = destination_for(job.settings, job.run_id)
    return job.destination


def publish_outputs(job: Job) -> PublishResult:
    """Publish the run, verified against its manifest; exit 3 (outputs kept, retry command given) if not."""
    if job.pusher is not None:
        job.pusher.wait()  # a periodic checkpoint push still in flight finishes first
    with job.step("publish"):
        try:
            result = _publish(job)
        except PublishError as e:
            raise JobError(f"{PUBLISH_FAILED}{e}", ExitCode.PUBLISH) from e
    for line in summary_lines(job, result.location):
        log.info(line)
    return result


def _publish(job: Job) -> PublishResult:
    """`publish_run`, with the report and card sent carrying this publish's state (`_record_publish`): a
    later successful publish rewrites the state and clears a failed one's error, here and at the destination.
    A failure is recorded in the local report (and its history) and raised."""
    origin = hub_origin(job.settings)
    if origin is not None:
        name_base_by_id(job.run_dir / "adapter", *origin)
    dest = destination(job)
    try:
        return publish_run(job.settings, job.run_dir, job.run_id, dest=dest,
                           record=lambda pending: _record_publish(job, pending))  # fmt: skip
    except PublishError as e:
        job.report.publish = PublishRecord(location=dest.location, verified=False, error=str(e))
        job.report.history.failed_publishes.append(FailedPublish(error=str(e), at=_now()))
        write_report(job)
        raise


def _record_publish(job: Job, pending: PublishResult) -> None:
    """report.json and README.md as they go to the destination: saying what this publish achieves."""
    job.report.publish = PublishRecord(location=pending.location, verified=pending.verified,
                                       files=pending.files, bytes=pending.bytes, message=pending.message)  # fmt: skip
    if job.report.error and job.report.error.startswith(PUBLISH_FAILED):
        job.report.error = None  # the failure stays in the history
    write_report(job)


def end_instance(job: Job, published_ok: bool) -> ExitCode:
    """Destroy, stop or leave the Vast instance (R1FT_STOP_INSTANCE); the exit code for the publish."""
    s = job.settings
    exit_code = ExitCode.OK if published_ok else ExitCode.PUBLISH
    if published_ok and s.container_id and not output_location(s.output, job.run_id).remote:
        log.warning(
            "R1FT_OUTPUT is a directory inside this instance: stopping it (disk kept), not destroying it"
        )
        published_ok = False
    log.info(instance.stop_instance(s, published_ok))
    return exit_code


def summary_lines(job: Job, location: str) -> list[str]:
    lines = [f"run {job.run_id}: outputs in {job.run_dir}"]
    if location:
        lines.append(f"published to {location}")
    for name in ("adapter", "merged", "logs", "eval", "gguf"):
        p = job.run_dir / name
        if p.exists():
            lines.append(f"  {name + '/':<9} {p}")
    lines.append(f"  report   {job.run_dir / 'report.json'}")
    return lines
