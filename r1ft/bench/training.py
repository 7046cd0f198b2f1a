"""Training-speed benchmark: the original recipe against r1ft's 4-bit and bf16 paths, on one card, in one run.

`scripts/bench` (or `r1ft bench`) builds the full-size model from the real config with random weights,
draws sequences whose lengths follow the MathCodeInstruct-format sample (`r1ft.bench.lengths`), and trains
every variant on the same sequences in the same order, each in a fresh process (`r1ft.bench.worker`;
under torchrun for several GPUs). It prints the table (with the GPU name), the check
that r1ft's 4-bit path tracks the original recipe's losses, and writes everything as JSON.

Definitions (also in the JSON):
- s/step: median wall time of the timed optimizer steps (CUDA synchronized at each step end), after the
  warm-up steps (compilation, allocator growth).
- tokens/s: real (non-pad) tokens of the timed steps over their total time, all GPUs together.
- peak: the largest `torch.cuda.max_memory_allocated` of any step (reset every step; rank 0).
- MFU: model FLOPs per second over the card's dense bf16 peak (`PEAK_TFLOPS`, per GPU). Model FLOPs of a
  sequence of n tokens, c of them with loss, for LoRA on frozen weights (no weight gradients):
  4*N_layers*n (forward 2*N*n + input gradients 2*N*n) + 6*N_lora*n (LoRA forward, input and weight
  gradients) + 4*V*H*c (LM head, scored on the loss tokens only) + 6*L*n^2*D (causal attention
  scores and values, forward 2*L*n^2*D, backward twice that; D = heads x head_dim). Recomputation
  (checkpointing, the LM head's backward) is not counted: it is cost, not work.
- projected full recipe: 3 epochs of 22,500 examples at the length table's mean tokens per example,
  divided by tokens/s.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from r1ft.bench import lengths as benchdata
from r1ft.bench.training_report import build_report, render_report, summary_line
from r1ft.bench.variants import (
    CHECK_STEPS,
    OTHER_STEPS,
    Variant,
    gpu_counts,
    multi_gpu_variants,
    single_gpu_variants,
    tiny_variant,
)
from r1ft.machine.gpu import query_gpus
from r1ft.model.tiny import build_tiny_base
from r1ft.settings import Settings
from r1ft.training.distributed import launch_command, use_one_gpu


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    return add_arguments(p)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options (shared by `scripts/bench` and `r1ft bench`)."""
    p.add_argument("--variants", default="", help="comma list of variant names (default: all)")
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help=f"optimizer steps of every variant (default: {CHECK_STEPS} for a and b, {OTHER_STEPS} for the others)",
    )
    p.add_argument("--warmup", type=int, default=0, help="untimed first steps (default: a third, at most 5)")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON results file (default WORK_DIR/bench/bench.json)"
    )
    p.add_argument(
        "--gpus",
        default="1",
        help="scaling run on this many GPUs, or several counts such as 2,4 (the 1-GPU baseline included)",
    )
    p.add_argument("--tiny", action="store_true", help="the tiny model on CPU (tests the benchmark itself)")
    p.add_argument(
        "--profile",
        default="",
        help="variant to profile: its last 4 steps, untimed, 2 under cProfile and 2 under torch.profiler",
    )
    p.add_argument("--timeout", type=int, default=480, help="seconds allowed per variant")
    p.add_argument("--budget", type=int, default=0, help="seconds for all variants (the rest are skipped)")
    return p  # fmt: skip


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Run the chosen variants and print the tables; 0 when every variant ran (and the check passed)."""
    opts = _options(args)
    work = Path(settings.work_dir).resolve() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    variants = choose_variants(opts)
    base = prepare_base(work, opts["tiny"], settings.seed)
    opts["base"] = str(base)
    gpu = _gpu_name(opts["tiny"])
    results = []
    deadline = time.monotonic() + opts["budget"] if opts["budget"] else math.inf
    for v in variants:
        left = deadline - time.monotonic()
        if left < 30:
            results.append({"name": v.name, "error": "skipped: the --budget ran out"})
            continue
        print(f"bench: {v.name} ({v.label}) ...", flush=True)
        results.append(run_one(v, work, base, settings, {**opts, "timeout": min(opts["timeout"], left)}))
        print(f"bench: {v.name}: {results[-1].get('error') or summary_line(results[-1])}", flush=True)
    report = build_report(results, variants, opts, gpu, settings)
    out = opts["out"] or work / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(render_report(report))
    print(f"JSON: {out}")
    failed = [r["name"] for r in results if r.get("error")]
    return 1 if failed or report["check"].get("passed") is False else 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    tiny = bool(getattr(args, "tiny", False))
    steps = getattr(args, "steps", 0) or (4 if tiny else 0)
    return {
        "variants": [v for v in (getattr(args, "variants", "") or "").split(",") if v],
        "steps": steps,
        "warmup": getattr(args, "warmup", 0),
        "out": getattr(args, "out", None),
        "gpus": [n for n in gpu_counts(getattr(args, "gpus", "1") or "1") if n > 1],
        "tiny": tiny,
        "profile": getattr(args, "profile", "") or "",
        "timeout": getattr(args, "timeout", 480) or 480,
        "budget": getattr(args, "budget", 0) or 0,
        "command": " ".join(sys.argv),
    }


def choose_variants(opts: dict) -> list[Variant]:
    pool = multi_gpu_variants(opts["gpus"]) if opts["gpus"] else single_gpu_variants()
    if opts["variants"]:  # with --gpus, single-GPU variants may be named too (a: ratios to the original)
        known = {v.name: v for v in single_gpu_variants() + pool}
        unknown = [n for n in opts["variants"] if n not in known]
        if unknown:
            raise SystemExit(f"bench: unknown variant(s) {unknown}; choose from {sorted(known)}")
        pool = [known[n] for n in opts["variants"]]
    if opts["tiny"]:
        pool = [tiny_variant(v) for v in pool]
    return [Variant(**{**asdict(v), "profile": v.name == opts["profile"]}) for v in pool]


def prepare_base(work: Path, tiny: bool, seed: int) -> Path:
    """The base model directory: the tiny model, or the full-size random model (built once, in a child)."""
    if tiny:
        return build_tiny_base(work / "tiny-base", seed=seed)
    base = work / "base-random"
    if not (base / "config.json").is_file():
        spec = work / "build.json"
        spec.write_text(json.dumps({"build_base": True, "base": str(base), "seed": seed}))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "r1ft.bench.worker", str(spec)], check=True)
        print(f"bench: built the full-size random model in {time.perf_counter() - t0:.0f} s", flush=True)
    return base


def sequences(v: Variant, steps: int, tiny: bool, vocab: int, max_len: int, seed: int) -> list[dict]:
    """The variant's sequences: a prefix of one seeded draw, so every variant sees the same ones in order."""

    per_step = 16 * (v.gpus if v.env.get("R1FT_GLOBAL_BATCH") else 1)
    n = steps * per_step
    scale, cap = (1 / 8, 256) if tiny else (1.0, max_len)
    if v.data == "worst":
        return benchdata.worst_case_sequences(n, cap, vocab, seed)
    draw = benchdata.draw_lengths(benchdata.load_lengths(), n, seed, max_len, scale)
    return benchdata.make_sequences(draw, vocab, seed)


def run_one(v: Variant, work: Path, base: Path, settings: Settings, opts: dict) -> dict[str, Any]:
    """Write the variant's spec and data, run its worker process(es), return its result or an error."""
    steps = v.steps or opts["steps"] or (CHECK_STEPS if v.name in ("a", "b") else OTHER_STEPS)
    vdir = work / v.name
    vdir.mkdir(parents=True, exist_ok=True)
    config = json.loads((base / "config.json").read_text())
    rows = sequences(v, steps, opts["tiny"], config["vocab_size"], settings.max_seq_len, settings.seed)
    (vdir / "data.json").write_text(json.dumps(rows))
    result_path = vdir / "result.json"
    result_path.unlink(missing_ok=True)
    warmup = warmup_steps(steps, opts["warmup"])
    spec = {
        "name": v.name,
        "recipe": v.recipe,
        "env": v.env,
        "base": str(base),
        "data": str(vdir / "data.json"),
        "work_dir": str(vdir),
        "steps": steps,
        "seed": settings.seed,
        "card_gb": v.card_gb,
        "result": str(result_path),
        # the last four, left out of the timing: two under cProfile, two under torch.profiler
        "profile_steps": [steps - 4, steps] if v.profile else None,
    }
    (vdir / "spec.json").write_text(json.dumps(spec, indent=1))
    t0 = time.perf_counter()
    code = run_logged(
        worker_command(v.gpus, vdir / "spec.json"),
        vdir / "log.txt",
        opts["timeout"],
        worker_env(v.gpus, v.env),
    )
    if code != 0 or not result_path.is_file():
        tail = log_tail((vdir / "log.txt").read_text(errors="replace"))
        what = f"timed out after {opts['timeout']:.0f} s" if code is None else f"exit {code}"
        return {"name": v.name, "error": f"{what}: " + " | ".join(tail)}
    result = json.loads(result_path.read_text())
    result.update(wall_s=round(time.perf_counter() - t0, 1), warmup=warmup, steps=steps)
    result["seq_lengths"] = [(sum(1 for x in r["labels"] if x != -100), len(r["input_ids"])) for r in rows]
    return result


def log_tail(text: str, lines: int = 15) -> list[str]:
    """The last lines of a worker's log, without progress bars and warnings' source lines."""
    keep = [
        ln.rsplit("\r", 1)[-1]
        for ln in text.strip().splitlines()
        if "it/s]" not in ln and "s/it]" not in ln and not ln.startswith("  warnings.warn")
    ]
    return [ln for ln in keep if ln.strip()][-lines:]


def worker_env(gpus: int, variant_env: dict[str, str] | None = None) -> dict[str, str]:
    """A single-process variant sees one GPU (with several, Trainer would wrap DataParallel, which TRL
    refuses); torchrun gives each of its workers its own. A variant's library switches (its variables
    other than R1FT_ settings, such as TORCHINDUCTOR_CPP_WRAPPER) go into the worker's environment."""
    import os

    env = dict(os.environ)
    env.update({k: v for k, v in (variant_env or {}).items() if not k.startswith("R1FT_")})
    if gpus <= 1:
        use_one_gpu(env)
    return env


def run_logged(
    cmd: list[str], log_path: Path, timeout: float, env: dict[str, str] | None = None
) -> int | None:
    """Run `cmd` in its own process group with its output in `log_path`; on timeout end that group
    (torchrun and its workers) and return None."""
    import os
    import signal

    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def worker_command(gpus: int, spec: Path) -> list[str]:
    if gpus <= 1:
        return [sys.executable, "-m", "r1ft.bench.worker", str(spec)]

    return launch_command(gpus, [str(spec)], module="r1ft.bench.worker")


def warmup_steps(steps: int, asked: int) -> int:
    return asked if asked else max(1, min(5, steps // 3))


def _gpu_name(tiny: bool) -> str:
    if tiny:
        return "cpu (tiny model)"

    gpus = query_gpus()
    return f"{gpus[0][0]} ({gpus[0][1]:.0f} GB) x{len(gpus)}" if gpus else "no GPU found"
