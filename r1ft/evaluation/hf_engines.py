"""transformers' own generation paths behind the engine's interface (`generate(requests, sampling,
should_stop, on_complete)` and `stats`), for the generation benchmark's baselines:

- `HFGenerate`: `model.generate` over fixed batches in request order, left padding; a dynamic cache (what the
  evaluation did before the engine), or `cache_implementation="static"` with a compiled decode step
  (`CompileConfig(fullgraph=True, dynamic=False)`). A batch runs until its longest row ends, so its rows
  that finished early idle: only each request's own tokens (up to its EOS or cap) count as generated.
  Sampling disables HF's default top_k=50, so the nucleus is the engine's.
- `HFContinuous`: transformers' continuous batching (`init_continuous_batching` with a
  `ContinuousBatchingConfig`), requests streamed so a time-bounded run counts the tokens of rows still running.

Both record the wall time of every decode step (`stats.step_times`) for the benchmark's projection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from r1ft.evaluation.engine import Completion, EngineStats, Request, Sampling


@dataclass
class HFStats(EngineStats):
    step_times: list[float] = field(default_factory=list)  # perf_counter at each decode step
    batch: int = 0
    first_call_s: float = 0.0  # the first batch's first step (compilation for the static cache)
    first_batch_steps: int = 0


def _caps(requests: Sequence[Request], sampling: Sampling) -> list[int]:
    return [min(sampling.max_new_tokens, r.max_new_tokens or sampling.max_new_tokens) for r in requests]


def _old_evaluation_attention(device):
    """SDPA without its cuDNN backend on CUDA, as the evaluation before the engine ran `generate`: decoding
    asks for a new key length every step and cuDNN builds an execution plan per shape (about 3x slower per
    first pass over a length on an H200), so the baseline is the old evaluation as it ran, not slower."""
    import contextlib

    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def generation_config(sampling: Sampling, max_new_tokens: int, eos_id: int | None, pad_id: int, **extra):
    """A GenerationConfig for `sampling`: greedy with neutral warpers, or temperature/top_p and no top_k."""
    from transformers import GenerationConfig

    mode = (
        {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": None}
        if sampling.greedy
        else {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
    )
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
                            use_cache=True, **mode, **extra)  # fmt: skip


class HFGenerate:
    """`model.generate` in batches of `batch_size` (see the module docstring)."""

    def __init__(self, model, eos_id: int | None, pad_id: int, batch_size: int, static: bool = False):
        self.model, self.eos, self.pad = model, eos_id, pad_id
        self.batch_size, self.static = batch_size, static
        self.stats = HFStats()

    def generate(
        self,
        requests: Sequence[Request],
        sampling: Sampling,
        should_stop: Callable[[], bool] = lambda: False,
        on_complete: Callable[[Completion], None] | None = None,
        time_limit: float | None = None,
    ) -> list[Completion]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        st = self.stats = HFStats(requests=len(requests), batch=self.batch_size)
        caps, out = _caps(requests, sampling), []
        t0 = time.perf_counter()
        if self.model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        class Clock(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                st.step_times.append(time.perf_counter())
                return torch.full(
                    (input_ids.shape[0],), should_stop(), dtype=torch.bool, device=input_ids.device
                )

        for i in range(0, len(requests), self.batch_size):
            left = None if time_limit is None else time_limit - (time.perf_counter() - t0)
            if (left is not None and left <= 0) or should_stop():
                st.stopped = True
                break
            batch, batch_caps = requests[i : i + self.batch_size], caps[i : i + self.batch_size]
            longest = max(len(r.prompt_ids) for r in batch)
            ids = torch.tensor([[self.pad] * (longest - len(r.prompt_ids)) + r.prompt_ids for r in batch])
            mask = torch.tensor(
                [[0] * (longest - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch]
            )
            extra = {"max_time": left} if left is not None else {}
            if self.static:
                from transformers import CompileConfig

                extra |= {
                    "cache_implementation": "static",
                    "compile_config": CompileConfig(fullgraph=True, dynamic=False),
                }
            config = generation_config(sampling, max(batch_caps), self.eos, self.pad, **extra)
            first = len(st.step_times)
            tb = time.perf_counter()
            with torch.inference_mode(), _old_evaluation_attention(self.model.device):
                gen = self.model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                          generation_config=config, stopping_criteria=StoppingCriteriaList([Clock()]))  # fmt: skip
            if i == 0 and len(st.step_times) > first:
                st.first_call_s = st.step_times[first] - tb
                st.first_batch_steps = len(st.step_times)
            for r, cap, row in zip(batch, batch_caps, gen[:, longest:].tolist(), strict=True):
                row = row[:cap]
                said_eos = self.eos is not None and self.eos in row
                kept = row[: row.index(self.eos)] if said_eos else row
                c = Completion(r.key, kept, said_eos, len(kept) + said_eos)
                st.generated_tokens += c.new_tokens
                if c.finished or c.new_tokens == cap:
                    st.completed += 1
                    out.append(c)
                    if on_complete:
                        on_complete(c)
        st.seconds = time.perf_counter() - t0
        st.decode_steps = len(st.step_times)
        st.unfinished = len(requests) - st.completed
        st.peak_memory_bytes = torch.cuda.max_memory_allocated() if self.model.device.type == "cuda" else 0
        return out


def continuous_batching_config(num_blocks: int | None = None):
    """The continuous-batching options for this model without flash-attn (SDPA paged, so its attention
    needs a mask and transformers turns CUDA graphs off by default): no prefix sharing (every prompt is
    distinct up to k samples), no async double-buffering (it ran out of memory at 32k batch tokens on an
    H200), 256-token pages, at most 256 requests and 8,192 tokens a batch, 85% of the free memory (or
    `num_blocks` pages: on CPU, sizing from memory takes most of the RAM)."""
    from transformers import ContinuousBatchingConfig

    return ContinuousBatchingConfig(
        page_size=256,
        num_blocks=num_blocks,
        max_batch_tokens=8192,
        max_requests_per_batch=256,
        max_memory_percent=0.85,
        allow_block_sharing=False,
        use_async_batching=False,
        scheduler_type="fifo",
    )


class HFContinuous:
    """transformers' continuous batching (see the module docstring)."""

    def __init__(self, model, eos_id: int | None, pad_id: int, config=None):
        self.model, self.eos, self.pad = model, eos_id, pad_id
        self.config = config
        self.stats = HFStats()

    def generate(
        self,
        requests: Sequence[Request],
        sampling: Sampling,
        should_stop: Callable[[], bool] = lambda: False,
        on_complete: Callable[[Completion], None] | None = None,
        time_limit: float | None = None,
    ) -> list[Completion]:
        import torch

        st = self.stats = HFStats(requests=len(requests))
        caps = dict(zip((r.key for r in requests), _caps(requests, sampling), strict=True))
        progress: dict[str, list[int]] = {}
        done: dict[str, Completion] = {}
        t0 = time.perf_counter()
        if self.model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        config = generation_config(sampling, max(caps.values()), self.eos, self.pad)
        manager = self.model.init_continuous_batching(
            generation_config=config, continuous_batching_config=self.config or continuous_batching_config()
        )
        manager.start()
        try:
            for r in requests:
                manager.add_request(input_ids=r.prompt_ids, request_id=r.key, max_new_tokens=caps[r.key],
                                    streaming=True, eos_token_id=-1 if self.eos is None else self.eos)  # fmt: skip
            while len(done) < len(requests):
                if should_stop() or (time_limit is not None and time.perf_counter() - t0 > time_limit):
                    st.stopped = True
                    break
                result = manager.get_result(timeout=0.5)
                if result is None:
                    if not manager.is_running():
                        break
                    continue
                st.step_times.append(time.perf_counter())
                progress[result.request_id] = list(result.generated_tokens)
                if result.is_finished() and result.request_id not in done:
                    toks = progress[result.request_id]
                    said_eos = self.eos is not None and bool(toks) and toks[-1] == self.eos
                    kept = toks[:-1] if said_eos else toks
                    done[result.request_id] = Completion(result.request_id, kept, said_eos, len(toks))
                    if on_complete:
                        on_complete(done[result.request_id])
        finally:
            manager.stop(block=True, timeout=30)
        st.seconds = time.perf_counter() - t0
        st.generated_tokens = sum(min(len(t), caps[k]) for k, t in progress.items())
        st.completed = len(done)
        st.unfinished = len(requests) - len(done)
        st.peak_memory_bytes = torch.cuda.max_memory_allocated() if self.model.device.type == "cuda" else 0
        return [done[r.key] for r in requests if r.key in done]
