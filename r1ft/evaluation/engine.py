"""The generation engine: continuous batching over a KV cache of per-slot rows, on a loaded HF Qwen2 model.

    engine = Engine(model, eos_id=tokenizer.eos_token_id)
    completions = engine.generate([Request("q1/0", ids, seed=1), ...], Sampling(0.6, 0.95, 16384),
                                  should_stop=stop_flag.is_set, on_complete=print)

- **Cache.** At the first `generate` (and again only when a later call needs longer rows or more slots),
  the KV cache is sized from the card's free memory: rows of `row_len` = longest prompt + max_new_tokens
  (rounded up to 256), as many slots as fit (`plan_cache`), so no sequence can run out of room. An
  out-of-memory while allocating or warming up (a prefill of the largest chunk, the largest decode graph)
  retries with 3/4 of the slots; `stats.oom_fallbacks` and the log say so.
- **Scheduling.** Requests wait in order; free slots are refilled (a batched prefill, SDPA causal) as soon
  as 1/16 of the slots are free (or the queue's rest fits), so a batch never waits for its longest row.
  Every decode step advances every active row by one token.
- **Decode step.** The compact Qwen2 forward of `r1ft.evaluation.decode_model` with the Triton split-K
  decode attention, sampling included, captured as a CUDA graph per batch-size bucket (rows padded up
  to the bucket point at a scratch slot); on CPU the same math runs eagerly with the torch reference.
- **Sampling.** `r1ft.evaluation.sampling`: greedy (temperature 0), or temperature + exact top-p with
  noise keyed by (request seed, step, token id): a request's output does not depend on its batch-mates.
- **Stopping.** `should_stop()` is checked between decode steps (and prefill chunks). When it returns
  True, generation ends at once: the completions returned are those that had finished (EOS or their
  length cap); requests still running or never started are left out (`stats.stopped`, `stats.unfinished`).

Completions come back in request order. `finished` means the output ended with EOS (not included in
`token_ids`); `new_tokens` counts the generated tokens including that EOS.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

from r1ft.evaluation import decode_attention
from r1ft.evaluation import sampling as draw
from r1ft.evaluation.decode_model import Qwen2Runner
from r1ft.evaluation.decode_split import Workspace
from r1ft.evaluation.generation_types import Completion, EngineStats, Request, Sampling
from r1ft.evaluation.kv_cache import (
    GIB,
    MAX_SLOTS,
    MEMORY_FRACTION,
    PREFILL_TOKENS,
    CachePlan,
    buckets,
    plan_cache,
    row_length,
)

log = logging.getLogger(__name__)

REFILL_FRACTION = 16  # refill once 1/16 of the slots are free
OOM_SHRINK = 0.75


class Engine:
    """Continuous batching over `model` (a loaded HF Qwen2ForCausalLM: bf16 on CUDA, fp32 on CPU)."""

    def __init__(
        self,
        model,
        eos_id: int | None,
        *,
        max_slots: int = MAX_SLOTS,
        memory_fraction: float = MEMORY_FRACTION,
        use_graphs: bool | None = None,
        use_kernel: bool | None = None,
        free_memory: Callable[[], int] | None = None,
        record_steps: bool = False,
    ):
        self.runner = Qwen2Runner(model)
        self.eos = -1 if eos_id is None else int(eos_id)
        self.device = self.runner.device
        self.cuda = self.device.type == "cuda"
        # use_kernel=True on CPU: the Triton kernel under its interpreter (TRITON_INTERPRET=1; the tests)
        self.use_kernel = (
            (self.cuda and decode_attention.triton_available()) if use_kernel is None else use_kernel
        )
        # The torch reference reads `lens.max()` on the host: only the kernel can be captured.
        graphs = self.cuda and self.use_kernel
        self.use_graphs = graphs if use_graphs is None else use_graphs and graphs
        self.max_slots, self.memory_fraction = max_slots, memory_fraction
        self.record_steps = record_steps
        self._free_memory = free_memory or self._cuda_free_memory
        self.plan: CachePlan | None = None
        self.workspace = None
        self._graphs: dict[tuple, tuple] = {}
        self._pool = None
        self._memory_bound = False
        self._pinned: dict[int, object] = {}
        self.stats = EngineStats()
        self._oom: list[str] = []
        self._kernel_checked = False
        self.kernel_fallback = ""

    # --- the cache ------------------------------------------------------------------------------------

    def _cuda_free_memory(self) -> int:
        import torch

        if not self.cuda:
            return 8 * GIB  # CPU: the tiny test models; sizing is about GPU memory
        torch.cuda.empty_cache()
        return torch.cuda.mem_get_info(self.device)[0]

    def _release(self) -> None:
        import torch

        self._graphs.clear()
        self._pool = None
        self.workspace = None
        self.runner.release_cache()
        self.plan = None
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def prepare(self, row_len: int, wanted: int, sampler: Sampling) -> CachePlan:
        """A cache of rows of at least `row_len` tokens, up to `wanted` slots; warmed up (CUDA). Kept when
        the current one already serves; an OOM retries with fewer slots (recorded in `stats.oom_fallbacks`)."""
        import torch

        if self.plan and self.plan.row_len >= row_len and (self.plan.slots >= wanted or self._memory_bound):
            return self.plan
        self._release()
        fits = plan_cache(self._free_memory(), row_len, self.runner.shape,
                          self.runner.dtype.itemsize, wanted, self.max_slots, self.memory_fraction)  # fmt: skip
        slots = fits.slots
        self._memory_bound = fits.slots < wanted
        self._check_kernel_once()
        while True:
            try:
                self._allocate(
                    CachePlan(slots, row_len, fits.slot_bytes, fits.reserve_bytes, fits.free_bytes)
                )
                self._warm_up(sampler)
                break
            except torch.OutOfMemoryError as e:
                self._release()
                smaller = int(slots * OOM_SHRINK)
                note = f"out of memory with {slots} slots of {row_len} tokens ({str(e).splitlines()[0]}); retrying with {smaller}"
                log.warning("engine: %s", note)
                self._oom.append(note)
                if smaller < 1:
                    raise
                slots = smaller
        log.info("engine: KV cache of %d slots x %d tokens (%.1f GiB of %.1f GiB free)", self.plan.slots,
                 row_len, self.plan.slots * fits.slot_bytes / GIB, fits.free_bytes / GIB)  # fmt: skip
        return self.plan

    def _check_kernel_once(self) -> None:
        """On CUDA, the Triton kernel against the torch reference on one small case before the first use
        (a kernel that fails to build or computes wrong on this card must cost speed, never the evaluation):
        on failure, the reference attention without CUDA graphs (slower, same results), said in the log and
        in `stats.kernel_fallback`."""
        if not (self.cuda and self.use_kernel) or self._kernel_checked:
            return
        self._kernel_checked = True
        try:
            (check,) = decode_attention.check_kernel(str(self.device), str(self.runner.dtype).removeprefix("torch."),
                                                     cases=((3, 12, 2, 128, 700),))  # fmt: skip
            problem = "" if check.passed else f"error {check.max_abs_error:.3g} over {check.tolerance:g}"
        except Exception as e:  # Triton's compiler, a driver: anything
            problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if problem:
            note = (
                f"the Triton decode kernel failed its check ({problem}); using the torch reference attention"
            )
            log.warning("engine: %s", note)
            self.kernel_fallback = note
            self.use_kernel = self.use_graphs = False

    def _allocate(self, plan: CachePlan) -> None:
        s = self.runner.shape
        self.runner.allocate_cache(plan.slots, plan.row_len)
        if self.use_kernel:
            self.workspace = Workspace(plan.slots, s.q_heads, s.head_dim, plan.row_len, self.device)
        self.plan = plan

    def _warm_up(self, sampler: Sampling) -> None:
        """The largest prefill and decode step once (and the largest graph), so an OOM shows here."""
        import torch

        if not self.cuda:
            return
        rows = min(self.plan.slots, 16)
        length = min(PREFILL_TOKENS // rows, self.plan.row_len)
        ids = torch.zeros(rows, length, dtype=torch.long, device=self.device)
        lens = torch.full((rows,), length, dtype=torch.long, device=self.device)
        self.runner.prefill(ids, lens, torch.arange(rows, device=self.device))
        _, run = self._step_runner(self.plan.slots, sampler)
        run()
        torch.cuda.synchronize(self.device)

    # --- one decode step --------------------------------------------------------------------------------

    def pinned(self, bucket: int):
        """The host side of a bucket's input (pinned on CUDA, so the copy is asynchronous)."""
        import torch

        if bucket not in self._pinned:
            self._pinned[bucket] = torch.zeros(5, bucket, dtype=torch.long, pin_memory=self.cuda)
        return self._pinned[bucket]

    def _step_fn(self, sampler: Sampling):
        """The decode step as a function of its input [5, rows] (tokens, positions, slots, steps, seeds):
        returns [2, rows] (next token, nucleus covered) and the fp32 logits (sampled: for the full sort)."""
        import torch

        def step(inp):
            tokens, positions, slots, steps, seeds = inp
            lens = (positions + 1).to(torch.int32)
            logits = self.runner.decode(tokens, positions, slots, lens, self.workspace).float()
            if sampler.greedy:  # the logits stay a temporary of the graph (an output would pin its memory)
                return torch.stack([draw.greedy(logits), torch.ones_like(tokens)]), None
            chosen, covered = draw.nucleus(logits, sampler.temperature, sampler.top_p, seeds, steps)
            return torch.stack([chosen, covered.long()]), logits

        return step

    def _step_runner(self, bucket: int, sampler: Sampling):
        """(input buffer [5, bucket], run() -> (result, logits)) for this bucket: a replayed CUDA graph, or
        the eager step (CPU, graphs off, or a capture that ran out of memory)."""
        import torch

        key = (bucket, sampler.greedy, sampler.temperature, sampler.top_p)
        if key in self._graphs:
            return self._graphs[key]
        fn = self._step_fn(sampler)
        inp = torch.zeros(5, bucket, dtype=torch.long, device=self.device)
        inp[2] = self.plan.slots  # the scratch slot
        entry = (inp, lambda: fn(inp))
        if self.use_graphs and self.plan.slots >= bucket:
            try:
                entry = self._capture(fn, inp)
            except torch.OutOfMemoryError as e:
                if bucket == self.plan.slots:
                    raise  # the warm-up's capture: prepare() retries with fewer slots
                note = f"out of memory capturing the decode graph of {bucket} rows ({str(e).splitlines()[0]}); that bucket runs eagerly"
                log.warning("engine: %s", note)
                self.stats.oom_fallbacks.append(note)
                torch.cuda.empty_cache()
        self._graphs[key] = entry
        return entry

    def _capture(self, fn, inp):
        import torch

        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # compiles the Triton kernels, initializes cuBLAS outside the capture
                fn(inp)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = fn(inp)

        def replay():
            graph.replay()
            return out

        self.stats.graphs += 1
        return inp, replay

    # --- generation -------------------------------------------------------------------------------------

    def generate(
        self,
        requests: Sequence[Request],
        sampling: Sampling,
        should_stop: Callable[[], bool] = lambda: False,
        on_complete: Callable[[Completion], None] | None = None,
    ) -> list[Completion]:
        """Complete `requests` (see the module docstring); `self.stats` describes the call."""
        import torch

        t0 = time.perf_counter()
        self.stats = EngineStats(requests=len(requests))
        if not requests:
            return []
        for r in requests:
            if not r.prompt_ids:
                raise ValueError(f"request {r.key!r} has an empty prompt")
        caps = [min(sampling.max_new_tokens, r.max_new_tokens or sampling.max_new_tokens) for r in requests]
        row_len = row_length(max(len(r.prompt_ids) for r in requests), max(caps))
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        with torch.inference_mode():
            self._oom = []
            self.prepare(row_len, len(requests), sampling)
            self.stats.oom_fallbacks = list(self._oom) + self.stats.oom_fallbacks
            self.stats.kernel_fallback = self.kernel_fallback
            self.stats.setup_s = time.perf_counter() - t0
            run = _Run(self, requests, caps, sampling, on_complete)
            run.loop(should_stop)
        st = self.stats
        st.slots, st.row_len = self.plan.slots, self.plan.row_len
        st.cache_bytes = self.runner.kv.numel() * self.runner.kv.element_size()
        st.completed = sum(c is not None for c in run.results)
        st.unfinished = len(requests) - st.completed
        st.generated_tokens = run.generated
        st.prompt_tokens = sum(len(r.prompt_ids) for r in requests)
        st.peak_memory_bytes = torch.cuda.max_memory_allocated(self.device) if self.cuda else 0
        st.seconds = time.perf_counter() - t0
        return [c for c in run.results if c is not None]


class _Run:
    """The state of one `generate` call: the queue, each slot's request and counters, the results."""

    def __init__(self, engine: Engine, requests, caps, sampling: Sampling, on_complete):
        import numpy as np

        self.e, self.requests, self.caps, self.sampling = engine, requests, caps, sampling
        self.on_complete = on_complete
        slots = engine.plan.slots
        self.pending = deque(range(len(requests)))
        self.results: list[Completion | None] = [None] * len(requests)
        self.slot_req = np.full(slots, -1, dtype=np.int64)
        self.next_tok = np.zeros(slots, dtype=np.int64)
        self.pos = np.zeros(slots, dtype=np.int64)  # where next_tok goes in the row
        self.count = np.zeros(slots, dtype=np.int64)  # tokens generated so far
        self.seed = np.zeros(slots, dtype=np.int64)
        self.cap = np.zeros(slots, dtype=np.int64)
        self.tokens = np.zeros((slots, max(caps)), dtype=np.int32)
        self.generated = 0
        self.threshold = max(1, slots // REFILL_FRACTION)
        self._buckets = buckets(slots)

    def loop(self, should_stop) -> None:
        import numpy as np

        while True:
            if should_stop():
                self.e.stats.stopped = True
                return
            free = np.flatnonzero(self.slot_req < 0)
            active = len(self.slot_req) - len(free)
            if self.pending and (active == 0 or len(free) >= min(self.threshold, len(self.pending))):
                self._admit(free, should_stop)
                continue
            if active == 0:
                return
            self._decode(np.flatnonzero(self.slot_req >= 0))

    # --- admission ---------------------------------------------------------------------------------------

    def _admit(self, free, should_stop) -> None:
        """Prefill as many waiting requests as there are free slots, in chunks of PREFILL_TOKENS."""
        t0 = time.perf_counter()
        chosen = [self.pending.popleft() for _ in range(min(len(free), len(self.pending)))]
        chunk: list[int] = []
        longest = 0
        for i, slot in zip(chosen, free, strict=False):
            n = len(self.requests[i].prompt_ids)
            if chunk and (len(chunk) + 1) * max(longest, n) > PREFILL_TOKENS:
                self._prefill(chunk)
                chunk, longest = [], 0
                if should_stop():
                    self.pending.extendleft(reversed(chosen[chosen.index(i) :]))
                    break
            self.slot_req[slot] = i
            chunk.append(int(slot))
            longest = max(longest, n)
        else:
            self._prefill(chunk)
        self.e.stats.prefill_s += time.perf_counter() - t0

    def _prefill(self, slots: list[int]) -> None:
        import torch

        if not slots:
            return
        dev = self.e.device
        prompts = [self.requests[self.slot_req[s]].prompt_ids for s in slots]
        longest = max(len(p) for p in prompts)
        ids = torch.tensor([p + [0] * (longest - len(p)) for p in prompts], dtype=torch.long, device=dev)
        lens = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=dev)
        logits = self.e.runner.prefill(ids, lens, torch.tensor(slots, device=dev)).float()
        for s, p in zip(slots, prompts, strict=True):
            r = self.slot_req[s]
            self.pos[s], self.count[s] = len(p), 0
            self.seed[s], self.cap[s] = self.requests[r].seed, self.caps[r]
        zeros = torch.zeros(len(slots), dtype=torch.long, device=dev)
        seeds = torch.tensor(self.seed[slots], device=dev)
        chosen = self._choose(logits, seeds, zeros)
        self._record(slots, chosen, advance=False)

    def _choose(self, logits, seeds, steps):
        """Next tokens (host ints) from fp32 logits [rows, vocab]."""
        s = self.sampling
        if s.greedy:
            return draw.greedy(logits).tolist()
        chosen, covered = draw.nucleus(logits, s.temperature, s.top_p, seeds, steps)
        return self._full_sort(chosen.tolist(), covered.tolist(), logits, seeds, steps)

    def _full_sort(self, chosen: list[int], covered: list, logits, seeds, steps) -> list[int]:
        """Rows whose top-k missed part of the nucleus, sampled again over the whole sorted vocabulary."""
        import torch

        missed = [i for i, ok in enumerate(covered) if not ok]
        if missed:
            idx = torch.tensor(missed, device=logits.device)
            s = self.sampling
            again = draw.full_sort(logits[idx], s.temperature, s.top_p, seeds[idx], steps[idx]).tolist()
            for i, t in zip(missed, again, strict=True):
                chosen[i] = t
            self.e.stats.full_sort_rows += len(missed)
        return chosen

    # --- decoding ----------------------------------------------------------------------------------------

    def _decode(self, rows) -> None:
        import bisect

        n = len(rows)
        bucket = self._buckets[bisect.bisect_left(self._buckets, n)]
        inp, run = self.e._step_runner(bucket, self.sampling)
        host = self.e.pinned(bucket)
        h = host.numpy()
        h[:, n:] = 0
        h[2, n:] = self.e.plan.slots  # padding rows: the scratch slot
        h[0, :n], h[1, :n], h[2, :n] = self.next_tok[rows], self.pos[rows], rows
        h[3, :n], h[4, :n] = self.count[rows], self.seed[rows]
        t0 = time.perf_counter()
        # non-blocking: the host buffer is written again only after this step's results are read
        inp.copy_(host, non_blocking=True)
        result, logits = run()
        out = result[:, :n].tolist()
        if self.e.record_steps:
            self.e.stats.step_log.append((n, time.perf_counter() - t0))
        chosen, covered = out[0], out[1]
        if not self.sampling.greedy and not all(covered):
            chosen = self._full_sort(chosen, covered, logits[:n], inp[4, :n], inp[3, :n])
        self.e.stats.decode_steps += 1
        self._record(rows, chosen, advance=True)

    def _record(self, slots, chosen: list[int], advance: bool) -> None:
        """Append each slot's new token; finish the rows that said EOS or reached their cap. `advance`: the
        input token was written at `pos` (a decode step), so the new one goes one further."""
        import numpy as np

        slots = np.asarray(slots, dtype=np.int64)
        toks = np.asarray(chosen, dtype=np.int64)
        eos = toks == self.e.eos
        self.tokens[slots, self.count[slots]] = toks
        self.count[slots] += 1
        self.generated += len(slots)
        done = eos | (self.count[slots] >= self.cap[slots])
        keep = slots[~done]
        self.next_tok[keep] = toks[~done]
        if advance:
            self.pos[keep] += 1
        for s, said_eos in zip(slots[done], eos[done], strict=True):
            self._finish(int(s), bool(said_eos))

    def _finish(self, slot: int, said_eos: bool) -> None:
        r = int(self.slot_req[slot])
        n = int(self.count[slot])
        ids = self.tokens[slot, : n - 1 if said_eos else n].tolist()
        done = Completion(self.requests[r].key, ids, said_eos, n)
        self.results[r] = done
        self.slot_req[slot] = -1
        if self.on_complete is not None:
            self.on_complete(done)
