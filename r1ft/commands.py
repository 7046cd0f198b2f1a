"""Stage commands on an existing run directory: `r1ft merge|eval|gguf|publish --run-dir DIR`.

The run's own settings (from its report.json) decide what shaped it (base model, data, recipe); the
current environment supplies secrets, the destination and evaluation sizes. Each command holds the run
directory's lock while it works (`r1ft.machine.runlock`): not while a job runs on it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from r1ft import delivery, stages
from r1ft.checkpoints import markers
from r1ft.exits import ExitCode, JobError
from r1ft.job import Job
from r1ft.machine.runlock import RunLock
from r1ft.machine.signals import StopFlag
from r1ft.report.card import write_model_card
from r1ft.report.schema import REPORT_FILE, RunReport
from r1ft.settings import RUN_SHAPING_FIELDS, Settings

log = logging.getLogger(__name__)


def load_run(settings: Settings, run_dir: Path) -> Job:
    """The job of a finished (or stopped) run: its report, and the settings that shaped it."""
    path = run_dir / REPORT_FILE
    if not path.is_file():
        raise JobError(_no_report(run_dir), ExitCode.SETTINGS)
    try:
        report = RunReport.load(path)
    except ValueError as e:
        raise JobError(
            f"{path} is not a readable r1ft report ({e}): {_resume_advice(run_dir)}", ExitCode.SETTINGS
        ) from e
    ran = {k: report.settings[k] for k in RUN_SHAPING_FIELDS if k in report.settings}
    job = Job(settings.model_copy(update=ran), report.run_id or run_dir.name, run_dir, report)
    t = report.training
    if t is not None and t.interrupted:
        of = f" of {t.max_steps}" if t.max_steps else ""
        log.warning("run %s stopped early (%s) at step %d%s: its adapter is partial; %s", job.run_id,
                    t.interrupted, t.global_step, of, _resume_advice(run_dir))  # fmt: skip
    return job


def _no_report(run_dir: Path) -> str:
    if not run_dir.is_dir():
        return (
            f"{run_dir} does not exist, so it has no {REPORT_FILE}: give the run's directory (runs live in "
            "R1FT_WORK_DIR/runs/<run id>)"
        )
    if (run_dir / "checkpoints").is_dir() or (run_dir / "job.log").is_file():
        return (
            f"{run_dir} is a run that never finished: its job ended (killed?) before writing {REPORT_FILE}, so "
            f"there is nothing to merge or publish yet. {_resume_advice(run_dir)}"
        )
    return (
        f"{run_dir} has no {REPORT_FILE}: is it a run directory? (runs live in R1FT_WORK_DIR/runs/<run id>)"
    )


def _resume_advice(run_dir: Path) -> str:
    newest = markers.newest_complete(run_dir / "checkpoints", deep=False)
    where = (
        f"from its newest complete checkpoint ({newest.name})"
        if newest
        else "(no complete checkpoint: from step 0)"
    )
    if run_dir.parent.name != "runs":  # `r1ft run` keeps its runs in WORK_DIR/runs/<run id>
        return (
            f"`r1ft run` resumes a run kept as WORK_DIR/runs/{run_dir.name}: move {run_dir} there, then rerun it "
            f"with the same settings, R1FT_WORK_DIR=WORK_DIR and R1FT_RUN_ID={run_dir.name}, to resume it {where}"
        )
    return (
        f"rerun `r1ft run` with the same settings and R1FT_RUN_ID={run_dir.name} "
        f"(R1FT_WORK_DIR={run_dir.parent.parent}) to resume it {where}"
    )


@contextlib.contextmanager
def _run(settings: Settings, run_dir: Path, command: str) -> Iterator[Job]:
    """The run's job, with the run directory locked for the command's duration."""
    lock = RunLock(run_dir).acquire(command) if run_dir.is_dir() else None
    try:
        yield load_run(settings, run_dir)
    finally:
        if lock is not None:
            lock.release()


def merge_run(settings: Settings, run_dir: Path) -> ExitCode:
    with _run(settings, run_dir, "r1ft merge") as job:
        return _merge(job, run_dir)


def _merge(job: Job, run_dir: Path) -> ExitCode:
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise JobError(
            f"{run_dir}/adapter has no adapter_config.json: train first (r1ft run)", ExitCode.SETTINGS
        )
    base = stages.fetch_base(job)
    quant = job.report.recipe.quant if job.report.recipe else "none"
    stages.merge_model(job, stages.load_tokenizer(base), quant, stream=False)
    stages.save_report(job)
    log.info("merged model in %s", run_dir / "merged")
    return ExitCode.OK


def eval_run(settings: Settings, run_dir: Path) -> ExitCode:
    with _run(settings, run_dir, "r1ft eval") as job:
        return _eval(job, run_dir)


def _eval(job: Job, run_dir: Path) -> ExitCode:
    if not (run_dir / "merged" / "config.json").is_file():
        raise JobError(
            f"{run_dir}/merged is missing: run `r1ft merge --run-dir {run_dir}` first", ExitCode.SETTINGS
        )
    tokenizer = stages.load_tokenizer(stages.fetch_base(job))
    prepared = stages.prepare_data(job, tokenizer)
    job.stop = StopFlag().install()
    try:
        stages.evaluate_models(job, stages.load_benchmarks(job, prepared), run_dir / "merged")
    finally:
        job.stop.uninstall()
    stages.save_report(job)
    write_model_card(run_dir, job.report)
    return job.stop.exit_code if job.stop.reason else ExitCode.OK  # a stop keeps what was scored


def gguf_run(settings: Settings, run_dir: Path) -> ExitCode:
    with _run(settings, run_dir, "r1ft gguf") as job:
        return _gguf(job, run_dir)


def _gguf(job: Job, run_dir: Path) -> ExitCode:
    if not job.settings.gguf_types:
        raise JobError("set R1FT_GGUF to the types to export, e.g. R1FT_GGUF=f16,q8_0", ExitCode.SETTINGS)
    if not (run_dir / "merged" / "config.json").is_file():
        raise JobError(
            f"{run_dir}/merged holds no merged model (GGUF files are made from it): run "
            f"`r1ft merge --run-dir {run_dir}` first",
            ExitCode.SETTINGS,
        )
    stages.export_gguf_files(job, run_dir / "merged", stream=False)  # kept locally: `r1ft publish` sends them
    stages.save_report(job)
    return ExitCode.OK


def publish_run_dir(settings: Settings, run_dir: Path) -> ExitCode:
    """Publish (again) a run directory: the destination and its credentials are today's settings, what
    shaped the run (its base model, for the manifest and the adapter's config) the run's own."""
    with _run(settings, run_dir, "r1ft publish") as job:
        return _publish(job)


def _publish(job: Job) -> ExitCode:
    try:
        published = delivery.publish_outputs(job)
    except JobError as e:
        log.error("%s", e)
        return e.exit_code
    return delivery.end_instance(job, published.verified)
