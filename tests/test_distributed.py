"""Data-parallel helpers: how many processes, the torchrun command, signals through the launcher, and ranks
agreeing on when to stop (gloo on CPU)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import torch.multiprocessing as mp

from r1ft.settings_load import load_settings
from r1ft.training import distributed


def test_world_size_defaults_to_the_visible_gpus():
    assert distributed.world_size(load_settings({}, env_file=None), visible_gpus=4) == 4
    assert distributed.world_size(load_settings({}, env_file=None), visible_gpus=0) == 1
    forced = load_settings({"R1FT_NUM_PROCESSES": "1"}, env_file=None)
    assert distributed.world_size(forced, visible_gpus=8) == 1


FOUR_GPUS = "\n".join(
    f"{i}, GPU-{i}aaaa-0000, NVIDIA H100 80GB HBM3, 81559" for i in range(4)
)  # nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits


def fake_nvidia_smi(tmp_path: Path, monkeypatch) -> None:
    """An nvidia-smi on PATH that lists four H100s, as on a 4-GPU Vast machine (it ignores
    CUDA_VISIBLE_DEVICES, as the real one does)."""
    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\ncat <<'EOF'\n{FOUR_GPUS}\nEOF\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")


def test_visible_gpus_follow_cuda_visible_devices(tmp_path, monkeypatch):
    from r1ft.machine.gpu import query_gpus, visible_gpus

    fake_nvidia_smi(tmp_path, monkeypatch)
    assert len(query_gpus({})) == 4 and query_gpus({})[0] == (
        "NVIDIA H100 80GB HBM3",
        81559 * 1.048576 / 1000,
    )
    assert [g[0] for g in visible_gpus({"CUDA_VISIBLE_DEVICES": "2,0"})] == ["2", "0"]
    assert [g[0] for g in visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-3"})] == ["GPU-3"]  # UUID prefixes
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert [g[0] for g in visible_gpus({"CUDA_VISIBLE_DEVICES": "1,7,2"})] == ["1"]  # CUDA stops at 7


def test_one_process_on_a_machine_of_several_gpus_sees_one(tmp_path, monkeypatch):
    """R1FT_NUM_PROCESSES=1 on a 4-GPU machine: Trainer would wrap DataParallel (which TRL refuses)."""
    fake_nvidia_smi(tmp_path, monkeypatch)
    env = {"CUDA_VISIBLE_DEVICES": "3,1"}
    assert distributed.use_one_gpu(env) == "3" and env["CUDA_VISIBLE_DEVICES"] == "3"
    assert distributed.use_one_gpu(env) is None  # one left: unchanged
    env = {}
    assert distributed.use_one_gpu(env) == "0" and env == {"CUDA_VISIBLE_DEVICES": "0"}


def test_launch_command_runs_r1ft_under_torchrun():
    cmd = distributed.launch_command(2, ["run"], python="/usr/bin/python3")
    assert cmd == [
        "/usr/bin/python3", "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
        "--nproc-per-node=2", "-m", "r1ft", "run",
    ]  # fmt: skip
    assert distributed.launched({"LOCAL_RANK": "0", "WORLD_SIZE": "2", "RANK": "0"})
    assert not distributed.launched({"PATH": "/bin"})


def test_sigterm_reaches_the_launched_processes_and_exits_143():
    child = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); time.sleep(30)"
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert distributed.run_launcher([sys.executable, "-c", child]) == 143
    finally:
        timer.cancel()
    assert distributed.run_launcher([sys.executable, "-c", "raise SystemExit(3)"]) == 3


def _agree(rank: int, path: str, reasons: list[str], out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=len(reasons))
    try:
        out[rank] = distributed.agree_on_stop(reasons[rank])
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_the_most_serious_stop_reason(tmp_path: Path):
    for reasons, expected in ((["", "SIGTERM"], "SIGTERM"), (["disk", "SIGTERM"], "disk"), (["", ""], "")):
        store = tmp_path / f"pg-{expected or 'none'}"
        with mp.Manager() as manager:
            out = manager.dict()
            mp.spawn(_agree, args=(str(store), reasons, out), nprocs=2, join=True)
            assert dict(out) == {0: expected, 1: expected}
    assert distributed.agree_on_stop("SIGINT") == "SIGINT"  # one process: nothing to agree with


def test_the_agreed_stop_saves_and_stops():
    from transformers import TrainerControl

    from r1ft.machine.signals import StopFlag

    flag = StopFlag()
    callback = distributed.stop_agreement_callback(flag)
    control = callback.on_step_end(None, None, TrainerControl())
    assert not control.should_training_stop
    flag.request("disk")
    control = callback.on_step_end(None, None, TrainerControl())
    assert control.should_save and control.should_training_stop


def _ddp_and_flat_gradients(rank: int, path: str, out: dict) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from r1ft.training.trainer import all_reduce_mean

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
        ddp = DistributedDataParallel(model)
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(rank + 1))  # each rank its own batch
        ddp(x).square().sum().backward()
        reference = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        with ddp.no_sync():
            ddp(x).square().sum().backward()
        local = [p.grad.clone() for p in model.parameters()]
        params = list(model.parameters())
        if rank == 0:
            params[-1].grad = None  # a gradient missing on one rank counts as zeros there
        all_reduce_mean(params)
        out[rank] = {
            "same_as_ddp": all(
                torch.allclose(p.grad, r) for p, r in zip(params[:-1], reference[:-1], strict=True)
            ),
            "not_synced_before": not all(torch.allclose(g, r) for g, r in zip(local, reference, strict=True)),
            "last": params[-1].grad.tolist(),
            "local_last": local[-1].tolist(),
        }
    finally:
        dist.destroy_process_group()


def test_one_flat_all_reduce_averages_gradients_as_ddp_does(tmp_path: Path):
    """The lean trainer's gradient sync (under DDP's no_sync, one flat all-reduce) gives DDP's gradients on
    every rank; a rank without a gradient for a parameter takes part with zeros."""
    import pytest

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_and_flat_gradients, args=(str(tmp_path / "pg"), out), nprocs=2, join=True)
        out = dict(out)
    for rank in (0, 1):
        assert out[rank]["same_as_ddp"] and out[rank]["not_synced_before"]
    half_of_rank1 = [v / 2 for v in out[1]["local_last"]]
    assert out[0]["last"] == out[1]["last"] == pytest.approx(half_of_rank1)
