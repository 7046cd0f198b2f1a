"""Stage commands on an existing run directory: `r1ft merge|eval|gguf|publish --run-dir DIR`.

The run's own settings (from its report.json) decide what shaped it (base model, data, recipe); the
current environment supplies secrets, the destination and evaluation sizes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from r1ft import stages
from r1ft.job import ExitCode, Job, JobError
from r1ft.machine.signals import StopFlag
from r1ft.report.card import write_model_card
from r1ft.report.schema import REPORT_FILE, RunReport
from r1ft.settings import RUN_SHAPING_FIELDS, Settings

log = logging.getLogger(__name__)


def load_run(settings: Settings, run_dir: Path) -> Job:
    """The job of a finished (or stopped) run: its report, and the settings that shaped it."""
    path = run_dir / REPORT_FILE
    if not path.is_file():
        raise JobError(
            f"{run_dir} has no {REPORT_FILE}: is it a run directory? (runs live in R1FT_WORK_DIR/runs/)",
            ExitCode.SETTINGS,
        )
    try:
        report = RunReport.load(path)
    except ValueError as e:
        raise JobError(f"{path} is not a readable r1ft report ({e})", ExitCode.SETTINGS) from e
    ran = {k: report.settings[k] for k in RUN_SHAPING_FIELDS if k in report.settings}
    return Job(settings.model_copy(update=ran), report.run_id or run_dir.name, run_dir, report)


def merge_run(settings: Settings, run_dir: Path) -> ExitCode:
    job = load_run(settings, run_dir)
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
    job = load_run(settings, run_dir)
    if not (run_dir / "merged" / "config.json").is_file():
        raise JobError(
            f"{run_dir}/merged is missing: run `r1ft merge --run-dir {run_dir}` first", ExitCode.SETTINGS
        )
    tokenizer = stages.load_tokenizer(stages.fetch_base(job))
    prepared = stages.prepare_data(job, tokenizer)
    stop = StopFlag().install()
    try:
        stages.evaluate_models(job, stages.load_benchmarks(job, prepared), run_dir / "merged", stop)
    finally:
        stop.uninstall()
    stages.save_report(job)
    write_model_card(run_dir, job.report)
    return ExitCode.OK


def gguf_run(settings: Settings, run_dir: Path) -> ExitCode:
    job = load_run(settings, run_dir)
    if not job.settings.gguf_types:
        raise JobError("set R1FT_GGUF to the types to export, e.g. R1FT_GGUF=f16,q8_0", ExitCode.SETTINGS)
    stages.export_gguf_files(job, run_dir / "merged", stream=False)  # kept locally: `r1ft publish` sends them
    stages.save_report(job)
    return ExitCode.OK


def publish_run_dir(settings: Settings, run_dir: Path) -> ExitCode:
    """Publish (again) a run directory: the destination and its credentials are today's settings, what
    shaped the run (its base model, for the manifest and the adapter's config) the run's own."""
    job = load_run(settings, run_dir)
    try:
        published = stages.publish_outputs(job)
    except JobError as e:
        log.error("%s", e)
        return e.exit_code
    return stages.end_instance(job, published.verified)
