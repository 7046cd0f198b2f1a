"""GPU benchmark of the evaluation stage on the full-size model shape with random weights.

A random-weight Qwen2 with DeepSeek-R1-Distill-Qwen-1.5B's exact config has the real model's speed and
memory; it never says EOS, so every batch runs to `max_new_tokens`: the worst case of static batching.
The tiny tokenizer stands in for the real one (ids it does not know decode to nothing).

    python scripts/bench_eval.py --scibench-dir ../shared/data/scibench --out /tmp/bench \\
        --eval-samples 64 --scibench-samples 64 --max-new-tokens 1024 --micro 64x512,128x512
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace


def build_full_size(dest: Path) -> Path:
    """The base model's exact config, random bf16 weights, the tiny tokenizer; saved to `dest`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1ft.model.tiny import base_config, build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        **{k: v for k, v in base_config().items() if k not in ("architectures", "model_type")}
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    del model
    return dest


def scibench_test(folder: Path) -> list[dict]:
    """SciBench's main (test) files as the data module hands them over (trimmed strings)."""
    from r1ft.chat import user_message

    records = []
    for path in sorted(folder.glob("*.json")):
        if path.stem.endswith("_sol"):
            continue
        for r in json.loads(path.read_text(encoding="utf-8")):
            r = {k: str(v).strip() for k, v in r.items()}
            records.append({**r, "problem": user_message(r["problem_text"], r["unit"])})
    return records


def eval_examples(n: int) -> list[dict]:
    """Stand-ins for the held-out split: short word problems with numeric golds."""
    from r1ft.chat import user_message

    return [
        {"id": f"bench-{i}", "source": "mathcodeinstruct", "gold": str(i * 7 + 3),
         "problem": user_message(f"A farmer has {i} rows of 7 apple trees and 3 more trees. How many trees?")}
        for i in range(n)
    ]  # fmt: skip


def launch_overhead_us(n: int = 2000) -> float:
    """Microseconds per tiny CUDA kernel launch (what a launch-bound decode step pays ~500 times)."""
    import torch

    x = torch.zeros(16, device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        x.add_(1)
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t0) / n


def micro(
    model_dir: Path, shapes: list[tuple[int, int]], problems: list[str], caches: list[str]
) -> list[dict]:
    """Wall time and generated tokens/s of generate() per (cache, batch, new tokens); each shape runs twice
    (the first run warms up, and compiles where the cache is static), the second is timed."""
    import torch

    from r1ft.evaluation.generate import generate, load_for_generation, release_memory

    model, tokenizer = load_for_generation(model_dir)
    rows = []
    for cache in caches:
        for batch, tokens in shapes:
            for attempt in ("first", "timed"):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                gens = generate(model, tokenizer, problems[:batch], tokens,
                                cache_implementation=None if cache == "dynamic" else cache)  # fmt: skip
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                n = sum(g.new_tokens for g in gens)
                peak = torch.cuda.max_memory_allocated() / 2**30
                rows.append({"cache": cache, "run": attempt, "batch": batch, "new_tokens": tokens, "seconds": dt,
                             "tokens_per_s": n / dt, "ms_per_step": 1000 * dt / tokens, "peak_gib": peak})  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    del model
    release_memory()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scibench-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--eval-samples", type=int, default=200)
    p.add_argument("--scibench-samples", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--budget", type=int, default=1200)
    p.add_argument(
        "--micro", default="", help="comma list of BATCHxTOKENS shapes to time, e.g. 64x512,128x512"
    )
    p.add_argument("--caches", default="dynamic", help="comma list of caches for --micro: dynamic,static")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--sdpa-cudnn", action="store_true", help="let SDPA pick cuDNN attention (off by default)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import r1ft.evaluation.generate

    r1ft.evaluation.generate.SDPA_SKIP_CUDNN = not args.sdpa_cudnn
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir = build_full_size(Path("/tmp/r1ft-bench/full"))
    print(f"built and saved the full-size model in {time.perf_counter() - t0:.1f} s", flush=True)
    sci = scibench_test(args.scibench_dir)
    if not args.skip_e2e:
        run_e2e(args, model_dir, sci)
    if args.micro:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.micro.split(",")]
        print(f"CUDA launch overhead: {launch_overhead_us():.1f} us per kernel", flush=True)
        rows = micro(model_dir, shapes, [r["problem"] for r in sci], args.caches.split(","))
        (args.out / "micro.json").write_text(json.dumps(rows, indent=2))


def run_e2e(args, model_dir: Path, sci: list[dict]) -> None:
    """evaluate_run end to end (the same model stands for base and fine-tune)."""
    from r1ft.evaluation.run import evaluate_run
    from r1ft.report.card import evaluation_section as evaluation_markdown

    s = SimpleNamespace(seed=42, eval_samples=args.eval_samples, eval_scibench_samples=args.scibench_samples,
                        eval_batch_size=args.batch_size, eval_max_new_tokens=args.max_new_tokens,
                        eval_time_budget_s=args.budget)  # fmt: skip
    run_dir = Path("/tmp/r1ft-bench/run")
    result = evaluate_run(s, run_dir, model_dir, model_dir, eval_examples(args.eval_samples), sci)
    summary = {
        k: result[k] for k in ("device", "dtype", "planned", "scored", "generation_tokens_per_s", "seconds")
    }
    summary["models"] = {m: {k: v for k, v in d.items() if k != "think"} for m, d in result["models"].items()}
    print(json.dumps(summary, indent=1), flush=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    (args.out / "evaluation.md").write_text(evaluation_markdown(result))


if __name__ == "__main__":
    main()
