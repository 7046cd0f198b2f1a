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
from r1ft.evaluation.run import evaluate_run
from r1ft.export import merge
from r1ft.export.gguf import export_gguf
from r1ft.files import GB, format_bytes, free_bytes
from r1ft.job import ExitCode, Job, JobError
from r1ft.machine import instance
from r1ft.machine.gpu import Hardware, detect_hardware
from r1ft.machine.signals import StopFlag
from r1ft.model.base import fetch_base_model
from r1ft.plan import Plan, plan_for, render_plan
from r1ft.publish.connect import destination_for
from r1ft.publish.destination import Destination, PublishError, PublishResult
from r1ft.publish.location import output_location
from r1ft.publish.run import publish_run
from r1ft.recipe import Recipe
from r1ft.records import DataError
from r1ft.report.card import write_model_card
from r1ft.report.schema import (
    DiskRecord,
    GgufRecord,
    Interruption,
    MergeRecord,
    PublishRecord,
    ResumeRecord,
    Resumption,
    RunReport,
    TrainingRecord,
)
from r1ft.training import distributed
from r1ft.training.train import run_training

log = logging.getLogger(__name__)


# --- plan ---------------------------------------------------------------------------------------------
def plan_run(job: Job) -> tuple[Hardware, Plan]:
    """Hardware, then the recipe and the disk/VRAM/time plan; before any download, exit 2 when this hardware
    cannot run the settings (batch arithmetic, memory) and exit 4 when the disk plan cannot fit."""
    hw = detect_hardware()
    plan = plan_for(job.settings, hw, distributed.num_processes())
    log.info(render_plan(plan, hw.gpu_name))
    job.report.plan, job.report.recipe = plan, plan.recipe
    if plan.settings_problems:
        raise JobError("these settings cannot run here:\n  " + "\n  ".join(plan.settings_problems),
                       ExitCode.SETTINGS)  # fmt: skip
    if not plan.fits:
        raise JobError("the disk plan cannot fit:\n  " + "\n  ".join(plan.problems), ExitCode.DISK)
    return hw, plan


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
            prepared = prepare.prepare_data(job.settings, tokenizer, job.run_dir, stop=job.stop)
        except DataError as e:  # before any GPU work: the message says what to fix
            raise JobError(str(e), ExitCode.SETTINGS) from e
    job.report.data = prepared.stats
    log.info("data: %d train / %d eval examples", len(prepared.train), len(prepared.eval))
    if len(prepared.train) < job.settings.global_batch:  # every step would be one smaller batch than asked
        raise JobError(
            f"R1FT_GLOBAL_BATCH={job.settings.global_batch} is more than the {len(prepared.train)} training rows: "
            f"set R1FT_GLOBAL_BATCH to at most {len(prepared.train)} (or add data)",
            ExitCode.SETTINGS,
        )
    return prepared


# --- training -----------------------------------------------------------------------------------------
def check_resume_identity(job: Job, recipe: Recipe, ckpt: Path | None = None) -> None:
    """Refuse (exit 2, the run left as it is) to resume a checkpoint trained with other settings; by default
    the run directory's newest complete checkpoint, checked before any download."""
    ckpt = ckpt or markers.newest_complete(job.run_dir / "checkpoints", deep=False)
    if ckpt is None:
        return
    recorded = resume.marker_identity(ckpt)
    if recorded is None:
        log.warning("%s records no training settings (an older r1ft wrote it): resuming unchecked", ckpt.name)
        return
    differences = resume.identity_differences(recorded, identity(job, recipe))
    if differences:
        raise JobError(
            f"refusing to resume run {job.run_id} from {ckpt.name}: it was trained with other settings:\n  - "
            + "\n  - ".join(differences)
            + f"\nUse a new R1FT_RUN_ID to start a new run with these settings, or restore the settings above to "
            f"resume this one (its checkpoints are in {ckpt.parent})",
            ExitCode.SETTINGS,
            leave_run=True,
        )


def identity(job: Job, recipe: Recipe) -> dict:
    """This job's training identity, written beside each checkpoint (`r1ft.checkpoints.resume`)."""
    return resume.training_identity(job.settings, recipe, prepare.data_fingerprint(job.settings))


def train_adapter(
    job: Job, tokenizer, prepared: prepare.PreparedData, hw: Hardware, plan: Plan, watchdog, stop: StopFlag
):
    """LoRA training under the watchdog, the signal handler and the checkpoint pusher; resumes if it can."""

    s = job.settings
    with distributed.main_process_first():  # rank 0 may fetch last-checkpoint/ for everyone
        start = resume.find_resume_point(s, job.run_dir, job.run_id)
    if start.checkpoint is not None:  # a checkpoint fetched from the destination is checked here
        check_resume_identity(job, plan.recipe, start.checkpoint)
    if job.main:
        job.report.resume = ResumeRecord(
            checkpoint=str(start.checkpoint or ""), source=start.source, step=start.step
        )
        _record_resume(job, start)
    job.pusher = pusher.CheckpointPusher(s, job.run_dir, s.push_checkpoint_every)
    callbacks = [
        markers.completion_callback({"run_id": job.run_id, "identity": identity(job, plan.recipe)}),
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
        max_steps=result.max_steps,
        epoch=result.epoch,
        epochs=result.epochs,
        loss_by_step={h["step"]: h["loss"] for h in result.log_history if "loss" in h and "step" in h},
        metrics=result.metrics,
        interrupted=stop.reason,
        resumed_from=result.resumed_from,
    )
    return result


def finish_interrupted(job: Job, stop: StopFlag, watchdog: DiskWatchdog) -> ExitCode:
    """After a signal or a disk stop: the checkpoint is saved; push it, publish what exists, exit."""
    log.warning("training stopped early (%s); the newest checkpoint is saved", stop.reason)
    pushed = pusher.push_latest(job.pusher) if job.pusher is not None else False
    step = job.report.training.global_step if job.report.training else 0
    job.report.history.interruptions.append(
        Interruption(reason=stop.reason, step=step, stage=stop.stage or "train", checkpoint_pushed=pushed,
                     at=_now())
    )  # fmt: skip
    save_report(job, keep_on_failure=True)
    _publish_partial(job)
    if stop.reason == "disk":
        log.error("disk budget exceeded: %s", watchdog.state.reason)
        return ExitCode.DISK
    return stop.exit_code


def record_stop(job: Job, stop: StopFlag) -> None:
    """A stop honoured outside training goes into the history with the stage it came in."""
    if not stop.reason:
        return
    step = job.report.training.global_step if job.report.training else 0
    pushed = job.pusher is not None and step > 0 and job.pusher.pushed_step == step
    job.report.history.interruptions.append(
        Interruption(reason=stop.reason, step=step, stage=stop.stage, checkpoint_pushed=pushed, at=_now())
    )


def finish_stopped(job: Job, stop: StopFlag) -> ExitCode:
    """After a stop honoured before training (data preparation) or during the publish: the history says
    where; what exists stays in the run directory. A publish stopped between files wrote no manifest, so the
    destination reads as incomplete until `r1ft publish --run-dir` completes it."""
    if job.main:
        record_stop(job, stop)
        if stop.stage == "publish":
            log.warning("publish stopped by %s before it was complete; finish it with: r1ft publish --run-dir %s",
                        stop.reason, job.run_dir)  # fmt: skip
        else:
            log.warning("stopped by %s during %s, before training: nothing to save", stop.reason,
                        stop.stage or "start-up")  # fmt: skip
        save_report(job, keep_on_failure=True)
    return stop.exit_code


def finish_disk_full(job: Job, error: BaseException) -> ExitCode:
    """The disk filled up (ENOSPC) somewhere in the job, a checkpoint save included: torn checkpoints are
    removed (they never count as complete, and their space lets the report be written); during training,
    the newest complete checkpoint is pushed and what exists published as after a disk stop; exit 4."""
    stage = job.stop.running if job.stop is not None else ""
    reserve_path(job).unlink(missing_ok=True)  # the space kept for this moment
    removed = markers.remove_incomplete(job.run_dir / "checkpoints")
    free = free_bytes(Path(job.settings.work_dir))
    message = (
        f"the disk is full during {stage or 'start-up'}: {type(error).__name__}: {error}. "
        f"{format_bytes(free)} is left on the work dir's filesystem (with the job's reserve given back"
        + (f" and the torn {', '.join(p.name for p in removed)} removed)" if removed else ")")
        + ": free space or rent a larger disk (R1FT_DISK_FREE_FLOOR_GB keeps room for the job), then rerun to "
        "resume from the newest complete checkpoint"
    )
    log.error("%s", message)
    job.report.error = message
    if stage == "train":
        newest = markers.newest_complete(job.run_dir / "checkpoints", deep=False)
        step = (markers.step_of(newest) or 0) if newest is not None else 0
        job.report.training = job.report.training or TrainingRecord(global_step=step, interrupted="disk")
        pushed = pusher.push_latest(job.pusher) if job.pusher is not None and newest is not None else False
        job.report.history.interruptions.append(
            Interruption(reason="disk", step=step, stage=stage, checkpoint_pushed=pushed, at=_now())
        )
    save_report(job, keep_on_failure=True)
    if stage == "train":
        _publish_partial(job)
    end_instance(job, published_ok=False)  # stopped, never destroyed: its disk keeps the outputs
    return ExitCode.DISK


def reserve_path(job: Job) -> Path:
    """The space the job keeps allocated for its report on a full disk (`r1ft.files.reserve`)."""
    return job.run_dir / ".r1ft-reserve"


def _publish_partial(job: Job) -> None:
    """Publish what exists (logs, report) beside the pushed checkpoint; never raises."""
    try:
        publish_run(job.settings, job.run_dir, job.run_id, dest=destination(job))
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
    job.report.merge = MergeRecord(shards=info["shards"], total_bytes=info["total_bytes"], streamed=stream)
    if job.settings.is_tiny:  # the full check runs in the tests and on the GPU run; cheap on the tiny model
        job.report.merge.max_logit_diff_fp32 = merge.adapter_logit_check(
            job.base, job.run_dir / "adapter", tokenizer
        )
    return out


def evaluate_models(job: Job, prepared: prepare.PreparedData, merged: Path) -> None:

    if not list(merged.glob("*.safetensors")):  # streamed away: score base + adapter, merged in memory
        merged = job.run_dir / "adapter"
    with job.step("evaluate"):
        job.report.evaluation = evaluate_run(
            job.settings, job.run_dir, Path(job.base), merged, prepared.eval_examples, prepared.scibench_test
        )


def export_gguf_files(job: Job, merged: Path, stream: bool = True) -> None:
    """GGUF files from the merged model, each verified; with `stream` each is staged to the destination and
    deleted before the next is written, so at most one is ever on disk."""
    if not job.settings.gguf_types:
        return

    dest = destination(job) if stream else None

    def on_file_ready(path: Path) -> None:
        if job.stop is not None:  # between files: the finished one stays here and is published with the rest
            job.stop.check()
        if dest is not None:
            dest.stage_file(path, f"gguf/{path.name}", delete_after=True)

    with job.step("gguf"):
        results = export_gguf(
            merged, job.run_dir / "gguf", job.settings.gguf_types, on_file_ready=on_file_ready
        )
    job.report.gguf = [
        GgufRecord(type=r.type, path=str(r.path), size_bytes=r.size_bytes, seconds=r.seconds,
                   verified=r.verified, max_logit_err=r.max_logit_err, message=r.message)
        for r in results
    ]  # fmt: skip
    for r in results:
        if not r.verified:
            log.warning("GGUF %s not published: %s", r.type, r.message)


def write_report(job: Job) -> None:
    """report.json and the model card (README.md) in the run directory."""
    save_report(job)
    write_model_card(job.run_dir, job.report)


def save_report(job: Job, keep_on_failure: bool = False) -> None:
    """report.json, written atomically. With `keep_on_failure` (after a failure or a stop, when the disk may
    be full) a write that fails is logged and the previous report.json kept as it was."""
    job.report.timings_s = job.timings
    try:
        job.report.save(job.run_dir)
    except OSError as e:
        if not keep_on_failure:
            raise
        log.error(
            "could not write %s (%s); the previous one, if any, is kept", job.run_dir / "report.json", e
        )


# --- publish and stop ---------------------------------------------------------------------------------
def destination(job: Job) -> Destination:
    """The run's destination, opened once (merge shards, GGUF files and the final publish share it)."""
    if job.destination is None:
        job.destination = destination_for(job.settings, job.run_id)
    return job.destination


def publish_outputs(job: Job) -> PublishResult:
    if job.pusher is not None:
        job.pusher.wait()  # a periodic checkpoint push still in flight finishes first
    with job.step("publish"):
        try:
            result = publish_run(job.settings, job.run_dir, job.run_id, dest=destination(job),
                                 stop_check=_publish_stop_check(job))  # fmt: skip
        except PublishError as e:
            job.report.publish = PublishRecord(verified=False, error=str(e))
            save_report(job)
            raise JobError(f"publish failed: {e}", ExitCode.PUBLISH) from e
    job.report.publish = PublishRecord(
        location=result.location, verified=result.verified, files=result.files, bytes=result.bytes,
        message=result.message,
    )  # fmt: skip
    save_report(job)
    for line in summary_lines(job, result.location):
        log.info(line)
    return result


def _publish_stop_check(job: Job):
    """What the publish calls between files: it honours only a stop that came while it runs (the publish
    after a stop is how what exists gets delivered)."""
    stop = job.stop
    if stop is None:
        return None

    def check() -> None:
        if stop.came_during("publish"):
            stop.check()

    return check


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
