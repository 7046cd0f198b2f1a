"""What the evaluation reports (report.json's `evaluation`, eval/results.json): typed, per model and
benchmark, with the paired comparison per benchmark. `r1ft.report.card` renders it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class Generation(_Record):
    """How one model's generation went (the engine's figures)."""

    seconds: float = 0.0  # the generate call, setup included
    setup_s: float = 0.0
    new_tokens: int = 0
    tokens_per_s: float = 0.0
    slots: int = 0  # answers generated at once (the KV cache's rows)
    row_len: int = 0
    peak_memory_gb: float = 0.0
    oom_fallbacks: list[str] = Field(default_factory=list)
    kernel_fallback: str = ""
    stopped: bool = False  # the budget or a stop request ended it


class ModelRun(_Record):
    """One model: what it was planned to answer, what it got through, how long it took."""

    path: str = ""
    planned_problems: int = 0
    scored_problems: int = 0  # whole problems of the order's prefix this model answered
    budget_s: float = 0.0
    budget_exhausted: bool = False
    interrupted: str = ""  # SIGTERM / SIGINT, when a stop request ended it
    load_s: float = 0.0
    generation: Generation = Field(default_factory=Generation)


class ScoredModel(_Record):
    """Which weights the fine-tune's scores belong to."""

    source: str = ""  # "merged/" (the published files) or "recomputed merge" (shards were streamed away)
    matches_published: bool | None = None  # recomputed shards' sha256 == the published ones'
    method: str = ""


class SampledPrompt(_Record):
    prompt: str
    base: str = ""
    finetuned: str = ""


class Indicator(_Record):
    name: str
    passed: bool | None
    detail: str = ""


class EvaluationRecord(_Record):
    protocol: dict[str, Any] = Field(default_factory=dict)
    device: str = ""
    dtype: str = ""
    benchmarks: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name -> origin, notes, size
    planned: dict[str, int] = Field(default_factory=dict)  # benchmark -> problems drawn
    compared_problems: int = 0  # the prefix both models scored: every number below is over it
    models: dict[str, ModelRun] = Field(default_factory=dict)  # "base", "finetuned"
    results: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict
    )  # model -> benchmark -> summary
    comparison: dict[str, dict[str, Any]] = Field(default_factory=dict)  # benchmark -> paired comparison
    scored_model: ScoredModel = Field(default_factory=ScoredModel)
    prompts: list[SampledPrompt] = Field(default_factory=list)
    losses: dict[str, Any] = Field(default_factory=dict)
    indicators: list[Indicator] = Field(default_factory=list)
    loss_curve: str | None = None
    seconds: float = 0.0
