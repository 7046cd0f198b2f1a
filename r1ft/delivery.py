"""Delivering the run and ending the job: the destination proved writable before anything is spent, the
final `last-checkpoint/` push, the publish whose report and card tell its own state, the ends after a stop,
a full disk or a failure, and the Vast instance stopped or destroyed. `r1ft.pipeline.run_job` calls these
around the stages of `r1ft.stages`."""

from __future__ import annotations

import logging
from pathlib import Path

from r1ft import stages
from r1ft.checkpoints import markers, pusher
from r1ft.checkpoints.watchdog import DiskWatchdog
from r1ft.exits import ExitCode, JobError, utc_now
from r1ft.export.adapter import name_base_by_id
from r1ft.files import format_bytes, free_bytes
from r1ft.job import Job
from r1ft.machine import instance
from r1ft.machine.signals import StopFlag
from r1ft.model.base import hub_origin
from r1ft.publish import preflight
from r1ft.publish.destination import DestinationDenied, PublishError, PublishResult
from r1ft.publish.location import output_location
from r1ft.publish.manifest import CHECKPOINT_DIR
from r1ft.publish.run import publish_run
from r1ft.report.schema import (
    FailedPublish,
    Interruption,
    LastCheckpointRecord,
    PublishRecord,
    TrainingRecord,
)

log = logging.getLogger(__name__)
PUBLISH_FAILED = "publish failed: "  # how the report's error starts when the publish was what failed


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


def push_final_checkpoint(job: Job) -> bool:
    """After training, before the merge: `last-checkpoint/` ends at the newest checkpoint (a push still in
    flight is waited for, then the newest is pushed unless it is already there), so an instance lost in a
    later stage resumes at the end of training. The step it holds goes into the report."""
    if job.pusher is None:
        return False
    pushed = pusher.push_latest(job.pusher)
    p = job.pusher
    record = LastCheckpointRecord(location=f"{stages.destination(job).location}/{CHECKPOINT_DIR}",
                                  step=max(p.pushed_step, 0), newest_step=p.newest_step(), pushed=pushed,
                                  error=p.last_error)  # fmt: skip
    job.report.last_checkpoint = record
    if pushed:
        log.info("%s holds step %d, the newest checkpoint", record.location, record.step)
    else:
        log.warning("%s holds step %d, not the newest (%d): %s", record.location, record.step,
                    record.newest_step, record.error or "no push")  # fmt: skip
    return pushed


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
    dest = stages.destination(job)
    try:
        return publish_run(job.settings, job.run_dir, job.run_id, dest=dest, stop_check=_publish_stop_check(job),
                           record=lambda pending: _record_publish(job, pending))  # fmt: skip
    except PublishError as e:
        job.report.publish = PublishRecord(location=dest.location, verified=False, error=str(e))
        job.report.history.failed_publishes.append(FailedPublish(error=str(e), at=utc_now()))
        stages.write_report(job)
        raise


def _record_publish(job: Job, pending: PublishResult) -> None:
    """report.json and README.md as they go to the destination: saying what this publish achieves."""
    job.report.publish = PublishRecord(location=pending.location, verified=pending.verified,
                                       files=pending.files, bytes=pending.bytes, message=pending.message)  # fmt: skip
    if job.report.error and job.report.error.startswith(PUBLISH_FAILED):
        job.report.error = None  # the failure stays in the history
    stages.write_report(job)


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


def record_stop(job: Job, stop: StopFlag) -> None:
    """A stop honoured outside training goes into the history with the stage it came in."""
    if not stop.reason:
        return
    step = job.report.training.global_step if job.report.training else 0
    pushed = job.pusher is not None and step > 0 and job.pusher.pushed_step == step
    job.report.history.interruptions.append(
        Interruption(reason=stop.reason, step=step, stage=stop.stage, checkpoint_pushed=pushed, at=utc_now())
    )


def finish_interrupted(job: Job, stop: StopFlag, watchdog: DiskWatchdog) -> ExitCode:
    """After a signal or a disk stop: the checkpoint is saved; push it, publish what exists, exit."""
    log.warning("training stopped early (%s); the newest checkpoint is saved", stop.reason)
    pushed = push_final_checkpoint(job)
    step = job.report.training.global_step if job.report.training else 0
    job.report.history.interruptions.append(
        Interruption(reason=stop.reason, step=step, stage=stop.stage or "train", checkpoint_pushed=pushed,
                     at=utc_now())
    )  # fmt: skip
    stages.save_report(job, keep_on_failure=True)
    _publish_partial(job)
    if stop.reason == "disk":
        log.error("disk budget exceeded: %s", watchdog.state.reason)
        return ExitCode.DISK
    return stop.exit_code


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
        stages.save_report(job, keep_on_failure=True)
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
            Interruption(reason="disk", step=step, stage=stage, checkpoint_pushed=pushed, at=utc_now())
        )
    stages.save_report(job, keep_on_failure=True)
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
        _publish(job)
    except Exception as e:
        log.warning("could not publish the partial run (%s); it stays in %s", e, job.run_dir)
