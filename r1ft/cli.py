"""The `r1ft` command line: run the job, or one stage of it on an existing run directory.

Settings are parsed and validated here, once, before torch is imported; every problem is reported at once
and the exit code is 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from r1ft.settings import Settings, SettingsError, load_settings

log = logging.getLogger("r1ft")

EPILOG = "Settings come from R1FT_* environment variables (and an optional .env file); see .env.example."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1ft", description=__doc__, epilog=EPILOG)
    p.add_argument("--env-file", type=Path, default=Path(".env"), help="optional .env file (default ./.env)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("run", help="the whole job: data, train, merge, evaluate, publish, stop", epilog=EPILOG)
    pl = sub.add_parser("plan", help="print the disk, VRAM, time and cost plan and exit", epilog=EPILOG)
    pl.add_argument("--json", action="store_true", help="print the plan as one JSON object")

    d = sub.add_parser("data", help="prepare the training data and print it or its statistics", epilog=EPILOG)
    d.add_argument("--json", action="store_true", help="one JSON object a line: source, text, loss_text")
    d.add_argument("--split", choices=["train", "eval"], default="train")
    d.add_argument("--limit", type=int, default=0, help="at most N examples (0: all)")
    d.add_argument("--stats", action="store_true", help="print a JSON summary of the prepared data")

    for name, text in (
        ("merge", "merge RUN_DIR/adapter into a bf16 base (RUN_DIR/merged)"),
        ("eval", "evaluate the base and the fine-tune of a run (RUN_DIR/eval)"),
        ("publish", "publish a finished run to R1FT_OUTPUT and verify it"),
        ("gguf", "export GGUF files (R1FT_GGUF types) from RUN_DIR/merged"),
    ):
        sp = sub.add_parser(name, help=text, epilog=EPILOG)
        sp.add_argument("--run-dir", type=Path, required=True, help="an existing run directory")

    c = sub.add_parser("collect", help="download a published run and verify it against its manifest")
    c.add_argument("src", help="hf://owner/name[@rev], s3://bucket/prefix, or a directory")
    c.add_argument("dest", type=Path, help="local directory to write")

    from r1ft.bench.training import add_arguments

    add_arguments(
        sub.add_parser("bench", help="GPU benchmark of training variants (see docs/performance.md)")
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(env_file=args.env_file)
    except SettingsError as e:
        print(f"r1ft: {len(e.problems)} problem(s) in the settings:", file=sys.stderr)
        for problem in e.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    from r1ft.logs import setup_console

    # Workers of a multi-GPU run: rank 0 logs the job, the others only their warnings and errors.
    setup_console(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    handler = globals()[f"cmd_{args.command}"]
    try:
        return handler(settings, args)
    except KeyboardInterrupt:
        return 130


def cmd_run(settings: Settings, args) -> int:
    """The job; with several GPUs (or R1FT_NUM_PROCESSES > 1), relaunched as one process per GPU."""
    from r1ft import distributed
    from r1ft.gpu_info import visible_gpus

    gpus = visible_gpus()
    processes = distributed.world_size(settings, len(gpus))
    if processes == 1 and not distributed.launched(os.environ):
        # one process with several GPUs visible: Trainer would wrap DataParallel, which TRL refuses
        distributed.use_one_gpu(os.environ, gpus)
    elif processes > 1 and not distributed.launched(os.environ):
        log.info("training data-parallel: %d processes (torchrun), rank 0 owns the side effects", processes)
        code = distributed.run_launcher(
            distributed.launch_command(processes, ["--env-file", str(args.env_file), "run"])
        )
        if code not in (0, 2, 3, 4, 130, 143):
            # A rank died (torchrun then ends the others), possibly before rank 0 could stop the instance.
            from r1ft.instance import stop_instance

            log.error("a training process failed (exit %d); see the log above", code)
            log.info(stop_instance(settings, False))
        return code
    from r1ft.pipeline import run_job

    code = run_job(settings)
    if distributed.launched(os.environ):
        distributed.exit_launched(code)
    return code


def cmd_plan(settings: Settings, args) -> int:
    from r1ft import plan as planning
    from r1ft.distributed import world_size
    from r1ft.gpu_info import query_gpus

    gpus = query_gpus()
    gpu_name, gpu_mem = gpus[0] if gpus else ("", 0.0)
    p = planning.plan_for(settings, gpu_name, gpu_mem, world_size(settings, len(gpus)))
    print(p.to_json() if args.json else planning.render_plan(p, gpu_name))
    return 0 if p.fits else 4


def cmd_data(settings: Settings, args) -> int:
    from r1ft import data
    from r1ft.pipeline import Job
    from r1ft.stages import fetch_base_model, load_tokenizer

    run_id = settings.resolved_run_id(data.data_fingerprint(settings))
    job = Job(settings, run_id, Path(settings.work_dir).resolve() / "runs" / run_id)
    try:
        job.base = fetch_base_model(job)
        tokenizer = load_tokenizer(job)
        prepared = data.prepare_data(settings, tokenizer, job.run_dir)
    except data.DataError as e:
        print(f"r1ft: {e}", file=sys.stderr)
        return 2
    if args.stats:
        print(json.dumps(prepared.stats, indent=2, default=str))
    if args.json or not args.stats:
        for line in data.iter_rendered(prepared, tokenizer, args.split, args.limit):
            print(json.dumps(line, ensure_ascii=False))
    return 0


def _report(run_dir: Path) -> dict:
    path = run_dir / "report.json"
    if not path.is_file():
        raise SystemExit(
            f"r1ft: {run_dir} has no report.json: is it a run directory? (runs live in WORK_DIR/runs/)"
        )
    return json.loads(path.read_text())


def cmd_merge(settings: Settings, args) -> int:
    from r1ft.stage_commands import merge_run

    return merge_run(settings, args.run_dir.resolve(), _report(args.run_dir))


def cmd_eval(settings: Settings, args) -> int:
    from r1ft.stage_commands import eval_run

    return eval_run(settings, args.run_dir.resolve(), _report(args.run_dir))


def cmd_publish(settings: Settings, args) -> int:
    from r1ft.stage_commands import publish_run_dir

    return publish_run_dir(settings, args.run_dir.resolve(), _report(args.run_dir))


def cmd_gguf(settings: Settings, args) -> int:
    from r1ft.stage_commands import gguf_run

    return gguf_run(settings, args.run_dir.resolve(), _report(args.run_dir))


def cmd_collect(settings: Settings, args) -> int:
    from r1ft.publish import PublishError, collect

    try:
        collect(args.src, args.dest, settings)
    except ValueError as e:  # not a location we understand
        print(f"r1ft: {e}", file=sys.stderr)
        return 2
    except PublishError as e:
        print(f"r1ft: {e}", file=sys.stderr)
        return 3
    print(f"collected {args.src} into {args.dest} (verified against its manifest)")
    return 0


def cmd_bench(settings: Settings, args) -> int:
    from r1ft.bench.training import main as bench_main

    if args.out is None and os.environ.get("OUT"):  # the GPU machine's output folder
        args.out = Path(os.environ["OUT"]) / "bench.json"
    return bench_main(settings, args)


if __name__ == "__main__":
    sys.exit(main())
