"""Stage commands on an existing run directory: `r1ft merge|eval|gguf|publish --run-dir DIR`.

The run's own settings (from its report.json) decide what shaped it (base model, data, recipe); the
current environment supplies secrets, the destination and evaluation sizes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from r1ft import stages
from r1ft.pipeline import EXIT_OK, Job, JobError
from r1ft.settings import RUN_SHAPING_FIELDS, Settings

log = logging.getLogger("r1ft")


def settings_from_report(settings: Settings, report: dict) -> Settings:
    ran = report.get("settings", {})
    update = {k: ran[k] for k in RUN_SHAPING_FIELDS if k in ran}
    return settings.model_copy(update=update)


def job_for(settings: Settings, run_dir: Path, report: dict) -> Job:
    s = settings_from_report(settings, report)
    job = Job(s, report.get("run_id", run_dir.name), run_dir, report=report)
    job.base = stages.fetch_base_model(job)
    return job


def _plan_like(report: dict):
    class _P:
        quant = report.get("training_choices", {}).get("quant", "none")
        stream_merged = False

    return _P()


def merge_run(settings: Settings, run_dir: Path, report: dict) -> int:
    from r1ft.training.train import detect_hardware

    job = job_for(settings, run_dir, report)
    if not (run_dir / "adapter" / "adapter_config.json").is_file():
        raise SystemExit(f"r1ft: {run_dir}/adapter has no adapter_config.json: train first (r1ft run)")
    stages.merge(job, stages.load_tokenizer(job), detect_hardware(), _plan_like(report))
    stages.save_report(job)
    log.info("merged model in %s", run_dir / "merged")
    return EXIT_OK


def eval_run(settings: Settings, run_dir: Path, report: dict) -> int:
    job = job_for(settings, run_dir, report)
    if not (run_dir / "merged" / "config.json").is_file():
        raise SystemExit(f"r1ft: {run_dir}/merged is missing: run `r1ft merge --run-dir {run_dir}` first")
    tokenizer = stages.load_tokenizer(job)
    prepared = stages.prepare_data(job, tokenizer)
    stages.evaluate(job, prepared, run_dir / "merged")
    stages.save_report(job)
    from r1ft.report.card import write_model_card

    write_model_card(run_dir, job.report)
    return EXIT_OK


def gguf_run(settings: Settings, run_dir: Path, report: dict) -> int:
    job = Job(
        settings_from_report(settings, report), report.get("run_id", run_dir.name), run_dir, report=report
    )
    if not job.settings.gguf_types:
        raise SystemExit("r1ft: set R1FT_GGUF to the types to export, e.g. R1FT_GGUF=f16,q8_0")
    stages.export_gguf(job, run_dir / "merged", None, stream=False)  # kept locally: `r1ft publish` sends them
    stages.save_report(job)
    return EXIT_OK


def publish_run_dir(settings: Settings, run_dir: Path, report: dict) -> int:
    job = Job(settings, report.get("run_id", run_dir.name), run_dir, report=report)
    try:
        published = stages.publish(job)
    except JobError as e:
        log.error("%s", e)
        return e.exit_code
    return stages.stop_instance(job, published)
