"""The job, end to end. Reads like a table of contents: each step is a named function in its own module.

settings -> banner -> plan -> data -> train (under the disk watchdog) -> merge -> evaluate -> GGUF ->
report -> publish -> stop the instance.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1ft.settings import Settings

log = logging.getLogger("r1ft")

EXIT_OK, EXIT_SETTINGS, EXIT_PUBLISH, EXIT_DISK = 0, 2, 3, 4


class JobError(Exception):
    """A failure with the exit code it maps to and a message that says what to do."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Job:
    """What the steps share: paths, decisions and the growing report."""

    settings: Settings
    run_id: str
    run_dir: Path
    base: Path | str = ""
    pusher: Any = None
    main: bool = True  # rank 0 (or the only process): the one that owns side effects
    dest: Any = (
        None  # the publish destination, made once: streamed merge shards and the final publish share it
    )

    def destination(self):
        if self.dest is None:
            from r1ft.publish.destinations import destination_for

            self.dest = destination_for(self.settings, self.run_id)
        return self.dest

    timings: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str):
        return _Timer(self, name)


class _Timer:
    def __init__(self, job: Job, name: str):
        self.job, self.name = job, name

    def __enter__(self):
        log.info("== %s", self.name)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.job.timings[self.name] = round(time.perf_counter() - self.t0, 2)


def run_job(settings: Settings) -> int:
    """The whole job; returns the process exit code.

    With several processes (one per GPU, started by torchrun) every rank trains; side effects (job log,
    data preparation, checkpoint bookkeeping, merge, evaluation, publishing, stopping the instance) belong
    to rank 0, and the other ranks leave once training ends.
    """
    from r1ft import stages
    from r1ft.data import prepare as data
    from r1ft.machine import banner
    from r1ft.machine.logs import attach_file_log
    from r1ft.machine.signals import StopFlag
    from r1ft.training import distributed

    stop = StopFlag().install()
    main = distributed.is_main()
    run_id = settings.resolved_run_id(data.data_fingerprint(settings))
    job = Job(settings, run_id, Path(settings.work_dir).resolve() / "runs" / run_id, main=main)
    if main:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        attach_file_log(job.run_dir / "job.log")
        env = banner.environment(Path(settings.work_dir))
        log.info(banner.render(env))
        job.report.update(run_id=run_id, environment=env, settings=settings.public_dict())
    try:
        hw, plan = stages.plan_job(job)
        with stages.disk_watchdog(job, plan) as watchdog:
            with distributed.main_process_first():
                job.base = stages.fetch_base_model(job)
                tokenizer = stages.load_tokenizer(job)
                prepared = stages.prepare_data(job, tokenizer)
            if stop.reason:  # asked to stop before any training: nothing to save
                log.warning("stopped by %s before training; nothing to save", stop.reason)
                return stop.exit_code
            stages.train(job, tokenizer, prepared, hw, plan, watchdog, stop)
            trained = not stop.reason
            if not main:
                return EXIT_OK if trained else stop.exit_code
            if trained:
                merged = stages.merge(job, tokenizer, hw, plan)
                # A stop asked for after training skips what is left and publishes what exists at once.
                if not stop.reason:
                    stages.evaluate(job, prepared, merged)
                if not stop.reason:
                    stages.export_gguf(job, merged, plan)
        if not trained:  # SIGTERM, SIGINT or the disk budget: checkpoint saved, push it, exit
            return stages.finish_interrupted(job, stop, watchdog)
        stages.write_report(job)
        published = stages.publish(job)
        code = stages.stop_instance(job, published)
        return stop.exit_code if stop.reason and code == EXIT_OK else code
    except JobError as e:
        log.error("%s", e)
        if main:
            job.report["error"] = str(e)
            stages.save_report(job)
            stages.stop_instance(job, published_ok=False)
        return e.exit_code
    except Exception as e:  # anything unforeseen: keep what exists, and stop (never destroy) the instance
        log.exception("the job failed: %s", _advice(e))
        if main:
            job.report["error"] = f"{type(e).__name__}: {e}"
            stages.save_report(job)
            stages.stop_instance(job, published_ok=False)
        return 1
    finally:
        stop.uninstall()


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


def dump_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
