"""Training behaviour on the tiny model: what changes, what must not, and that the signal is right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset

from r1ft import chat
from r1ft.machine.gpu import Hardware
from r1ft.model.tiny import base_config
from r1ft.recipe import Layout, batch_layout, make_recipe
from r1ft.settings_load import load_settings
from r1ft.training.train import run_training

EXAMPLES = [
    ("What is 2 + 3?", "2 plus 3 makes 5.", "The answer is \\boxed{5}."),
    ("What is 7 times 6?", "7 sixes are 42.", "The answer is \\boxed{42}."),
    ("Solve for x: 3x + 5 = 20", "3x = 15 so x = 5.", "So \\boxed{x = 5}."),
    ("Derivative of x^3?", "Power rule: 3x^2.", "It is \\boxed{3x^2}."),
]
CPU = Hardware(device="cpu")


def dataset(tok, examples=EXAMPLES) -> Dataset:
    rows = []
    for i, (p, r, a) in enumerate(examples):
        row = chat.tokenize_example(tok, chat.user_message(p), r, a)
        rows.append({**row, "source": "test", "id": str(i)})
    return Dataset.from_list(rows)


def train_tiny(tmp_path: Path, base: Path, tok, steps: int, lr: str = "3e-3", extra: dict | None = None):
    env = {"R1FT_PRESET": "smoke", "R1FT_WORK_DIR": str(tmp_path / "work"), "R1FT_MAX_STEPS": str(steps),
           "R1FT_LEARNING_RATE": lr, "R1FT_SAVE_STEPS": "1000", "R1FT_GLOBAL_BATCH": "4", "R1FT_LORA_DROPOUT": "0",
           "R1FT_WARMUP_RATIO": "0", **(extra or {})}  # fmt: skip
    s = load_settings(env, env_file=None)
    ds = dataset(tok)
    run_dir = tmp_path / "run"
    return run_training(
        s, run_dir, base, tok, ds, None, make_recipe(s, CPU, 1, base_config()), CPU, []
    ), run_dir


def test_layout_keeps_sixteen_sequences_per_step():
    s = load_settings({}, env_file=None)
    for procs in (1, 2, 4, 8):
        assert batch_layout(s, procs).global_batch == 16
    s = load_settings({"R1FT_BATCH_SIZE": "2", "R1FT_GRAD_ACCUM": "8"}, env_file=None)
    assert batch_layout(s, 1) == Layout(2, 8, 1)
    s = load_settings({"R1FT_BATCH_SIZE": "2"}, env_file=None)
    assert batch_layout(s, 2) == Layout(2, 4, 2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_base, tiny_tokenizer):
    tmp = tmp_path_factory.mktemp("trained")
    result, run_dir = train_tiny(tmp, tiny_base, tiny_tokenizer, steps=40, lr="1e-2")
    return result, run_dir


def test_base_weights_unchanged_and_lora_weights_changed(trained, tiny_base):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    result, run_dir = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    for name, tensor in model.get_base_model().state_dict().items():
        clean = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(tensor, before[clean]), name
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved every one
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]


def test_merged_logits_equal_adapter_logits(trained, tiny_base, tiny_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from r1ft.export.merge import load_base_for_merge, max_logit_diff, merge_adapter

    _, run_dir = trained
    adapter_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32), str(run_dir / "adapter")
    ).eval()
    merged = merge_adapter(
        load_base_for_merge(tiny_base, None, "none", "cpu", torch.float32), run_dir / "adapter"
    )
    assert max_logit_diff(adapter_model, merged.eval(), tiny_tokenizer) < 1e-4


def test_saved_merged_model_reloads_identically(trained, tiny_base, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from r1ft.export.merge import load_base_for_merge, max_logit_diff, merge_adapter, save_sharded

    _, run_dir = trained
    merged = merge_adapter(
        load_base_for_merge(tiny_base, None, "none", "cpu", torch.float32), run_dir / "adapter"
    )
    shards = []
    info = save_sharded(
        merged, tiny_tokenizer, tmp_path / "merged", max_shard_size="100KB", on_shard=shards.append
    )
    assert len(info["shards"]) > 1 and len(shards) == len(info["shards"])
    assert (tmp_path / "merged" / "model.safetensors.index.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert max_logit_diff(merged.eval(), reloaded.eval(), tiny_tokenizer) < 1e-5


def test_trained_model_reproduces_a_training_completion_greedily(trained, tiny_base, tiny_tokenizer):
    """Template, masking, EOS and merge agree: from the inference prompt, greedy decoding gives the
    completion it was trained on, and stops at EOS."""
    from r1ft.export.merge import load_base_for_merge, merge_adapter

    _, run_dir = trained
    tok = tiny_tokenizer
    model = merge_adapter(
        load_base_for_merge(tiny_base, None, "none", "cpu", torch.float32), run_dir / "adapter"
    )
    problem, reasoning, answer = EXAMPLES[2]
    ids = torch.tensor([chat.prompt_ids(tok, chat.user_message(problem))])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=60, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    generated = tok.decode(out[0, ids.shape[1] :])
    assert generated == chat.completion_text(reasoning, answer, tok.eos_token)


def test_padding_free_batches_match_padded_ones(tiny_base, tiny_tokenizer):
    """Same per-sequence losses and gradients whether a batch is padded or packed without padding."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from r1ft.training.adapters import lora_config

    s = load_settings({"R1FT_PRESET": "smoke", "R1FT_LORA_DROPOUT": "0"}, env_file=None)
    rows = [{k: r[k] for k in ("input_ids", "labels")} for r in dataset(tiny_tokenizer)]
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(base, lora_config(s))
    for name, p in model.named_parameters():  # non-zero B so LoRA gradients are informative
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)

    def per_sequence(batch, spans):
        # use_cache=False as in training: with a cache, transformers does not derive the per-sequence
        # mask from position_ids, and packed sequences would attend to each other.
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits.float()
        labels = batch["labels"]
        logp = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), reduction="none"
        ).view(labels.size(0), -1)
        mask = (labels[:, 1:] != -100).float()
        return [(logp[r, a:b] * mask[r, a:b]).sum() / mask[r, a:b].sum() for r, a, b in spans]

    def grads(losses):
        model.zero_grad()
        torch.stack(losses).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    pid = tiny_tokenizer.pad_token_id
    padded = DataCollatorForLanguageModeling(pad_token_id=pid)(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    losses_padded = per_sequence(padded, [(i, 0, n - 1) for i, n in enumerate(lengths)])
    g_padded = grads(losses_padded)
    packed = DataCollatorForLanguageModeling(pad_token_id=pid, padding_free=True)(rows)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    losses_packed = per_sequence(packed, [(0, a, a + n - 1) for a, n in zip(starts, lengths, strict=True)])
    g_packed = grads(losses_packed)
    for lp, lq in zip(losses_padded, losses_packed, strict=True):
        assert abs(lp.item() - lq.item()) < 1e-5
    for name, g in g_padded.items():
        assert torch.allclose(g, g_packed[name], atol=1e-6, rtol=1e-4), name


def test_module_patches_made_during_training_are_undone(tiny_base):
    """Liger replaces classes in transformers' modeling module for the whole process; after training the
    models built later (merge, evaluation, the GGUF check on CPU) must get the original ones."""
    from transformers import AutoModelForCausalLM
    from transformers.models.qwen2 import modeling_qwen2

    from r1ft.training.train import module_patches_undone

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    original_norm, original_rope = modeling_qwen2.Qwen2RMSNorm, modeling_qwen2.apply_rotary_pos_emb
    with module_patches_undone(model):
        modeling_qwen2.Qwen2RMSNorm = type("PatchedNorm", (torch.nn.Module,), {})  # as Liger does
        modeling_qwen2.apply_rotary_pos_emb = lambda *a, **k: None
        modeling_qwen2.ADDED_BY_PATCH = 1
    assert modeling_qwen2.Qwen2RMSNorm is original_norm
    assert modeling_qwen2.apply_rotary_pos_emb is original_rope
    assert not hasattr(modeling_qwen2, "ADDED_BY_PATCH")
    fresh = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert type(fresh.model.norm) is original_norm


def test_lean_trainer_logs_and_trains_as_trl_does(tiny_base, tiny_tokenizer, tmp_path):
    """The trainer that keeps metrics on the device until a logging step gives TRL's losses, gradient
    norms and logged entropy, token accuracy and token counts, in training and evaluation."""
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from r1ft.training.adapters import lora_config, sft_config
    from r1ft.training.trainer import LeanSFTTrainer

    env = {"R1FT_PRESET": "smoke", "R1FT_WORK_DIR": str(tmp_path), "R1FT_MAX_STEPS": "4", "R1FT_GLOBAL_BATCH": "4",
           "R1FT_BATCH_SIZE": "2", "R1FT_LOGGING_STEPS": "2", "R1FT_LORA_DROPOUT": "0", "R1FT_EVAL_STEPS": "2"}  # fmt: skip
    s = load_settings(env, env_file=None)
    ds = dataset(tiny_tokenizer)

    def history(trainer_class):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(
            tiny_base, dtype=torch.float32, attn_implementation="sdpa"
        )
        args = sft_config(s, tmp_path / trainer_class.__name__, make_recipe(s, CPU, 1, base_config()))
        args.save_strategy = "no"
        trainer = trainer_class(
            model=model, args=args, train_dataset=ds, eval_dataset=ds,
            processing_class=tiny_tokenizer, peft_config=lora_config(s),
        )  # fmt: skip
        trainer.train()
        trainer.evaluate()
        return [{k: v for k, v in h.items() if "runtime" not in k and "per_second" not in k}
                for h in trainer.state.log_history]  # fmt: skip

    stock, lean = history(SFTTrainer), history(LeanSFTTrainer)
    assert [sorted(h) for h in lean] == [sorted(h) for h in stock]
    keys = {k for h in stock for k in h}
    assert {
        "loss",
        "grad_norm",
        "entropy",
        "mean_token_accuracy",
        "num_tokens",
        "eval_loss",
        "eval_entropy",
    } <= keys
    for h_lean, h_stock in zip(lean, stock, strict=True):
        for key, value in h_stock.items():
            assert h_lean[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_lean_trainer_trains_in_training_mode_after_each_evaluation(tiny_base, tiny_tokenizer, tmp_path):
    """`train()` walks the modules only when one is out of training mode: after every evaluation (which
    turns the whole model to eval), the next training forward runs with dropout on in every module."""
    from transformers import AutoModelForCausalLM

    from r1ft.training.adapters import lora_config, sft_config
    from r1ft.training.trainer import LeanSFTTrainer

    env = {"R1FT_PRESET": "smoke", "R1FT_WORK_DIR": str(tmp_path), "R1FT_MAX_STEPS": "5", "R1FT_GLOBAL_BATCH": "4",
           "R1FT_LORA_DROPOUT": "0.5", "R1FT_EVAL_STEPS": "1"}  # fmt: skip
    s = load_settings(env, env_file=None)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32, attn_implementation="sdpa")
    args = sft_config(s, tmp_path / "run", make_recipe(s, CPU, 1, base_config()))
    args.save_strategy = "no"
    ds = dataset(tiny_tokenizer)
    trainer = LeanSFTTrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds,
                             processing_class=tiny_tokenizer, peft_config=lora_config(s))  # fmt: skip
    seen: list[tuple[bool, bool]] = []  # (grad enabled, every module in training mode)
    modules = list(trainer.model.modules())
    trainer.model.register_forward_pre_hook(
        lambda *_: seen.append((torch.is_grad_enabled(), all(m.training for m in modules)))
    )
    trainer.train()
    training, evaluating = [t for g, t in seen if g], [t for g, t in seen if not g]
    assert len(training) == 5 and all(training)
    assert len(evaluating) >= 5 and not any(evaluating)


def test_lean_trainer_freezes_the_warm_up_objects_out_of_garbage_collection(
    tiny_base, tiny_tokenizer, tmp_path
):
    """After this process's first steps (compilation's objects) the live objects are frozen out of later
    full collections; not before, and a resumed run counts its steps from where it resumed."""
    import gc

    from transformers import AutoModelForCausalLM, TrainerCallback

    from r1ft.training.adapters import lora_config, sft_config
    from r1ft.training.trainer import FREEZE_AFTER_STEPS, LeanSFTTrainer

    frozen_at_step_end: dict[int, int] = {}

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            frozen_at_step_end[state.global_step] = gc.get_freeze_count()

    def train(max_steps: int, resume: bool = False) -> None:
        env = {"R1FT_PRESET": "smoke", "R1FT_WORK_DIR": str(tmp_path), "R1FT_MAX_STEPS": str(max_steps),
               "R1FT_GLOBAL_BATCH": "2", "R1FT_SAVE_STEPS": "2"}  # fmt: skip
        s = load_settings(env, env_file=None)
        model = AutoModelForCausalLM.from_pretrained(
            tiny_base, dtype=torch.float32, attn_implementation="sdpa"
        )
        args = sft_config(s, tmp_path / "run", make_recipe(s, CPU, 1, base_config()), has_eval=False)
        gc.unfreeze()
        frozen_at_step_end.clear()
        try:
            trainer = LeanSFTTrainer(model=model, args=args, train_dataset=dataset(tiny_tokenizer),
                                     processing_class=tiny_tokenizer, peft_config=lora_config(s),
                                     callbacks=[Watch()])  # fmt: skip
            trainer.train(resume_from_checkpoint=resume or None)
        finally:
            gc.unfreeze()

    n = FREEZE_AFTER_STEPS
    train(n + 1)
    assert [frozen_at_step_end[i] for i in range(1, n + 1)] == [0] * n
    assert frozen_at_step_end[n + 1] > 10_000
    train(2 * (n + 1), resume=True)  # from the last checkpoint (step n + 1): this process's own count
    first = min(frozen_at_step_end)
    assert first == n + 2
    assert [frozen_at_step_end[first + i] for i in range(n)] == [0] * n
    assert frozen_at_step_end[first + n] > 10_000
