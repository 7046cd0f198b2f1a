"""What the generation engine takes and gives: requests, the sampling of a call, completions and the call's
figures (the types the evaluation and the benchmark share with every engine)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Request:
    """One prompt to complete. `max_new_tokens` (optional) caps this request below `Sampling`'s."""

    key: str
    prompt_ids: list[int]
    seed: int = 0
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class Sampling:
    """Decoding for one `generate` call: temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 1024

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError(f"Sampling needs temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1: {self}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    key: str
    token_ids: list[int]  # generated, EOS excluded
    finished: bool  # ended with EOS
    new_tokens: int  # generated tokens, EOS included


@dataclass
class EngineStats:
    """How the last `generate` went."""

    requests: int = 0
    completed: int = 0
    unfinished: int = 0  # left out because `should_stop` ended the call
    stopped: bool = False
    generated_tokens: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0  # the whole call, setup included
    setup_s: float = 0.0  # cache allocation, warm-up, first graph captures
    prefill_s: float = 0.0
    decode_steps: int = 0
    full_sort_rows: int = 0  # sampled rows whose nucleus needed the full sort
    peak_memory_bytes: int = 0
    slots: int = 0
    row_len: int = 0
    cache_bytes: int = 0
    graphs: int = 0
    oom_fallbacks: list[str] = field(default_factory=list)
    kernel_fallback: str = ""  # why the Triton kernel was replaced by the reference attention ('' if not)
    step_log: list[tuple[int, float]] = field(
        default_factory=list
    )  # (rows, seconds) per decode step, if asked

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0
