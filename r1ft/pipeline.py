"""The job, end to end. Reads like a table of contents: each step is a named function of `r1ft.stages`.

settings -> banner -> plan -> destination check -> data -> train (under the disk watchdog) -> last
checkpoint pushed -> merge -> evaluate -> GGUF -> report -> publish -> stop the instance.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from r1ft import delivery, stages
from r1ft.data.prepare import data_fingerprint
from r1ft.exits import ExitCode, JobError
from r1ft.files import disk_full, reserve
from r1ft.job import Job
from r1ft.machine import banner
from r1ft.machine.logs import attach_file_log
from r1ft.machine.runlock import RunLock
from r1ft.machine.signals import StopFlag, Stopped
from r1ft.report.schema import RunReport
from r1ft.settings import Settings
from r1ft.training import distributed

log = logging.getLogger(__name__)


def run_job(settings: Settings) -> ExitCode:
    """The whole job; returns the process exit code.

    With several processes (one per GPU, started by torchrun) every rank trains; side effects (job log,
    data preparation, checkpoint bookkeeping, merge, evaluation, publishing, stopping the instance) belong
    to rank 0, and the other ranks leave once training ends. Rank 0 holds the run directory's lock.
    """
    stop = StopFlag().install()
    job = None
    try:
        job = new_job(settings, stop=stop)
        return _stages(job, stop)
    except JobError as e:  # the run directory is another job's: nothing here is touched
        log.error("%s", e)
        return e.exit_code
    finally:
        stop.uninstall()
        if job is not None and job.lock is not None:
            delivery.reserve_path(job).unlink(missing_ok=True)
            job.lock.release()


def _stages(job: Job, stop: StopFlag) -> ExitCode:
    try:
        hw, plan = stages.plan_run(job)
        stages.check_resume_identity(job, plan.recipe)  # a checkpoint trained otherwise: exit 2 at once
        delivery.check_destination(job)  # before any download: a run that cannot be delivered never trains
        with stages.watch_disk(job, plan) as watchdog:
            with distributed.main_process_first():
                base = stages.fetch_base(job)
                tokenizer = stages.load_tokenizer(base)
                prepared = stages.prepare_data(job, tokenizer)  # a stop is honoured between records
                benchmarks = stages.load_benchmarks(job, prepared)
            stop.check()  # asked to stop before any training: nothing to save
            stages.train_adapter(job, tokenizer, prepared, hw, plan, watchdog, stop)
            trained = not stop.reason
            if not job.main:
                return ExitCode.OK if trained else stop.exit_code
            if trained:
                delivery.push_final_checkpoint(job)
                merged = stages.merge_model(job, tokenizer, plan.recipe.quant, plan.stream_merged)
                # A stop asked for after training skips what is left and publishes what exists at once.
                with contextlib.suppress(Stopped):
                    stop.check()
                    stages.evaluate_models(job, benchmarks, merged)  # a stop ends generation within seconds
                    stop.check()
                    stages.export_gguf_files(job, merged)
        if not trained:  # SIGTERM, SIGINT or the disk budget: checkpoint saved, push it, exit
            return delivery.finish_interrupted(job, stop, watchdog)
        delivery.record_stop(job, stop)
        stages.write_report(job)
        published = delivery.publish_outputs(job)
        code = delivery.end_instance(job, published.verified)
        return stop.exit_code if stop.reason and code == ExitCode.OK else code
    except Stopped:  # before training, or during the publish: the history says where, outputs stay
        return delivery.finish_stopped(job, stop)
    except JobError as e:
        log.error("%s", e)
        if not e.leave_run:
            _keep_what_exists(job, str(e))
        return e.exit_code
    except Exception as e:  # anything unforeseen: keep what exists, and stop (never destroy) the instance
        if job.main and disk_full(e, Path(job.settings.work_dir)):
            return delivery.finish_disk_full(job, e)
        log.exception("the job failed: %s", _advice(e))
        _keep_what_exists(job, f"{type(e).__name__}: {e}")
        return ExitCode.FAILED


def new_job(settings: Settings, command: str = "r1ft run", stop: StopFlag | None = None) -> Job:
    """The run's id, directory, lock, log and report (rank 0 writes them; the other ranks only train). A run
    directory another job holds is a JobError (exit 2) before anything in it is written."""
    run_id = settings.resolved_run_id(data_fingerprint(settings))
    run_dir = Path(settings.work_dir).resolve() / "runs" / run_id
    job = Job(settings, run_id, run_dir, RunReport(run_id=run_id), main=distributed.is_main(), stop=stop)
    if job.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        job.lock = RunLock(run_dir).acquire(command)
        reserve(delivery.reserve_path(job))  # room for report.json if the disk fills
        attach_file_log(run_dir / "job.log")
        env = banner.environment(Path(settings.work_dir))
        log.info(banner.render(env))
        job.report.environment, job.report.settings = env, settings.public_dict()
    return job


def _keep_what_exists(job: Job, error: str) -> None:
    """After a failure: the report records it, and the instance is stopped (its disk keeps the outputs)."""
    if job.main:
        job.report.error = error
        stages.save_report(job, keep_on_failure=True)
        delivery.end_instance(job, published_ok=False)


def _advice(e: Exception) -> str:
    """What to do about a failure nobody planned for, where something useful can be said."""
    text = f"{type(e).__name__}: {e}"
    if "out of memory" in text.lower():
        return (
            f"{text}. The GPU ran out of memory: set R1FT_QUANT=nf4 and/or R1FT_GRADIENT_CHECKPOINTING=true, "
            "or rent a card with more memory (`r1ft plan` shows the predicted peak); the run resumes from its "
            "newest checkpoint"
        )
    return f"{text}. Outputs so far stay in the work dir; rerunning resumes from the newest checkpoint"
