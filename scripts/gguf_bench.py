"""GGUF export on the full-size model shape: each type's file size, write time, llama.cpp check time and the
disk peak (the merged model plus the one GGUF file on disk at a time).

Without `--merged`, builds DeepSeek-R1-Distill-Qwen-1.5B's exact config with random bf16 weights and the tiny
tokenizer (`r1ft.bench.worker.build_full_size_base`) under `--out`; with it, exports that merged dir (a
finished run's `merged/`, or the base model itself). CPU only; each file is deleted after its figures.

    .venv/bin/python scripts/gguf_bench.py --out /tmp/gguf-bench --types q4_k_m,q6_k,q8_0
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's r1ft


def dir_bytes(*dirs: Path) -> int:
    return sum(f.stat().st_size for d in dirs if d.exists() for f in d.rglob("*") if f.is_file())


def main() -> None:
    from r1ft.bench.worker import build_full_size_base
    from r1ft.export.gguf import export_gguf, gguf_file_bytes

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--merged", type=Path, help="a merged model dir (default: build the full-size shape)")
    parser.add_argument("--types", default="q4_k_m,q6_k,q8_0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    merged = args.merged or args.out / "run" / "merged"
    if not (merged / "config.json").is_file():
        start = time.monotonic()
        build_full_size_base(merged, seed=0)
        print(f"built {merged} in {time.monotonic() - start:.0f} s", flush=True)
    config = json.loads((merged / "config.json").read_text())
    gguf_dir = args.out / "gguf"
    peak, done = [dir_bytes(merged, gguf_dir)], threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            peak.append(dir_bytes(merged, gguf_dir))

    sizes: dict[str, int] = {}

    def measured_and_deleted(path: Path) -> None:
        sizes[path.name] = path.stat().st_size
        path.unlink()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.monotonic()
    results = export_gguf(merged, gguf_dir, args.types.split(","), on_file_ready=measured_and_deleted)
    done.set()
    watcher.join()
    total = time.monotonic() - start
    for r in results:
        row = {
            "type": r.type,
            "verified": r.verified,
            "size_gb": round(r.size_bytes / 1e9, 3),
            "estimate_gb": round(gguf_file_bytes(config, r.type) / 1e9, 3),
            "write_s": round(r.seconds - r.check_seconds, 1),
            "check_s": round(r.check_seconds, 1),
            "kl": r.kl_divergence,
            "message": r.message,
        }
        print(json.dumps(row), flush=True)
    print(
        json.dumps(
            {
                "merged_gb": round(dir_bytes(merged) / 1e9, 3),
                "disk_peak_gb": round(max(peak) / 1e9, 3),
                "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                "total_s": round(total, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
