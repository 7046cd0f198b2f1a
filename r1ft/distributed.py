"""Data-parallel training on every GPU of the machine: one process per GPU, started by torchrun.

The CLI asks `launch_command` for the command and execs it when more than one process is wanted and the
current process was not itself started by a launcher (`launched`). Inside the processes, accelerate's
`PartialState` (the one the Trainer uses) knows the rank, the local rank and the device; the helpers
here wrap it so the rest of r1ft never reads the launcher's environment variables itself.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from r1ft.settings import Settings

LAUNCH_VARS = ("LOCAL_RANK", "WORLD_SIZE")  # set by torchrun / accelerate launch for every worker
BARRIER_TIMEOUT_S = 2 * 3600


def world_size(settings: Settings, visible_gpus: int) -> int:
    """Processes to train with: R1FT_NUM_PROCESSES, else one per visible GPU (at least one)."""
    if settings.num_processes:
        return settings.num_processes
    return max(1, visible_gpus)


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


def device_map() -> dict[str, int]:
    """`from_pretrained`'s device_map that puts the whole model on this process's GPU (4-bit included)."""
    return {"": local_rank()}
