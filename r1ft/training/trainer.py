"""TRL's SFTTrainer with the per-step host work cut, for r1ft's own training (the job and the
benchmark's b and c variants; the original recipe, (a), runs the stock SFTTrainer).

At the recipe's 16 sequences a step the GPU work of a step is short, so what the host does between
kernels shows in the step time. Per micro-batch, the stock trainer:
- reads three metrics back from the GPU (entropy, token accuracy, token count: three `.item()` host
  syncs) and, with several GPUs, all-gathers each of them across ranks first (four collectives);
- walks every module to count the parameters again, for a FLOPs figure that never changes per token;
- walks the whole module tree (about 2,300 modules with the adapters) three more times: `model.train()`,
  the gradient clipping's parameter list and `model.zero_grad()`.

Here the metrics stay on the GPU, one row per micro-batch, and are reduced across ranks and read back
once per logging step, giving the same logged values (a CPU test compares them with the stock trainer);
the parameter count is taken once; `train()` runs only when some module is out of training mode, and
clipping and zeroing go over the trainable parameters, listed once (the frozen ones never hold a
gradient). The loss and everything that trains are TRL's.

With several processes, the gradients are averaged by one all-reduce of one flat buffer after the last
micro-batch's backward, instead of DDP's reducer: the reducer's per-parameter hook copies each of the
~400 small LoRA gradients into its buckets (about 10 ms of host time a step, measured on an H200), while
one flat all-reduce of the 74 MB of adapter gradients takes well under a millisecond over NVLink. The
model stays wrapped in DDP (its parameter broadcast at the start, and the launcher, are unchanged); its
backward runs under `no_sync`. The average is DDP's (sum over ranks / ranks), so training is the same.

Compiling leaves many long-lived Python objects. In the benchmark one early step stalled for 0.5-1 s, the
first full garbage collection walking them (inferred: the stall is gone since this change, not profiled).
After the first steps, and after the first evaluation, which compiles its own graphs, they are collected
once and frozen out of later collections (`gc.freeze`, as vLLM does after its warm-up).
"""

from __future__ import annotations

import gc

import torch
from accelerate.utils import DistributedType
from torch.nn.parallel import DistributedDataParallel
from trl import SFTTrainer

# steps of this process: compilation, and the block-mask function's one recompilation, are done by then
FREEZE_AFTER_STEPS = 3
# one process per device, nothing sharded: DDP's gradient average (or none) is all there is to sync
DATA_PARALLEL = (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)


class LeanSFTTrainer(SFTTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}
        self._pending_tokens: list[torch.Tensor | int] = []
        self._flops_per_token: int | None = None
        self._trainable: list[torch.nn.Parameter] | None = None
        self._frozen: set[str] = set()
        self._start_step: int | None = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        if getattr(model, "_r1ft_lean", None) != id(self):
            _lighten(model, self._trainable_parameters())
            model._r1ft_lean = id(self)
        if self._start_step is None:  # this process's first step (a resumed run starts past 0)
            self._start_step = self.state.global_step
        if self.state.global_step - self._start_step >= FREEZE_AFTER_STEPS:
            self._freeze_garbage("training")
        if not self._flat_gradient_sync(model):
            return super().training_step(model, inputs, num_items_in_batch)
        with model.no_sync():
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # the optimizer step's last micro-batch
            all_reduce_mean(self._trainable_parameters())
        return loss

    def evaluate(self, *args, **kwargs):
        metrics = super().evaluate(*args, **kwargs)
        self._freeze_garbage("evaluation")
        return metrics

    def _freeze_garbage(self, after: str) -> None:
        if after not in self._frozen:
            self._frozen.add(after)
            gc.collect()
            gc.freeze()

    def _flat_gradient_sync(self, model) -> bool:
        """Plain DDP: the gradients are averaged here."""
        return (
            isinstance(model, DistributedDataParallel) and self.accelerator.distributed_type in DATA_PARALLEL
        )

    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        if self._trainable is None:
            self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        return self._trainable

    def _clip_grad_norm(self, model):
        """Plain DDP or one device, no fp16 scaler: the trainable parameters' norm, as accelerate computes it."""
        plain = self.accelerator.distributed_type in (DistributedType.NO, *DATA_PARALLEL)
        if not plain or self.accelerator.scaler is not None:
            return super()._clip_grad_norm(model)
        return torch.nn.utils.clip_grad_norm_(self._trainable_parameters(), self.args.max_grad_norm)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self._plain_loss():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        # TRL's loss, as in SFTTrainer.compute_loss (nll, no auxiliary loss)
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        with torch.no_grad():
            self._pending[mode].append(
                torch.stack(
                    [
                        outputs.label_mask.sum().float(),
                        outputs.entropy.detach().sum().float(),
                        outputs.is_top1.sum().float(),
                    ]
                )
            )
        if mode == "train":
            if "attention_mask" in inputs:
                self._pending_tokens.append(inputs["attention_mask"].sum())
            elif "position_ids" in inputs:
                self._pending_tokens.append(inputs["position_ids"].size(1))
            else:
                raise ValueError("Expected 'attention_mask' or 'position_ids' in inputs.")
        return loss

    def _plain_loss(self) -> bool:
        """The configurations whose loss this class computes as TRL does; others go to TRL itself."""
        return (
            self.compute_loss_func is None
            and self.label_smoother is None
            and self.args.loss_type == "nll"
            and not self.aux_loss_enabled
            and getattr(self.args, "parallelism_config", None) is None
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self._flush_metrics("train" if self.model.training else "eval")
        super().log(logs, start_time)

    def _flush_metrics(self, mode: str) -> None:
        """Reduce the pending rows across ranks, read them back once, and hand TRL its per-micro-batch
        metrics (every rank calls `log` at the same points, so the collectives match)."""
        rows = self._pending[mode]
        if not rows:
            return
        sums = self.accelerator.reduce(torch.stack(rows), reduction="sum").tolist()
        for valid, entropy, correct in sums:
            self._metrics[mode]["entropy"].append(entropy / valid if valid > 0 else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append(correct / valid if valid > 0 else 0.0)
        rows.clear()
        if mode == "train" and self._pending_tokens:
            local = torch.as_tensor(
                sum(self._pending_tokens), device=self.accelerator.device, dtype=torch.int64
            )
            tokens = int(self.accelerator.reduce(local, reduction="sum").item())
            self._total_train_tokens += tokens // self._tp_size
            self._pending_tokens.clear()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def floating_point_ops(self, inputs) -> int:
        """Trainer's estimate (6 x tokens x non-embedding parameters), the parameter count taken once."""
        if self._flops_per_token is None:
            self._flops_per_token = super().floating_point_ops({"input_ids": torch.zeros(1, 1)})
        main = getattr(self.model, "main_input_name", "input_ids")
        return self._flops_per_token * inputs[main].numel() if main in inputs else 0


def all_reduce_mean(params: list[torch.nn.Parameter]) -> None:
    """Average the parameters' gradients over the ranks as DDP does (sum / world size), one flat
    all-reduce per dtype. A parameter without a gradient on this rank takes part with zeros, so every rank
    sends the same buffer layout."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(world)
        torch._foreach_copy_(grads, list(_unflatten_dense_tensors(flat, grads)))


def _lighten(model, trainable: list[torch.nn.Parameter]) -> None:
    """`model.train()` that walks the module tree only when a module is out of training mode (the model
    itself, or its last module: any model-wide `eval()` turns both), and `model.zero_grad()` over the
    trainable parameters. Set on this model object only."""
    last = list(model.modules())[-1]
    full_train = type(model).train

    def train(mode: bool = True):
        if mode and model.training and last.training:
            return model
        return full_train(model, mode)

    def zero_grad(set_to_none: bool = True) -> None:
        for p in trainable:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    model.train, model.zero_grad = train, zero_grad
