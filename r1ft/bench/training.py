"""Training-speed benchmark: the original recipe against r1ft's 4-bit and bf16 paths, on one card, in one run.

`scripts/bench` (or `r1ft bench`) builds the full-size model from the real config with random weights,
draws sequences whose lengths follow the MathCodeInstruct-format sample (`r1ft.benchdata`), and trains
every variant on the same sequences in the same order, each in a fresh process (`r1ft.benchworker`;
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
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from r1ft.settings import Settings

FULL_EXAMPLES = 22_500  # train examples of the real mix (MathCodeInstruct 24,700 x 0.9 + SciBench)
FULL_EPOCHS = 3
CHECK_STEPS = 30  # a and b: the loss check's steps
OTHER_STEPS = 15  # the other variants: enough timed steps after the warm-up
CHECK_TOLERANCE = 0.02
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "4090": 165.2}
GIB = 2**30


@dataclass
class Variant:
    name: str
    label: str
    recipe: str = "r1ft"  # "original" or "r1ft"
    env: dict[str, str] = field(default_factory=dict)
    data: str = "typical"  # "typical" or "worst" (16 x max length)
    card_gb: float = 0.0  # r1ft as on a card of this size (0: the real card)
    gpus: int = 1
    steps: int = 0  # 0: the run's --steps
    profile: bool = False


def single_gpu_variants() -> list[Variant]:
    compiled = {"R1FT_TORCH_COMPILE": "true"}
    nf4, bf16 = {"R1FT_QUANT": "nf4", **compiled}, {"R1FT_QUANT": "none", **compiled}
    worst = {"data": "worst", "steps": 4}
    return [
        Variant("a", "original recipe: NF4, 2x8 padded, paged AdamW 8-bit, ckpt, SDPA", recipe="original"),
        Variant("b", "r1ft 4-bit: NF4, 16 padding-free, flex, compiled, adaptive ckpt", env=nf4),
        Variant("c", "r1ft bf16: 16 padding-free, flex, compiled, adaptive ckpt", env=bf16),
        Variant("c_eager", "c without torch.compile (Liger kernels instead)", env={**bf16, "R1FT_TORCH_COMPILE": "false"}),
        Variant("c_cpp", "c with Inductor's C++ wrapper (kernels launched from C++)", env={**bf16, "TORCHINDUCTOR_CPP_WRAPPER": "1"}),
        Variant("c_ckpt", "c with every layer checkpointed", env={**bf16, "R1FT_GRADIENT_CHECKPOINTING": "true"}),
        Variant("b_16g", "b as on a 16 GB card (12 GB budget)", env=nf4, card_gb=16.0),
        Variant("b_max16", "b as on a 16 GB card, 16 x 2048 tokens", env=nf4, card_gb=16.0, **worst),
        Variant("c_max", "c, 16 x 2048 tokens", env=bf16, **worst),
    ]  # fmt: skip


def multi_gpu_variants(counts: list[int]) -> list[Variant]:
    """The 1-GPU baseline, then strong and weak scaling on each GPU count."""
    bf16 = {"R1FT_QUANT": "none", "R1FT_TORCH_COMPILE": "true"}
    out = [Variant("c", "r1ft bf16, 1 GPU, 16 sequences per step", env=bf16)]
    for n in counts:
        weak = {**bf16, "R1FT_GLOBAL_BATCH": str(16 * n)}
        out.append(Variant(f"c_strong{n}", f"{n} GPUs, 16 sequences per step in all", env=bf16, gpus=n))
        out.append(Variant(f"c_weak{n}", f"{n} GPUs, 16 sequences per GPU", env=weak, gpus=n))
    return out


def gpu_counts(text: str) -> list[int]:
    """`--gpus` as a list: "2" or "2,4" (1 alone: the single-GPU variants)."""
    try:
        counts = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"bench: --gpus takes GPU counts such as 2 or 2,4, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise SystemExit(f"bench: --gpus takes GPU counts of 1 or more, not {text!r}")
    return sorted(set(counts))


def tiny_variant(v: Variant) -> Variant:
    """The same variant on the CPU tiny model: fp32, no compile, no 4-bit, SDPA, no LoRA dropout."""
    env = {**v.env, "R1FT_QUANT": "none", "R1FT_TORCH_COMPILE": "false", "R1FT_LORA_DROPOUT": "0"}
    env.pop("R1FT_GRADIENT_CHECKPOINTING", None)
    return Variant(**{**asdict(v), "env": env, "card_gb": 0.0})


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
        print(f"bench: {v.name}: {results[-1].get('error') or _brief(results[-1])}", flush=True)
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
        from r1ft.tiny import build_tiny_base

        return build_tiny_base(work / "tiny-base", seed=seed)
    base = work / "base-random"
    if not (base / "config.json").is_file():
        spec = work / "build.json"
        spec.write_text(json.dumps({"build_base": True, "base": str(base), "seed": seed}))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "r1ft.benchworker", str(spec)], check=True)
        print(f"bench: built the full-size random model in {time.perf_counter() - t0:.0f} s", flush=True)
    return base


def sequences(v: Variant, steps: int, tiny: bool, vocab: int, max_len: int, seed: int) -> list[dict]:
    """The variant's sequences: a prefix of one seeded draw, so every variant sees the same ones in order."""
    from r1ft import benchdata

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
        from r1ft.distributed import use_one_gpu

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
        return [sys.executable, "-m", "r1ft.benchworker", str(spec)]
    from r1ft.distributed import launch_command

    return launch_command(gpus, [str(spec)], module="r1ft.benchworker")


def warmup_steps(steps: int, asked: int) -> int:
    return asked if asked else max(1, min(5, steps // 3))


# --- measurements -> report ----------------------------------------------------------------------------


def model_flops(config: dict, lora_r: int, seq: list[tuple[int, int]]) -> float:
    """Model FLOPs of one optimizer step over sequences given as (loss tokens, tokens); see the docstring."""
    from r1ft.plan import model_shape

    shape = model_shape(config, lora_r)
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    d_attn = config["num_attention_heads"] * (config.get("head_dim") or h // config["num_attention_heads"])
    n_layers = shape.params - 2 * vocab * h  # the decoder layers' weights (embeddings and head excluded)
    total = 0.0
    for loss_tokens, n in seq:
        total += 4 * n_layers * n + 6 * shape.lora_params * n + 4 * vocab * h * loss_tokens
        total += 6 * layers * n * n * d_attn
    return total


def peak_tflops(gpu: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key.lower() in gpu.lower():
            return value
    return None


def summarize(result: dict, config: dict, lora_r: int, gpu: str, mean_tokens: float) -> dict[str, Any]:
    """s/step, tokens/s, peak, MFU and the projection of one variant's result."""
    w = result["warmup"]
    end = result["profiled_steps"][0] if result.get("profiled_steps") else len(result["step_s"])
    times, tokens = result["step_s"][w:end], result["step_tokens"][w:end]
    seqs = result["seq_lengths"]
    global_batch = len(seqs) // max(1, len(result["step_s"]))
    step_flops = [
        model_flops(config, lora_r, seqs[i * global_batch : (i + 1) * global_batch]) for i in range(w, end)
    ]
    total_s = sum(times)
    tokens_s = sum(tokens) / total_s if total_s else 0.0
    peak = peak_tflops(gpu)
    mfu = sum(step_flops) / total_s / (peak * 1e12 * result["processes"]) if peak and total_s else None
    full_tokens = FULL_EPOCHS * FULL_EXAMPLES * mean_tokens
    return {
        "s_per_step": statistics.median(times) if times else None,
        "tokens_per_s": tokens_s,
        "peak_gib": max(result["step_peak_bytes"]) / GIB if result.get("step_peak_bytes") else None,
        "mfu": mfu,
        "first_steps_s": result["step_s"][:w],
        "full_recipe_h": full_tokens / tokens_s / 3600 if tokens_s else None,
        "global_batch": global_batch,
    }


def loss_check(results: dict[str, dict], steps: int = CHECK_STEPS) -> dict[str, Any]:
    """Does r1ft's 4-bit path (b) track the original recipe's (a) losses within 2% over the first steps?"""
    a, b = results.get("a"), results.get("b")
    if not a or not b or a.get("error") or b.get("error"):
        return {"passed": None, "note": "needs variants a and b"}
    la, lb = a["losses"][:steps], b["losses"][:steps]
    n = min(len(la), len(lb))
    rel = [abs(x - y) / abs(x) for x, y in zip(la[:n], lb[:n], strict=True)]
    worst = max(rel) if rel else math.inf
    return {
        "steps": n,
        "max_rel_diff": worst,
        "tolerance": CHECK_TOLERANCE,
        "passed": n >= min(steps, len(la)) and worst <= CHECK_TOLERANCE,
        "a_losses": la[:n],
        "b_losses": lb[:n],
        "a_drop": (la[0] - la[n - 1]) if n else None,
    }


def build_report(
    results: list[dict], variants: list[Variant], opts: dict, gpu: str, settings: Settings
) -> dict:
    from r1ft import benchdata

    base_cfg = json.loads((Path(opts["base"]) / "config.json").read_text())
    mean_tokens = benchdata.mean_tokens(benchdata.load_lengths(), settings.max_seq_len)
    by_name = {r["name"]: r for r in results}
    rows = []
    for v in variants:
        r = by_name[v.name]
        row = {"name": v.name, "label": v.label, "gpus": v.gpus, "data": v.data, "card_gb": v.card_gb}
        if r.get("error"):
            row["error"] = r["error"]
        else:
            row.update(summarize(r, base_cfg, settings.lora_r, gpu, mean_tokens))
            row.update({k: r.get(k) for k in ("quant", "layout", "attn", "liger", "compiled", "checkpointing",
                                              "optim", "compile", "dtypes", "checkpointed_layers", "wall_s")})  # fmt: skip
        rows.append(row)
    _ratios(rows)
    return {
        "gpu": gpu,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": opts["command"],
        "versions": _versions(),
        "mean_tokens_per_example": mean_tokens,
        "full_recipe": {"epochs": FULL_EPOCHS, "examples": FULL_EXAMPLES},
        "steps": opts["steps"] or f"{CHECK_STEPS} (a, b), {OTHER_STEPS} (others)",
        "rows": rows,
        "check": loss_check(by_name),
        "profile": next((r.get("profile") for r in results if r.get("profile")), ""),
        "raw": results,
    }


def _ratios(rows: list[dict]) -> None:
    ref = next((r for r in rows if r["name"] in ("a",) and r.get("tokens_per_s")), None)
    one_gpu = next((r for r in rows if r["name"] == "c" and r.get("tokens_per_s")), None)
    for r in rows:
        if not r.get("tokens_per_s"):
            continue
        if ref is not None:
            r["x_original"] = r["tokens_per_s"] / ref["tokens_per_s"]
        if one_gpu is not None and r["gpus"] > 1:
            r["x_one_gpu"] = r["tokens_per_s"] / one_gpu["tokens_per_s"]


def render_report(report: dict) -> str:
    """The table (and the check) as printed last on stdout."""
    lines = [
        "",
        f"GPU: {report['gpu']}    date: {report['date']}    steps per variant: {report['steps']}",
        f"command: {report['command']}",
        f"versions: {report['versions']}",
        f"projection: {FULL_EPOCHS} epochs x {FULL_EXAMPLES:,} examples x {report['mean_tokens_per_example']:.0f} "
        "tokens (length table mean)",
        "",
        f"{'variant':<9} {'s/step':>7} {'tokens/s':>9} {'peak GiB':>8} {'MFU':>6} {'x (a)':>6} {'x 1 GPU':>7} "
        f"{'full run':>9}  description",
    ]
    for r in report["rows"]:
        if r.get("error"):
            lines.append(f"{r['name']:<9} FAILED: {r['error'][:300]}")
            continue
        lines.append(
            f"{r['name']:<9} {_f(r['s_per_step'], '.3f'):>7} {_f(r['tokens_per_s'], ',.0f'):>9} "
            f"{_f(r['peak_gib'], '.1f'):>8} {_pct(r['mfu']):>6} {_f(r.get('x_original'), '.1f'):>6} "
            f"{_f(r.get('x_one_gpu'), '.2f'):>7} {_hours(r['full_recipe_h']):>9}  {r['label']}"
        )
    c = report["check"]
    if c.get("passed") is None:
        lines.append(f"\nloss check (b vs a): not run ({c.get('note')})")
    else:
        lines.append(
            f"\nloss check, first {c['steps']} optimizer steps of b vs a (same seed, same data order): max relative "
            f"difference {c['max_rel_diff']:.2%} (tolerance {c['tolerance']:.0%}): "
            f"{'PASSED' if c['passed'] else 'FAILED'}; a's loss moved {c['a_drop']:+.3f} over them"
        )
    lines.append(f"GPU: {report['gpu']}")
    return "\n".join(lines)


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _hours(h) -> str:
    if h is None:
        return "-"
    minutes = round(h * 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _brief(r: dict) -> str:
    w = r["warmup"]
    times = r["step_s"][w:]
    med = statistics.median(times) if times else float("nan")
    return f"median {med:.3f} s/step over {len(times)} steps (first {w}: {[round(t, 1) for t in r['step_s'][:w]]})"


def _gpu_name(tiny: bool) -> str:
    if tiny:
        return "cpu (tiny model)"
    from r1ft.gpu_info import query_gpus

    gpus = query_gpus()
    return f"{gpus[0][0]} ({gpus[0][1]:.0f} GB) x{len(gpus)}" if gpus else "no GPU found"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "liger-kernel", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out
