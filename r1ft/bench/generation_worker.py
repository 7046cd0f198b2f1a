"""One variant of the generation benchmark (`r1ft.bench.generation`), run in its own process: builds the
model, the prompts and the per-request lengths, runs the variant, returns its result as a dict."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from r1ft.bench import answer_lengths
from r1ft.bench.generation_variants import PEAK_SCALE, SAMPLED, Variant
from r1ft.chat import prompt_ids, user_message
from r1ft.evaluation import hf_engines
from r1ft.evaluation.decode_attention import check_kernel
from r1ft.evaluation.decode_model import shape_of
from r1ft.evaluation.engine import REFILL_FRACTION, Engine, Request, Sampling
from r1ft.evaluation.protocol import THREE_PROMPTS
from r1ft.files import GIB
from r1ft.model.tiny import base_config, build_tiny_base, build_tokenizer
from r1ft.tasks.scibench import user_turn

TINY_CAP = 64  # --tiny: lengths drawn under this cap
CHECK_PROMPTS = 3


def build_model(tiny: bool, dtype_name: str, seed: int):
    """The full-size random model on CUDA (or the tiny one on CPU), lm_head scaled by PEAK_SCALE."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    dtype = getattr(torch, dtype_name)
    if tiny:
        model = AutoModelForCausalLM.from_pretrained(
            build_tiny_base(Path("/tmp/r1ft-bench-generate-tiny")), dtype=dtype
        )
    else:
        config = Qwen2Config(
            **{k: v for k, v in base_config().items() if k not in ("architectures", "model_type")}
        )
        with torch.device("cuda"):
            model = Qwen2ForCausalLM(config).to(dtype)
    with torch.no_grad():
        model.lm_head.weight.mul_(PEAK_SCALE)
    model.generation_config.eos_token_id = None  # EOS disabled: every request runs to its drawn length
    return model.eval()


def prompts(spec: dict, tokenizer) -> list[list[int]]:
    """Token ids of the rendered SciBench problems (the three test prompts in --tiny without data)."""

    folder = Path(spec["scibench"])
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if not path.stem.endswith("_sol"):
            records += json.loads(path.read_text(encoding="utf-8"))
    turns = [
        user_turn(str(r["problem_text"]).strip(), str(r.get("unit", "")).strip())
        for r in records
        if r.get("problem_text")
    ]
    if not turns:
        turns = [user_message(p) for p in THREE_PROMPTS]
    return [prompt_ids(tokenizer, t) for t in turns]


def requests(spec: dict, tokenizer, n: int):
    """`n` requests: k per problem in order, seed = index, length drawn from the R1 length model."""

    cap = TINY_CAP if spec["tiny"] else spec["max_new_tokens"]
    lengths = answer_lengths.load().draw(n, spec["seed"], cap)
    ps = prompts(spec, tokenizer)
    return [
        Request(f"r{i}", ps[(i // spec["k"]) % len(ps)], seed=i, max_new_tokens=lengths[i]) for i in range(n)
    ], cap


def sampling_for(v: Variant, cap: int):

    return Sampling(*SAMPLED, cap) if v.sampled else Sampling(0.0, 1.0, cap)


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def run(v: Variant, spec: dict) -> dict[str, Any]:
    import torch

    if v.kind == "check":
        return {**run_checks(spec), "gpu": gpu_name()}
    tokenizer = build_tokenizer()
    dtype = "float32" if spec["tiny"] else "bfloat16"
    t_build = time.perf_counter()
    model = build_model(spec["tiny"], dtype, spec["seed"])
    build_s = time.perf_counter() - t_build
    n = spec["requests"]
    reqs, cap = requests(spec, tokenizer, n)
    sampling = sampling_for(v, cap)
    deadline = time.monotonic() + max(10.0, spec["timeout"] - build_s - 30)  # report before the timeout
    limit = (spec["baseline_seconds"] + 60 * (v.kind == "hf_static")) if v.bounded else None
    note = ""
    if v.kind == "engine":
        eng = Engine(model, None, record_steps=True)
        out = eng.generate(reqs, sampling, should_stop=lambda: time.monotonic() > deadline)
        st = eng.stats
        slots, setup = st.slots, st.setup_s
        full = [dt for rows, dt in st.step_log if rows >= 0.9 * st.slots]
        note = f"full batches {sum(1 for _ in full)} steps at {st.slots * len(full) / max(sum(full), 1e-9):,.0f} tokens/s"
        if v.sampled:
            note += f"; nucleus by full sort on {st.full_sort_rows} of {st.generated_tokens} draws"
        if st.oom_fallbacks:
            note += "; OOM fallback: " + " / ".join(st.oom_fallbacks)
        if st.stopped:
            note += "; stopped at the time limit"
        projected = project_engine(st, spec, [len(r.prompt_ids) for r in reqs])
    else:
        eos, pad = None, tokenizer.eos_token_id
        if v.kind == "hf_cb":
            config = hf_engines.continuous_batching_config(num_blocks=32 if spec["tiny"] else None)
            eng = hf_engines.HFContinuous(model, eos, pad, config)
            slots = "paged"
        else:
            batch = v.batch or memory_batch(model, reqs, cap, static=v.kind == "hf_static")
            eng = hf_engines.HFGenerate(model, eos, pad, batch, static=v.kind == "hf_static")
            slots = batch
        out = eng.generate(reqs, sampling, should_stop=lambda: time.monotonic() > deadline, time_limit=limit)
        st = eng.stats
        setup = st.first_call_s
        cut = st.completed < n  # a full run's own rate needs no projection
        projected = project_batches(st, reqs, slots) if v.kind != "hf_cb" and cut else None
        note = f"time-bounded at {limit:.0f} s: {st.completed} of {n} requests done" if limit else ""
    return {
        "name": v.name,
        "label": v.label,
        "kind": v.kind,
        "gpu": gpu_name(),
        "requests": n,
        "completed": len(out),
        "generated_tokens": st.generated_tokens,
        "seconds": st.seconds,
        "tokens_per_s": st.generated_tokens / st.seconds if st.seconds else 0.0,
        "requests_per_s": len(out) / st.seconds if st.seconds else 0.0,
        "peak_gib": st.peak_memory_bytes / GIB,
        "slots": slots,
        "setup_s": setup,
        "build_s": build_s,
        "decode_steps": st.decode_steps,
        "projected_tokens_per_s": projected,
        "full_sort_rows": st.full_sort_rows,
        "oom_fallbacks": st.oom_fallbacks,
        "note": note,
        "torch": torch.__version__,
    }


def memory_batch(model, reqs, cap: int, static: bool) -> int:
    """A `generate` batch sized from the free memory: a static cache holds every row at full length; a
    dynamic one is concatenated per step (old and new copies: twice a row)."""
    import torch

    row = max(len(r.prompt_ids) for r in reqs) + cap
    per_row = row * shape_of(model.config).kv_bytes_per_token(model.dtype.itemsize) * (1 if static else 2)
    free = torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 8 * GIB
    return max(1, min(128 if static else 256, len(reqs), int(free * 0.75 // per_row)))


def project_batches(st, reqs, batch: int) -> float | None:
    """Generated tokens/s of the whole request set in fixed batches, from the measured steps: step time
    fitted as a + b x (step index within its batch), each batch running to its longest row."""
    times = st.step_times[: st.first_batch_steps or None]  # the first batch: step index = its position
    if len(times) < 20:
        return None
    dts = [b - a for a, b in itertools.pairwise(times[5:])]  # past the first (compiling) steps
    xs = list(range(6, 6 + len(dts)))
    mx, my = sum(xs) / len(xs), sum(dts) / len(dts)
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, dts, strict=True)) / var if var else 0.0
    b = max(0.0, b)
    a = my - b * mx
    total_s, total_tokens = 0.0, 0
    for i in range(0, len(reqs), batch):
        caps = [r.max_new_tokens for r in reqs[i : i + batch]]
        n = max(caps)
        total_s += a * n + b * n * n / 2
        total_tokens += sum(caps)
    return total_tokens / total_s if total_s > 0 else None


def project_engine(st, spec: dict, prompt_lens: list[int]) -> float | None:
    """Generated tokens/s of the engine on the default evaluation's request count (problems x k, one
    model), simulated: the engine's own schedule (its slots, the refill rule) over lengths drawn from the
    length model, each decode step timed by a + b x rows fitted to the measured steps, prefill at the
    measured prompt tokens/s. The measured run's tail (its last long rows at a small batch) weighs more
    in a short run than in the evaluation; the simulation gives the tail its real weight."""
    import numpy as np

    log = st.step_log
    if len(log) < 50:
        return None
    rows = np.array([r for r, _ in log], dtype=float)
    dts = np.array([dt for _, dt in log])
    b, a = np.polyfit(rows, dts, 1) if rows.std() > 0 else (0.0, float(dts.mean()))
    prefill_rate = st.prompt_tokens / st.prefill_s if st.prefill_s > 0 else float("inf")
    n = spec["problems"] * spec["k"]
    cap = TINY_CAP if spec["tiny"] else spec["max_new_tokens"]
    lengths = answer_lengths.load().draw(n, spec["seed"] + 7, cap)
    prompt = float(np.mean(prompt_lens))
    slots, threshold = st.slots, max(1, st.slots // REFILL_FRACTION)
    remaining = np.zeros(0, dtype=np.int64)
    queue, seconds = list(reversed(lengths)), 0.0
    while queue or remaining.size:
        free = slots - remaining.size
        if queue and (remaining.size == 0 or free >= min(threshold, len(queue))):
            admit = [queue.pop() for _ in range(min(free, len(queue)))]
            seconds += len(admit) * prompt / prefill_rate
            remaining = np.concatenate([remaining, np.array(admit, dtype=np.int64) - 1])  # prefill: 1 token
            remaining = remaining[remaining > 0]
            continue
        steps = int(remaining.min())  # to the next row's end
        seconds += steps * (a + b * remaining.size)
        remaining = remaining - steps
        remaining = remaining[remaining > 0]
    return sum(lengths) / seconds if seconds > 0 else None


# --- the GPU checks ---------------------------------------------------------------------------------------------


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
        None if len(a) == len(b) else min(len(a), len(b)),
    )


def greedy_pair(spec: dict, dtype: str, new_tokens: int) -> list[int | None]:
    """First divergence (None: equal) of the engine's greedy output from HF `generate`'s, per prompt."""
    import torch

    model = build_model(spec["tiny"], dtype, spec["seed"] + 1)
    ps = prompts(spec, build_tokenizer())[:CHECK_PROMPTS]
    refs = []
    for p in ps:
        with torch.inference_mode():
            ids = torch.tensor([p], device=model.device)
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, temperature=1.0, top_p=1.0,
                                 eos_token_id=None, pad_token_id=0)  # fmt: skip
        refs.append(out[0, len(p) :].tolist())
    eng = Engine(model, None, max_slots=2)  # three prompts through two slots: a refill
    got = eng.generate([Request(f"c{i}", p) for i, p in enumerate(ps)], Sampling(0.0, 1.0, new_tokens))
    del model, eng
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return [first_divergence(c.token_ids, r) for c, r in zip(got, refs, strict=True)]


def run_checks(spec: dict) -> dict[str, Any]:
    from dataclasses import asdict

    device = "cpu" if spec["tiny"] else "cuda"
    kernel = [] if spec["tiny"] else check_kernel(device, "float32") + check_kernel(device, "bfloat16")
    fp32 = greedy_pair(spec, "float32", 48)
    bf16 = [] if spec["tiny"] else greedy_pair(spec, "bfloat16", 256)
    passed = all(k.passed for k in kernel) and all(d is None for d in fp32)
    worst = max((k.max_abs_error / k.tolerance for k in kernel), default=0.0)
    summary = (
        f"kernel vs reference {'ok' if all(k.passed for k in kernel) else 'FAILED'} on {len(kernel)} cases "
        f"(worst error {worst:.2f} of tolerance); greedy fp32 = HF generate on {sum(d is None for d in fp32)} "
        f"of {len(fp32)} prompts (48 tokens); bf16 first divergence {bf16} (of 256 tokens; None = equal)"
    )
    return {"name": "check", "label": "GPU checks", "kind": "check", "passed": passed, "summary": summary,
            "kernel": [asdict(k) for k in kernel], "fp32_divergence": fp32, "bf16_divergence": bf16}  # fmt: skip
