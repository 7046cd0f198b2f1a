"""The run report (report.json): what the stages did, as typed sections.

The stages fill a `RunReport` as they go; the model card (`r1ft.report.card`), the stage commands
(`r1ft.commands`) and `scripts/collect --summary` (`r1ft.report.summary`) read it back through the same
types. Each section is owned by the stage that writes it; the section types here are the report's view of
the stages' results. Unknown keys are kept (`extra="allow"`), so a report written by another version of
r1ft still loads; `schema_version` says which layout a file has (1: before this field existed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from r1ft.data.stats import DataStats
from r1ft.evaluation.results import EvaluationRecord
from r1ft.files import write_json_atomic
from r1ft.plan import Plan
from r1ft.recipe import Recipe

SCHEMA_VERSION = 2
REPORT_FILE = "report.json"


class Section(BaseModel):
    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)


class ResumeRecord(Section):
    """Where training started: a checkpoint of this run (local or fetched from the destination), or none."""

    checkpoint: str = ""
    source: str = ""  # "", "local", "destination"
    step: int = 0


class Interruption(Section):
    reason: str  # SIGTERM, SIGINT, disk
    step: int = 0
    stage: str = "train"  # the stage that was running when the stop came (data, train, gguf, publish...)
    checkpoint_pushed: bool = False
    at: str = ""


class Resumption(Section):
    source: str
    step: int
    steps_redone: int = 0
    at: str = ""


class FailedPublish(Section):
    """A publish that failed; a later one that succeeds clears the report's error, not this entry."""

    error: str
    at: str = ""


class History(Section):
    """What happened to the run across processes: each interruption, each resume, each failed publish."""

    interruptions: list[Interruption] = Field(default_factory=list)
    resumes: list[Resumption] = Field(default_factory=list)
    failed_publishes: list[FailedPublish] = Field(default_factory=list)


class TrainingRecord(Section):
    global_step: int = 0
    eval_loss_base: float | None = None  # the base model's eval loss at step 0
    max_steps: int = 0  # the steps the run was to train (0: not recorded)
    epoch: float | None = None  # epochs trained, fractional (the Trainer's metrics["epoch"] is the same)
    epochs: float | None = None  # epochs the run was to train (from R1FT_MAX_STEPS when it is set)
    loss_by_step: dict[int, float] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)  # the Trainer's own metric names
    interrupted: str = ""
    resumed_from: str = ""


class LastCheckpointRecord(Section):
    """`last-checkpoint/` at the destination after training (or after a stop): the step it holds."""

    location: str = ""
    step: int = 0  # the newest step pushed (0: none)
    newest_step: int = 0  # the newest complete checkpoint on disk: equal to `step` unless the push failed
    pushed: bool = False
    error: str = ""


class DiskRecord(Section):
    peak_gb: float
    budget_gb: float
    planned_peak_gb: float
    pruned: list[str] = Field(default_factory=list)
    emergency_prunes: int = 0


class MergeRecord(Section):
    shards: list[str] = Field(default_factory=list)
    total_bytes: int = 0
    sha256: dict[str, str] = Field(default_factory=dict)  # shard -> sha256 (the evaluation checks against it)
    streamed: bool = False
    # Merged vs adapter model on the check prompts: bf16 on a GPU (fp32 on the CPU), as trained.
    max_logit_diff: float | None = None
    logit_check_dtype: str = ""


class GgufRecord(Section):
    type: str
    path: str
    size_bytes: int = 0
    seconds: float = 0.0
    verified: bool = False
    kl_divergence: float | None = None  # llama.cpp against the merged model, mean nats per token
    check_seconds: float = 0.0
    message: str = ""


class PublishRecord(Section):
    """The publish this report went out with. At the destination it says what that publish achieved: the
    report is written just before it is sent, and the manifest is withdrawn if the verification then fails.
    `files` counts every file the manifest lists plus the manifest; `bytes` is the manifest's total_bytes."""

    location: str = ""
    verified: bool = False
    files: int = 0
    bytes: int = 0
    message: str = ""
    error: str | None = None


class RunReport(Section):
    schema_version: int = SCHEMA_VERSION
    run_id: str = ""
    environment: dict[str, Any] = Field(default_factory=dict)  # versions, GPUs, free disk (banner)
    settings: dict[str, Any] = Field(default_factory=dict)  # Settings.public_dict(): no secrets
    plan: Plan | None = None
    recipe: Recipe | None = None
    data: DataStats | None = None
    resume: ResumeRecord | None = None
    history: History = Field(default_factory=History)
    training: TrainingRecord | None = None
    last_checkpoint: LastCheckpointRecord | None = None
    merge: MergeRecord | None = None
    evaluation: EvaluationRecord | None = None
    gguf: list[GgufRecord] = Field(default_factory=list)
    disk: DiskRecord | None = None
    publish: PublishRecord | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    error: str | None = None

    def save(self, run_dir: Path) -> Path:
        """Write report.json atomically (schema_version set to this version's)."""
        self.schema_version = SCHEMA_VERSION
        path = Path(run_dir) / REPORT_FILE
        write_json_atomic(path, self.model_dump(mode="json"))
        return path

    @classmethod
    def load(cls, path: Path) -> RunReport:
        """A report.json as written by this or an earlier r1ft (sections it lacks stay empty)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.setdefault("schema_version", 1), int):
            raise ValueError(
                "not a JSON object with a whole-number schema_version"
            )  # a ValueError: callers say so
        if data["schema_version"] < 2:  # version 1 had no recipe section (training_choices, flat plan)
            data.pop("training_choices", None)
            data.pop("plan", None)
        return cls.model_validate(data)
