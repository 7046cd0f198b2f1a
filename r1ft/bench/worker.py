"""One benchmark variant in its own process (or one process per GPU under torchrun).

`python -m r1ft.bench.worker SPEC.json` trains the variant described by the spec (written by
`r1ft.bench.training`) for its steps through TRL's SFTTrainer and writes, from rank 0, a result JSON: the wall
time of every optimizer step (CUDA synchronized at each step end), the peak memory of every step, the
loss of every step, and what the fast path did. A fresh process per variant isolates peak memory and
Liger's global patch.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from r1ft.machine.gpu import detect_hardware
from r1ft.model.tiny import base_config, build_tokenizer
from r1ft.recipe import make_recipe
from r1ft.settings_load import load_settings
from r1ft.training import distributed
from r1ft.training.adapters import bnb_config, lora_config, sft_config
from r1ft.training.fastpath import dtype_census
from r1ft.training.train import load_base_model


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    if spec.get("build_base"):
        build_full_size_base(Path(spec["base"]), seed=spec["seed"])
        return 0
    result = run_variant(spec)
    if result is not None:
        Path(spec["result"]).write_text(json.dumps(result, indent=1, default=str))
    import os

    if distributed.launched(os.environ):
        distributed.exit_launched(0)
    return 0


def build_full_size_base(dest: Path, seed: int) -> Path:
    """The real model's architecture with random weights (bf16), saved like a Hub checkpoint."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (dest / "config.json").is_file():
        return dest
    config = Qwen2Config(**base_config())
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    tmp = dest.with_name(dest.name + ".partial")
    model.save_pretrained(tmp)
    build_tokenizer().save_pretrained(tmp)
    tmp.rename(dest)
    return dest


def variant_settings(spec: dict):

    env = {
        "R1FT_WORK_DIR": spec["work_dir"],
        "R1FT_MAX_STEPS": str(spec["steps"]),
        "R1FT_LOGGING_STEPS": "1",
        "R1FT_SAVE_STEPS": "100000",
        "R1FT_SEED": str(spec["seed"]),
        **spec["env"],
    }
    return load_settings(env, env_file=None)


def run_variant(spec: dict) -> dict[str, Any] | None:
    """Train one variant and return its measurements (None on ranks other than 0)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from r1ft.training.trainer import LeanSFTTrainer

    settings = variant_settings(spec)
    hw = detect_hardware()
    if spec.get("card_gb"):
        hw = replace(hw, gpu_mem_gb=float(spec["card_gb"]))  # what r1ft does on a card of that size
    rows = json.loads(Path(spec["data"]).read_text())
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(spec["base"])
    run_dir = Path(spec["work_dir"]) / "run"
    build = original_recipe if spec["recipe"] == "original" else r1ft_recipe
    model, args, info = build(spec, settings, hw, run_dir)
    args.train_sampling_strategy = "sequential"  # the same sequences in the same order for every variant
    args.save_strategy = "no"
    processes = distributed.num_processes()
    step_tokens = tokens_per_step(
        rows, args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
    )
    profile_steps = spec.get("profile_steps") if distributed.is_main() else None  # rank 0 writes the profile
    timer = StepTimer(hw.device == "cuda", profile_steps, Path(spec["result"]).with_suffix(".prof.txt"))
    trainer_class = SFTTrainer if spec["recipe"] == "original" else LeanSFTTrainer  # (a) as written
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(settings),
        callbacks=[timer],
    )
    info["dtypes"] = _census(trainer.model)
    trainer.train()
    if not distributed.is_main():
        return None
    policy = getattr(model, "_r1ft_fastpath", {}).get("checkpoint_policy")
    return {
        "name": spec["name"],
        "device": torch.cuda.get_device_name(0) if hw.device == "cuda" else "cpu",
        "processes": processes,
        "step_s": timer.step_s,
        "step_peak_bytes": timer.peaks,
        "step_tokens": step_tokens[: len(timer.step_s)],
        "losses": timer.losses,
        "checkpointed_layers": [k for _, k in policy.history] if policy else None,
        "compile": _compile_stats() if info.get("compiled") else None,
        "profile": timer.profile_text,
        "profiled_steps": spec.get("profile_steps"),
        **info,
    }


def r1ft_recipe(spec: dict, settings, hw, run_dir: Path):
    """r1ft's own path: the recipe and adapters the job uses, with the settings of the variant."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec["base"]).to_dict()
    recipe = make_recipe(settings, hw, distributed.num_processes(), config)
    model = load_base_model(spec["base"], settings, recipe, hw)
    args = sft_config(settings, run_dir, recipe, has_eval=False)
    layout = recipe.layout
    info = {
        "quant": recipe.quant,
        "layout": [layout.per_device, layout.accum, layout.processes],
        "padding_free": settings.padding_free,
        "attn": recipe.attention,
        "liger": recipe.liger,
        "compiled": recipe.compiled,
        "checkpointing": recipe.checkpointing,
        "optim": args.optim,
        "card_gb": hw.gpu_mem_gb,
    }
    return model, args, info


def original_recipe(spec: dict, settings, hw, run_dir: Path):
    """The original recipe as written: 4-bit NF4 (double quantization), batch 2 x accumulation 8, padded
    batches, paged AdamW 8-bit, gradient checkpointing, SDPA, through TRL's SFTTrainer. On CPU (tiny
    mode) the base stays fp32 and the optimizer plain AdamW (bitsandbytes needs CUDA)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    cuda = hw.device == "cuda"
    kwargs: dict[str, Any] = {"attn_implementation": "sdpa"}
    if cuda:
        kwargs.update(dtype=torch.bfloat16, device_map=distributed.device_map())
        kwargs["quantization_config"] = bnb_config()
    else:
        kwargs["dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec["base"], **kwargs)
    accum = max(1, 8 // distributed.num_processes())
    args = SFTConfig(
        output_dir=str(run_dir / "checkpoints"),
        max_steps=settings.max_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_ratio,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=accum,
        gradient_checkpointing=True,
        optim="paged_adamw_8bit" if cuda else "adamw_torch",
        bf16=cuda,
        max_length=settings.max_seq_len,
        padding_free=False,
        logging_steps=1,
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=not cuda,
        disable_tqdm=True,
    )
    info = {
        "quant": "nf4" if cuda else "none",
        "layout": [2, accum, distributed.num_processes()],
        "padding_free": False,
        "attn": "sdpa",
        "liger": False,
        "compiled": False,
        "checkpointing": "all",
        "optim": args.optim,
        "card_gb": hw.gpu_mem_gb,
    }
    return model, args, info


def tokens_per_step(rows: list[dict], global_batch: int) -> list[int]:
    """Real (non-pad) tokens of each optimizer step under sequential sampling."""
    lengths = [len(r["input_ids"]) for r in rows]
    return [sum(lengths[i : i + global_batch]) for i in range(0, len(lengths), global_batch)]


def _census(model) -> dict[str, int]:

    return dtype_census(model)


def _compile_stats() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "recompiles": int(counters["recompiles"].get("total", 0)) if "recompiles" in counters else 0,
    }


def _step_timer_base():
    from transformers import TrainerCallback

    return TrainerCallback


class StepTimer(_step_timer_base()):
    """Wall time and peak memory of every optimizer step (step end to step end, CUDA synchronized),
    the loss of every step, and optionally a torch.profiler table of a few steps."""

    def __init__(self, cuda: bool, profile_steps: list[int] | None = None, profile_path: Path | None = None):
        self.cuda, self.profile_steps, self.profile_path = cuda, profile_steps, profile_path
        self.step_s: list[float] = []
        self.peaks: list[int] = []
        self.losses: list[float] = []
        self.profile_text = ""
        self._prof = None
        self._cprof = None

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        self._sync()
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self.last = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        """Profile window [p0, p1): its first two steps under cProfile (the host's Python), the rest under
        torch.profiler (kernels, host ops, syncs); the two never overlap, so neither skews the other."""
        if not self.profile_steps:
            return
        p0, _ = self.profile_steps
        if state.global_step == p0 and self._cprof is None:
            import cProfile

            self._cprof = cProfile.Profile()
            self._cprof.enable()
        elif state.global_step == p0 + 2 and self._prof is None:
            self._stop_cprofile()
            self._prof = _start_profiler(self.cuda)

    def _stop_cprofile(self) -> None:
        if self._cprof is None:
            return
        import io
        import pstats

        self._cprof.disable()
        out = io.StringIO()
        stats = pstats.Stats(self._cprof, stream=out)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(60)
        self._cprof = None
        if self.profile_path is not None:
            text = f"cProfile of 2 steps ({sum(self.step_s[-2:]):.3f} s wall)\n" + out.getvalue()
            self.profile_path.with_suffix(".cprof.txt").write_text(text)

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        now = time.perf_counter()
        self.step_s.append(now - self.last)
        self.last = now
        if self.cuda:
            import torch

            self.peaks.append(torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        if self._prof is not None and state.global_step >= self.profile_steps[1]:
            wall = sum(self.step_s[self.profile_steps[0] + 2 :])
            self.profile_text = _stop_profiler(self._prof, self.cuda, self.profile_path, wall)
            self._prof = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def _start_profiler(cuda: bool):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    prof = profile(activities=activities, record_shapes=False)
    prof.start()
    return prof


def _stop_profiler(prof, cuda: bool, path: Path | None, wall_s: float) -> str:
    """How busy the GPU was, the host syncs and kernel launches, the top operators by GPU time and by host
    time; the Chrome trace is kept beside the table (gzipped) for a look at the gaps."""
    prof.stop()
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    busy_us = sum(getattr(e, key, 0.0) for e in events)
    counts = {
        e.key: e.count
        for e in events
        if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "aten::item",
                     "aten::_local_scalar_dense", "cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx",
                     "cudaMemcpyAsync", "aten::nonzero")
    }  # fmt: skip
    head = [
        f"profiled wall {wall_s:.3f} s; summed {key} {busy_us / 1e6:.3f} s ({busy_us / 1e6 / wall_s:.0%} busy)",
        "calls over the profiled steps: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
    ]
    tables = []
    for sort in (key, "self_cpu_time_total"):
        try:
            tables.append(
                f"--- by {sort}\n" + events.table(sort_by=sort, row_limit=40, max_name_column_width=70)
            )
        except (AttributeError, KeyError, ValueError) as e:
            tables.append(f"--- by {sort}: {e}")
    text = "\n".join(head + tables)
    if path is not None:
        path.write_text(text)
        _export_trace(prof, path.with_suffix(".trace.json.gz"))
    return text


def _export_trace(prof, dest: Path) -> None:
    import gzip
    import shutil

    raw = dest.with_suffix("")  # .trace.json
    try:
        prof.export_chrome_trace(str(raw))
        with raw.open("rb") as src, gzip.open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    except (OSError, RuntimeError) as e:
        print(f"bench: could not export the profiler trace ({e})", flush=True)
    finally:
        raw.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
