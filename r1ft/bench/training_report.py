"""The training benchmark's measurements turned into its report: model FLOPs and MFU per variant, the loss
check of the 4-bit path against the original recipe, the ratios, and the table printed last."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from r1ft.bench import lengths as benchdata
from r1ft.bench.variants import (
    CHECK_STEPS,
    CHECK_TOLERANCE,
    FULL_EPOCHS,
    FULL_EXAMPLES,
    OTHER_STEPS,
    PEAK_TFLOPS,
    Variant,
)
from r1ft.files import GIB
from r1ft.recipe import model_shape
from r1ft.settings import Settings


def model_flops(config: dict, lora_r: int, seq: list[tuple[int, int]]) -> float:
    """Model FLOPs of one optimizer step over sequences given as (loss tokens, tokens); see the docstring."""

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


def summary_line(r: dict) -> str:
    w = r["warmup"]
    times = r["step_s"][w:]
    med = statistics.median(times) if times else float("nan")
    return f"median {med:.3f} s/step over {len(times)} steps (first {w}: {[round(t, 1) for t in r['step_s'][:w]]})"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "liger-kernel", "accelerate"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out
