"""Generation benchmark: the engine (`r1ft.evaluation.engine`) against transformers' generation paths, on one
card, in one invocation, each variant in its own process with a timeout (one that fails or hangs costs
only itself).

    scripts/bench-generate [--variants check,engine,engine_sampled,hf64,hf_mem,hf_static,hf_cb]
                           [--requests 512] [--max-new-tokens 16384] [--baseline-seconds 60] [--out PATH]

The model is the full-size DeepSeek-R1-Distill-Qwen-1.5B shape with random bf16 weights (its speed and
memory are the real model's), its lm_head scaled by PEAK_SCALE so the next-token distribution is as peaked
as a trained model's (with the init's flat logits every sampled row's nucleus would span most of the
vocabulary); the tokenizer is the tiny one (`r1ft.model.tiny`). EOS is disabled: each request generates exactly
its drawn length, from the R1-distill length model (`r1ft.bench.answer_lengths`, mean about 4.2k at a
16,384 cap, heavy tail), over prompts rendered from the real SciBench problems (k consecutive requests per
problem, seeds differing, as the evaluation samples k answers). Greedy and sampled (T 0.6, top_p 0.95).

Definitions (also in the JSON):
- tokens/s: generated tokens (each request's own, up to its length) over the variant's wall time after the
  model is built (cache allocation, warm-up, graph capture and compilation included).
- requests/s: completed requests over the same time.
- peak: `torch.cuda.max_memory_allocated` over the run (weights included).
- The `hf*` baselines run time-bounded (`--baseline-seconds`; hf_static 60 s more, for its compilation):
  a fixed batch of `generate` waits for its longest row, and its dynamic cache grows by concatenation, so
  a full run of the length mix would take too long. Their projected figure is the whole request set's
  rate from the measured decode steps: step time fitted as a + b x (step index) over the first batch's
  steps, summed over every batch's longest row (a time-bounded prefix alone would flatter them: early
  steps are cheap and every row still useful).
- The engine's projected figure simulates its own schedule (slots, refill rule) on the default
  evaluation's request count with lengths from the length model, each step timed by a + b x rows fitted
  to the measured steps, prefill at the measured rate: a short benchmark overweights its tail.
- projected evaluation: the default evaluation's tokens (`--problems` x `--k` x `--models` answers at the
  length model's mean under the cap) over the projected tokens/s (else the measured), plus each model's
  setup (the engine's cache allocation and warm-up; the baselines' first call).
- `check` (GPU): the Triton kernel against the torch reference (fp32, bf16), greedy equality of the engine
  with HF `generate` on the full-size shape in fp32, and the first divergence in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from r1ft.bench import answer_lengths, generation_worker
from r1ft.bench.generation_variants import BASELINE, VARIANTS, Variant

REPO = Path(__file__).resolve().parents[2]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--variants", default="check,engine,engine_sampled,hf64,hf_mem,hf_static,hf_cb")
    p.add_argument("--requests", type=int, default=512, help="requests per engine run")
    p.add_argument("--max-new-tokens", type=int, default=16_384, help="the length cap")
    p.add_argument("--baseline-seconds", type=float, default=60.0, help="time bound of each hf* baseline")
    p.add_argument(
        "--problems", type=int, default=350, help="default evaluation: problems per model (150 + 150 + 50)"
    )
    p.add_argument("--k", type=int, default=4, help="default evaluation: samples per problem")
    p.add_argument("--models", type=int, default=2, help="default evaluation: models scored")
    p.add_argument(
        "--scibench", type=Path, default=None, help="SciBench folder (default ../shared/data/scibench)"
    )
    p.add_argument("--timeout", type=int, default=240, help="seconds allowed per variant")
    p.add_argument("--budget", type=int, default=0, help="seconds for all variants (the rest are skipped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="the tiny model on CPU (tests the benchmark itself)")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default $OUT/bench-generate.json)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return worker(args.worker)
    known = {v.name: v for v in VARIANTS}
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"bench-generate: unknown variant(s) {unknown}; choose from {sorted(known)}")
    scibench = args.scibench or REPO.parent / "shared" / "data" / "scibench"
    if not args.tiny and not any(scibench.glob("*.json")):
        raise SystemExit(f"bench-generate: no SciBench files in {scibench}: pass --scibench DIR")
    out = args.out or Path(os.environ.get("OUT", REPO / "work")) / "bench-generate.json"
    work = out.parent / "bench-generate"
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget if args.budget else float("inf")
    results = []
    for name in names:
        left = deadline - time.monotonic()
        if left < 30:
            results.append(
                {"name": name, "label": known[name].label, "error": "skipped: the --budget ran out"}
            )
            continue
        print(f"bench-generate: {name} ({known[name].label}) ...", flush=True)
        spec = {"variant": asdict(known[name]), **vars(args), "scibench": str(scibench), "out": None,
                "worker": None, "timeout": min(args.timeout, left), "result": str(work / f"{name}.json")}  # fmt: skip
        results.append(run_variant(spec, work))
        print(f"bench-generate: {name}: {results[-1].get('error') or brief(results[-1])}", flush=True)
    report = build_report(results, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(render(report))
    print(f"JSON: {out}")
    return 1 if any(r.get("error") for r in results) or report.get("checks_passed") is False else 0


def run_variant(spec: dict, work: Path) -> dict[str, Any]:
    """One variant in a child process, bounded by spec['timeout']; its result or an error."""
    name = spec["variant"]["name"]
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec, default=str))
    result = Path(spec["result"])
    result.unlink(missing_ok=True)
    log = work / f"{name}.log"
    cmd = [sys.executable, "-m", "r1ft.bench.generation", "--worker", str(spec_path)]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    try:
        with log.open("w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=spec["timeout"],
                                  env={**os.environ, "PYTHONPATH": path}, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {
            "name": name,
            "label": spec["variant"]["label"],
            "error": f"timed out after {spec['timeout']:.0f} s",
        }
    if proc.returncode != 0 or not result.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return {
            "name": name,
            "label": spec["variant"]["label"],
            "error": f"exit {proc.returncode}: " + " | ".join(tail),
        }
    return json.loads(result.read_text())


def brief(r: dict) -> str:
    if r.get("kind") == "check":
        return "passed" if r.get("passed") else "FAILED"
    return (
        f"{r['tokens_per_s']:.0f} tokens/s, {r['completed']}/{r['requests']} requests in {r['seconds']:.0f} s"
    )


# --- the report ---------------------------------------------------------------------------------------------


def eval_tokens(args, cap: int) -> float:

    return args.problems * args.k * args.models * answer_lengths.load().mean(cap)


def build_report(results: list[dict], args) -> dict[str, Any]:
    cap = 64 if args.tiny else args.max_new_tokens
    tokens = eval_tokens(args, cap)
    base = next((r for r in results if r.get("name") == BASELINE and not r.get("error")), None)
    base_rate = base and (base.get("projected_tokens_per_s") or base["tokens_per_s"])
    for r in results:
        if r.get("error") or r.get("kind") == "check":
            continue
        rate = r.get("projected_tokens_per_s") or r["tokens_per_s"]
        r["ratio"] = rate / base_rate if base_rate else None
        r["projected_eval_s"] = tokens / rate + args.models * r.get("setup_s", 0.0) if rate else None
    checks = [r for r in results if r.get("kind") == "check" and not r.get("error")]
    gpu = next((r["gpu"] for r in results if r.get("gpu")), "?")
    return {
        "gpu": gpu,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "default_evaluation": {
            "problems": args.problems,
            "k": args.k,
            "models": args.models,
            "max_new_tokens": cap,
            "tokens": tokens,
        },
        "results": results,
        "checks_passed": all(c["passed"] for c in checks) if checks else None,
    }


def render(report: dict) -> str:
    ev = report["default_evaluation"]
    lines = [
        f"Generation benchmark on {report['gpu']}, {report['date']}: `{report['command']}`",
        f"Default evaluation projected: {ev['problems']} problems x {ev['k']} samples x {ev['models']} models, "
        f"{ev['tokens'] / 1e6:.1f}M tokens at up to {ev['max_new_tokens']} new tokens",
        "",
        "| variant | generated tokens/s | vs hf64 | requests/s | peak GiB | slots / batch | projected eval | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if r.get("kind") == "check":
            lines.insert(3, "GPU checks: " + r["summary"])
            continue
        if r.get("error"):
            lines.append(f"| {r['name']}: {r['label']} | {r['error']} | | | | | | |")
            continue
        rate = r["tokens_per_s"]
        shown = f"{rate:,.0f}" + (
            f" (projected {r['projected_tokens_per_s']:,.0f})" if r.get("projected_tokens_per_s") else ""
        )
        ratio = f"{r['ratio']:.1f}x" if r.get("ratio") else "n/a"
        proj = f"{r['projected_eval_s'] / 60:.1f} min" if r.get("projected_eval_s") else "n/a"
        lines.append(f"| {r['name']}: {r['label']} | {shown} | {ratio} | {r['requests_per_s']:.2f} | "
                     f"{r['peak_gib']:.1f} | {r['slots']} | {proj} | {r.get('note', '')} |")  # fmt: skip
    return "\n".join(lines)


# --- the worker (one variant, in its own process) -------------------------------------------------------------


def worker(spec_path: Path) -> int:
    spec = json.loads(Path(spec_path).read_text())
    v = Variant(**spec["variant"])

    result = generation_worker.run(v, spec)
    Path(spec["result"]).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
