"""Data-parallel training on every GPU of the machine: one process per GPU, started by torchrun.

The CLI asks `launch_command` for the command and execs it when more than one process is wanted and the
current process was not itself started by a launcher (`launched`). Inside the processes, accelerate's
`PartialState` (the one the Trainer uses) knows the rank, the local rank and the device; the helpers
here wrap it so the rest of r1ft never reads the launcher's environment variables itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import NoReturn

from r1ft.exits import ExitCode
from r1ft.machine.gpu import visible_gpus
from r1ft.settings import Settings

log = logging.getLogger(__name__)

LAUNCH_VARS = ("LOCAL_RANK", "WORLD_SIZE")  # set by torchrun / accelerate launch for every worker
BARRIER_TIMEOUT_S = 2 * 3600
# Why training stops, as numbers every rank can agree on (the largest wins): see `agree_on_stop`.
STOP_CODES = {"": 0, "SIGINT": 1, "SIGTERM": 2, "disk": 3}
SIGNAL_EXIT = {signal.SIGTERM: ExitCode.SIGTERM, signal.SIGINT: ExitCode.SIGINT}


def world_size(settings: Settings, visible_gpus: int) -> int:
    """Processes to train with: R1FT_NUM_PROCESSES, else one per visible GPU (at least one)."""
    if settings.num_processes:
        return settings.num_processes
    return max(1, visible_gpus)


def use_one_gpu(environ: MutableMapping[str, str], gpus: Sequence[tuple] | None = None) -> str | None:
    """Narrow CUDA_VISIBLE_DEVICES to the first visible GPU (before CUDA starts) and return it; None
    when at most one is visible. A single training process that sees several GPUs makes transformers'
    Trainer wrap the model in nn.DataParallel, which TRL's SFTTrainer refuses. `gpus`: `visible_gpus()`
    if already read."""

    gpus = visible_gpus(environ) if gpus is None else gpus
    if len(gpus) <= 1:
        return None
    environ["CUDA_VISIBLE_DEVICES"] = gpus[0][0]
    return gpus[0][0]


def launched(environ: Mapping[str, str]) -> bool:
    """Whether this process is a worker started by a launcher (so it must not launch again)."""
    return all(name in environ for name in LAUNCH_VARS)


def launch_command(
    processes: int, argv: Sequence[str], module: str = "r1ft", python: str = sys.executable
) -> list[str]:
    """torchrun on this machine, `processes` workers, each running `python -m <module> <argv>`.

    `--standalone` picks a free rendezvous port on localhost; torchrun forwards SIGTERM/SIGINT to the
    workers and, when one fails, stops the others and exits non-zero.
    """
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={processes}",
        "-m",
        module,
        *argv,
    ]


def run_launcher(cmd: list[str]) -> int:
    """Run the launcher as a child, pass SIGTERM/SIGINT on to it (torchrun hands them to the workers, which
    save and stop), and return its exit code; 143/130 when a signal asked the job to stop."""
    proc = subprocess.Popen(cmd)
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in SIGNAL_EXIT}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return SIGNAL_EXIT[received[0]] if received and code != 0 else code


def _state():
    """accelerate's process state, the one the Trainer uses (the first call joins the process group)."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    # cpu=True is what makes accelerate use gloo across CPU processes; a long timeout lets the other ranks
    # wait at a barrier while rank 0 prepares the data or evaluates (torchrun ends them all if one fails).
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=BARRIER_TIMEOUT_S))


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return _state().process_index


def local_rank() -> int:
    """This process's rank on this machine, i.e. the index of its GPU."""
    return _state().local_process_index


def num_processes() -> int:
    return _state().num_processes


def is_main() -> bool:
    """True on the process that owns side effects (rank 0, or the only process)."""
    return _state().is_main_process


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    _state().wait_for_everyone()


def exit_launched(code: int) -> NoReturn:
    """End a process that torchrun launched: leave the process group, flush the output, and exit without
    the interpreter's teardown. That teardown destroys gloo's and c10d's threads mid-flight on some runs
    ("terminate called without an active exception", SIGABRT), and torchrun then reports a finished run
    as failed and ends the other ranks, rank 0 perhaps still publishing. Everything the run writes is
    closed before this point."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # leaving must never turn the run's result into a failure
            log.warning("leaving the process group: %s", e)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def device_map() -> dict[str, int]:
    """`from_pretrained`'s device_map that puts the whole model on this process's GPU (4-bit included)."""
    return {"": local_rank()}


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (downloads, data preparation into the shared cache), then the others."""
    with _state().main_process_first():
        yield


def agree_on_stop(reason: str) -> str:
    """The stop reason every rank adopts this step: the most serious one any rank has ('' for none).

    Ranks must stop at the same optimizer step or the others hang in the next gradient all-reduce; a
    signal or the disk watchdog reaches one rank at a time, so each step the ranks compare notes."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return reason
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    code = torch.tensor([STOP_CODES.get(reason, max(STOP_CODES.values()))], device=device)
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    return {v: k for k, v in STOP_CODES.items()}[int(code.item())]


def stop_agreement_callback(stop_flag):
    """A TrainerCallback to put LAST: at each step end, after every rank's own callbacks have decided, the
    ranks compare their stop requests; if any rank wants to stop, all save and stop at this step.

    Callbacks before it may request a stop (signal, disk watchdog) and set `should_training_stop`, since
    this one extends any such decision to every rank; nothing may set it later in the step on one rank
    only (e.g. in `on_save`): request the stop there, and the next step's agreement stops everyone."""
    from transformers import TrainerCallback

    class StopAgreement(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            agreed = agree_on_stop(stop_flag.reason)
            if agreed:
                if not stop_flag.reason:
                    stop_flag.request(agreed)
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopAgreement()
