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

from r1ft.bench import training as bench
from r1ft.commands import eval_run, gguf_run, merge_run, publish_run_dir
from r1ft.data.prepare import iter_rendered, prepare_data
from r1ft.exits import ExitCode, JobError
from r1ft.machine.gpu import planning_hardware, visible_gpus
from r1ft.machine.instance import stop_instance
from r1ft.machine.logs import setup_console
from r1ft.pipeline import new_job, run_job
from r1ft.plan import plan_for, render_plan
from r1ft.publish.collect import collect
from r1ft.publish.destination import DestinationDenied, PublishError
from r1ft.publish.location import LocationError
from r1ft.records import DataError
from r1ft.settings import Settings
from r1ft.settings_load import SettingsError, load_settings
from r1ft.stages import fetch_base, load_tokenizer
from r1ft.training import distributed
from r1ft.training.distributed import world_size

log = logging.getLogger(__name__)

EPILOG = "Settings come from R1FT_* environment variables (and an optional .env file); see .env.example."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1ft", description=__doc__, epilog=EPILOG)
    p.add_argument(
        "--env-file", type=Path, default=None, help="a .env file to read (default: ./.env when it exists)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="the whole job: data, train, merge, evaluate, publish, stop", epilog=EPILOG
    )
    run.set_defaults(func=cmd_run)
    pl = sub.add_parser("plan", help="print the disk, VRAM, time and cost plan and exit", epilog=EPILOG)
    pl.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    pl.set_defaults(func=cmd_plan)

    d = sub.add_parser("data", help="prepare the training data and print it or its statistics", epilog=EPILOG)
    d.add_argument("--json", action="store_true", help="one JSON object a line: source, text, loss_text")
    d.add_argument("--split", choices=["train", "eval"], default="train")
    d.add_argument("--limit", type=_count, default=0, help="at most N examples (0: all)")
    d.add_argument("--stats", action="store_true", help="print a JSON summary of the prepared data")
    d.set_defaults(func=cmd_data)

    for name, text, func in (
        ("merge", "merge RUN_DIR/adapter into a bf16 base (RUN_DIR/merged)", cmd_merge),
        ("eval", "evaluate the base and the fine-tune of a run (RUN_DIR/eval)", cmd_eval),
        ("publish", "publish a finished run to R1FT_OUTPUT and verify it", cmd_publish),
        ("gguf", "export GGUF files (R1FT_GGUF types) from RUN_DIR/merged", cmd_gguf),
    ):
        sp = sub.add_parser(name, help=text, epilog=EPILOG)
        sp.add_argument("--run-dir", type=Path, required=True, help="an existing run directory")
        sp.set_defaults(func=func)

    c = sub.add_parser("collect", help="download a published run and verify it against its manifest")
    c.add_argument("src", help="hf://owner/name[@rev], s3://bucket/prefix, or a directory")
    c.add_argument("dest", type=Path, help="local directory to write")
    c.set_defaults(func=cmd_collect)

    b = sub.add_parser("bench", help="GPU benchmark of training variants (see docs/performance.md)")
    bench.add_arguments(b)
    b.set_defaults(func=cmd_bench)
    return p


def _count(text: str) -> int:
    """A whole number >= 0 (argparse exits 2 on anything else: --limit -5 printed nothing and exited 0)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # --env-file names a file that must exist; without it, ./.env is read when it exists.
        settings = load_settings(
            env_file=args.env_file or Path(".env"), env_file_required=args.env_file is not None
        )
    except SettingsError as e:
        print(f"r1ft: {len(e.problems)} problem(s) in the settings:", file=sys.stderr)
        for problem in e.problems:
            print(f"  - {problem}", file=sys.stderr)
        return ExitCode.SETTINGS
    # Workers of a multi-GPU run: rank 0 logs the job, the others only their warnings and errors.
    setup_console(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    try:
        return int(args.func(settings, args))
    except JobError as e:  # a stage command on a run directory that cannot take it
        print(f"r1ft: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return ExitCode.SIGINT


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """The job; with several GPUs (or R1FT_NUM_PROCESSES > 1), relaunched as one process per GPU."""

    gpus = visible_gpus()
    processes = distributed.world_size(settings, len(gpus))
    if processes == 1 and not distributed.launched(os.environ):
        # one process with several GPUs visible: Trainer would wrap DataParallel, which TRL refuses
        distributed.use_one_gpu(os.environ, gpus)
    elif processes > 1 and not distributed.launched(os.environ):
        log.info("training data-parallel: %d processes (torchrun), rank 0 owns the side effects", processes)
        env_file = ["--env-file", str(args.env_file)] if args.env_file else []
        code = distributed.run_launcher(distributed.launch_command(processes, [*env_file, "run"]))
        if code not in set(ExitCode) - {ExitCode.FAILED}:
            # A rank died (torchrun then ends the others), possibly before rank 0 could stop the instance.

            log.error("a training process failed (exit %d); see the log above", code)
            log.info(stop_instance(settings, False))
        return code
    code = run_job(settings)
    if distributed.launched(os.environ):
        distributed.exit_launched(code)
    return code


def cmd_plan(settings: Settings, args: argparse.Namespace) -> int:

    hw = planning_hardware(on_cpu=settings.is_tiny)
    p = plan_for(settings, hw, world_size(settings, hw.gpu_count))
    print(p.to_json() if args.json else render_plan(p, hw.gpu_name))
    if p.settings_problems:
        return ExitCode.SETTINGS
    return ExitCode.OK if p.fits else ExitCode.DISK


def cmd_data(settings: Settings, args: argparse.Namespace) -> int:

    job = new_job(settings, command="r1ft data")
    try:
        tokenizer = load_tokenizer(fetch_base(job))
        prepared = prepare_data(settings, tokenizer, job.run_dir)
    except DataError as e:
        print(f"r1ft: {e}", file=sys.stderr)
        return ExitCode.SETTINGS
    if args.stats:
        print(prepared.stats.model_dump_json(indent=2))
    if args.json or not args.stats:
        for line in iter_rendered(prepared, tokenizer, args.split, args.limit or None):
            print(json.dumps(line, ensure_ascii=False))
    return ExitCode.OK


def cmd_merge(settings: Settings, args: argparse.Namespace) -> int:

    return merge_run(settings, args.run_dir.resolve())


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:

    return eval_run(settings, args.run_dir.resolve())


def cmd_publish(settings: Settings, args: argparse.Namespace) -> int:

    return publish_run_dir(settings, args.run_dir.resolve())


def cmd_gguf(settings: Settings, args: argparse.Namespace) -> int:

    return gguf_run(settings, args.run_dir.resolve())


def cmd_collect(settings: Settings, args: argparse.Namespace) -> int:

    try:
        collect(args.src, args.dest, settings)
    except (LocationError, DestinationDenied) as e:  # not a location we understand, or not ours to read
        print(f"r1ft: {e}", file=sys.stderr)
        return ExitCode.SETTINGS
    except PublishError as e:
        print(f"r1ft: {e}", file=sys.stderr)
        return ExitCode.PUBLISH
    print(f"collected {args.src} into {args.dest} (verified against its manifest)")
    return ExitCode.OK


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    if args.out is None and os.environ.get("OUT"):  # the GPU machine's output folder
        args.out = Path(os.environ["OUT"]) / "bench.json"
    return bench.main(settings, args)


if __name__ == "__main__":
    sys.exit(main())
