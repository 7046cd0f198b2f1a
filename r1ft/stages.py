"""The job's stages: small glue functions between the settings, the run directory, the typed run report and
each stage's package. `r1ft.pipeline.run_job` calls them in order; `r1ft.commands` reruns single ones on a
finished run. Getting the run to the user (preflight, publish, the ends after a stop) is `r1ft.delivery`."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

from r1ft import validation
from r1ft.checkpoints import markers, pusher, resume
from r1ft.checkpoints.watchdog import DiskWatchdog, trainer_callback
from r1ft.data import prepare
from r1ft.evaluation.losses import read_scalars
from r1ft.evaluation.run import FineTune, evaluate_run
from r1ft.exits import ExitCode, JobError, utc_now
from r1ft.export import merge
from r1ft.export.gguf import export_gguf
from r1ft.files import GB
from r1ft.job import Job
from r1ft.machine.gpu import Hardware, detect_hardware
from r1ft.machine.signals import StopFlag
from r1ft.model.base import fetch_base_model
from r1ft.plan import Plan, plan_for, render_plan
from r1ft.publish.connect import destination_for
from r1ft.publish.destination import Destination
from r1ft.recipe import Recipe
from r1ft.records import DataError
from r1ft.report.card import write_model_card
from r1ft.report.schema import (
    DiskRecord,
    GgufRecord,
    MergeRecord,
    ResumeRecord,
    Resumption,
    RunReport,
    TrainingRecord,
)
from r1ft.tasks import heldout, math500, scibench
from r1ft.tasks.problem import Benchmark
from r1ft.training import distributed
from r1ft.training.train import finished_run, run_training

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
    """The base model's files; a Hub model whose config was not known before the download is checked now
    (context length, LoRA targets), before any training: exit 2 with the fix."""
    with job.step("base model"):
        job.base = fetch_base_model(job.settings)
    if validation.known_base_config(job.settings) is None:
        problems = validation.base_model_problems(job.settings, _config_of(job.base))
        if problems:
            raise JobError("these settings do not fit the base model:\n  " + "\n  ".join(problems),
                           ExitCode.SETTINGS)  # fmt: skip
    return job.base


def _config_of(base: Path) -> dict:
    try:
        config = json.loads((Path(base) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # loading the model says what is wrong with it
    return config if isinstance(config, dict) else {}


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
    if start.source == "destination":  # just fetched from there: pushing it back would only cost time
        job.pusher.pushed_step = start.step
    callbacks = [
        markers.completion_callback({"run_id": job.run_id, "identity": identity(job, plan.recipe)}),
        trainer_callback(watchdog, stop),
        pusher.pusher_callback(job.pusher),
        distributed.stop_agreement_callback(stop),  # last: every rank stops at the same step
    ]
    with job.step("train"):
        done = finished_run(start.checkpoint, job.run_dir, tokenizer, job.main) if start.checkpoint else None
        if done is not None:
            log.info("training already ended at step %d (%s): its adapter is used as it is", done.global_step,
                     start.checkpoint.name)  # fmt: skip
            earlier = previous_training(job)  # the ended process's training time and mean loss
            if earlier is not None and earlier.global_step == done.global_step:
                done.metrics = {**earlier.metrics, **done.metrics}
        result = done or run_training(
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
        max_steps=result.max_steps,
        epoch=result.epoch,
        epochs=result.epochs,
        loss_by_step={h["step"]: h["loss"] for h in result.log_history if "loss" in h and "step" in h},
        metrics=result.metrics,
        interrupted=stop.reason,
        resumed_from=result.resumed_from,
    )
    return result


def previous_base(job: Job) -> float | None:
    """The base model's step-0 eval loss measured by an earlier process of this run (a resumed run)."""
    earlier = previous_training(job)
    return earlier.eval_loss_base if earlier else None


def previous_training(job: Job) -> TrainingRecord | None:
    """The training record of an earlier process of this run (its report.json, local or fetched back)."""
    path = job.run_dir / "report.json"
    try:
        return RunReport.load(path).training if path.is_file() else None
    except ValueError:
        return None


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
            Resumption(source=start.source, step=start.step, steps_redone=redone, at=utc_now())
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


def evaluate_models(job: Job, benchmarks: list[Benchmark], merged: Path) -> None:
    """Base vs fine-tune under the protocol; the fine-tune is the published merged weights (recomputed and
    checked by their sha256 when the disk plan streamed the shards away). The engine polls the job's stop
    flag between decode steps: a stop ends generation within seconds and the record keeps what was scored,
    marked stopped."""
    if list(merged.glob("*.safetensors")):
        finetune = FineTune(merged=merged)
    else:
        recipe, record = job.report.recipe, job.report.merge
        finetune = FineTune(base=job.base, adapter=job.run_dir / "adapter", quant=recipe.quant if recipe else "none",
                            revision=job.settings.base_revision, published=record.sha256 if record else {})  # fmt: skip
    base_loss = job.report.training.eval_loss_base if job.report.training else None
    with job.step("evaluate"):
        job.report.evaluation = evaluate_run(job.settings, job.run_dir, job.base, finetune, benchmarks,
                                             stop=lambda: job.stop.reason if job.stop else "",
                                             eval_loss_base=base_loss)  # fmt: skip


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

    def on_result(r) -> None:  # recorded as each file is done: a stop later keeps the record
        job.report.gguf.append(
            GgufRecord(type=r.type, path=str(r.path), size_bytes=r.size_bytes, seconds=r.seconds,
                       verified=r.verified, kl_divergence=r.kl_divergence, check_seconds=r.check_seconds,
                       message=r.message)
        )  # fmt: skip
        if not r.verified:
            log.warning("GGUF %s not published: %s", r.type, r.message)

    job.report.gguf = []
    with job.step("gguf"):
        export_gguf(merged, job.run_dir / "gguf", job.settings.gguf_types, on_file_ready=on_file_ready,
                    stop_check=job.stop.check if job.stop else None, on_result=on_result)  # fmt: skip


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


# --- the destination ----------------------------------------------------------------------------------
def destination(job: Job) -> Destination:
    """The run's destination, opened once (merge shards, GGUF files and the final publish share it)."""
    if job.destination is None:
        job.destination = destination_for(job.settings, job.run_id)
    return job.destination
