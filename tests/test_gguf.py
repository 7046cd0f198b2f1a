"""GGUF export: files that reload with the merged model's logits, tokenizer and template, one at a time."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from r1ft.chat import prompt_ids, user_message
from r1ft.export import gguf as ge
from r1ft.export.gguf_types import SUPPORTED_GGUF_TYPES


@pytest.fixture(scope="module")
def merged(tiny_base, tmp_path_factory) -> Path:
    """A run's `merged/` dir as the merge step writes it: the tiny model in bf16 plus its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = tmp_path_factory.mktemp("run") / "merged"
    AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.bfloat16).save_pretrained(dest)
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(dest)
    shutil.copy(tiny_base / "generation_config.json", dest / "generation_config.json")
    return dest


@pytest.fixture(scope="module")
def exported(merged, tmp_path_factory):
    """f16 and q8_0 exported with a callback that, like a publisher short of disk, deletes each file."""
    out = tmp_path_factory.mktemp("gguf")
    kept = tmp_path_factory.mktemp("kept")
    seen: list[tuple[str, list[str]]] = []

    def publish_and_delete(path: Path) -> None:
        seen.append((path.name, sorted(p.name for p in out.iterdir())))
        shutil.move(path, kept / path.name)

    results = ge.export_gguf(merged, out, ["f16", "q8_0"], on_file_ready=publish_and_delete)
    return results, seen, kept, out


def _logits(model, ids: list[int]):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def test_both_files_verified_and_handed_over_one_at_a_time(exported):
    results, seen, kept, out = exported
    assert [(r.type, r.path.name, r.verified) for r in results] == [
        ("f16", "model-f16.gguf", True),
        ("q8_0", "model-q8_0.gguf", True),
    ], [r.message for r in results]
    # once per file, in order, and at that moment the only file in the output dir
    assert seen == [("model-f16.gguf", ["model-f16.gguf"]), ("model-q8_0.gguf", ["model-q8_0.gguf"])]
    assert list(out.iterdir()) == []
    for r in results:
        assert r.size_bytes == (kept / r.path.name).stat().st_size
        assert r.seconds > 0 and r.max_logit_err is not None and "tokenizer and template agree" in r.message


@pytest.mark.parametrize("gguf_type, bound", [("f16", 1e-4), ("q8_0", 0.15)])
def test_reloaded_logits_match_the_merged_model(exported, merged, gguf_type, bound):
    """Reload through transformers' GGUF loader: f16 of a bf16 model is lossless up to float summation
    order (measured ~1e-6 of the logits' std); q8_0 carries its rounding (measured ~0.05 on this model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, kept, _ = exported
    tok = AutoTokenizer.from_pretrained(merged)
    ids = prompt_ids(tok, user_message("A 2.0 kg mass moves at 3.0 m/s. Find its kinetic energy.", "J"))
    want = _logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), ids)
    model = AutoModelForCausalLM.from_pretrained(
        kept, gguf_file=f"model-{gguf_type}.gguf", dtype=torch.float32
    )
    got = _logits(model, ids)
    rel = float((got - want).abs().max() / want.std())
    assert rel < bound
    # the quantized model still ranks tokens like the merged one
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9


def test_file_carries_the_qwen2_metadata_tokenizer_and_template(exported, merged):
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    _, _, kept, _ = exported
    reader = gguf.GGUFReader(kept / "model-q8_0.gguf")
    f = {k: v.contents() for k, v in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    cfg = AutoConfig.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    assert f["general.architecture"] == "qwen2" and f["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert f["general.name"] == merged.parent.name
    assert (f["qwen2.block_count"], f["qwen2.embedding_length"], f["qwen2.feed_forward_length"]) == (
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
    )
    assert (f["qwen2.attention.head_count"], f["qwen2.attention.head_count_kv"]) == (4, 2)
    assert f["qwen2.context_length"] == cfg.max_position_embeddings
    assert f["qwen2.rope.freq_base"] == 10000.0
    assert f["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert f["general.sampling.temp"] == pytest.approx(0.6)
    assert f["general.sampling.top_p"] == pytest.approx(0.95)
    assert f["tokenizer.chat_template"] == tok.chat_template
    t = {k: reader.fields[k].contents() for k in reader.fields if k.startswith("tokenizer.ggml.")}
    assert t["tokenizer.ggml.model"] == "gpt2" and t["tokenizer.ggml.pre"] == "deepseek-r1-qwen"
    assert len(t["tokenizer.ggml.tokens"]) == cfg.vocab_size and len(t["tokenizer.ggml.merges"]) > 100
    assert t["tokenizer.ggml.bos_token_id"] == tok.bos_token_id
    assert t["tokenizer.ggml.eos_token_id"] == t["tokenizer.ggml.padding_token_id"] == tok.eos_token_id
    assert t["tokenizer.ggml.add_bos_token"] is True
    types = dict(zip(t["tokenizer.ggml.tokens"], t["tokenizer.ggml.token_type"], strict=True))
    assert types["<｜User｜>"] == types["<｜end▁of▁sentence｜>"] == gguf.TokenType.CONTROL
    assert types["<think>"] == types["</think>"] == gguf.TokenType.USER_DEFINED
    stored = {t.name: t.tensor_type for t in reader.tensors}
    assert stored["blk.0.attn_norm.weight"] == stored["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    assert stored["blk.0.attn_q.weight"] == stored["output.weight"] == gguf.GGMLQuantizationType.Q8_0


def test_tokenizer_read_back_reproduces_training_prompts(exported, merged):
    from transformers import AutoTokenizer

    _, _, kept, _ = exported
    want = AutoTokenizer.from_pretrained(merged)
    got = ge.gguf_tokenizer(kept / "model-f16.gguf")
    for problem in ["Solve 3x + 5 = 20.", user_message("Find ΔH at 298 K for 2 mol.", "kJ/mol")]:
        rendered = got.apply_chat_template(
            [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
        )
        assert rendered.endswith("<｜Assistant｜><think>\n")
        assert got(rendered, add_special_tokens=False)["input_ids"] == prompt_ids(want, problem)
    completion = "x = 5\n</think>\n\nThe answer is \\boxed{5}.<｜end▁of▁sentence｜>"
    assert got(completion)["input_ids"] == want(completion)["input_ids"]


@pytest.mark.parametrize("gguf_type, bound", [("f16", 0.01), ("q8_0", 0.15)])
def test_llama_cpp_runs_the_file_as_training_did(exported, merged, gguf_type, bound):
    """The runtime itself, where llama-cpp-python is installed (not a project dependency: CI skips this).
    llama.cpp computes in reduced precision (f16 activations; q8 activations for q8_0): measured 0.0015
    (f16) and 0.05 (q8_0) of the logits' std on this model."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, kept, _ = exported
    tok = AutoTokenizer.from_pretrained(merged)
    llm = llama_cpp.Llama(str(kept / f"model-{gguf_type}.gguf"), logits_all=True, n_ctx=512, verbose=False)
    problem = user_message("A 2.0 kg mass moves at 3.0 m/s. Find its kinetic energy.", "J")
    ids = prompt_ids(tok, problem)
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
    )
    assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == ids
    text = "x = 5\n</think>\n\nThe answer is \\boxed{5}.<｜end▁of▁sentence｜>"
    assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"]
    llm.eval(ids)
    got = torch.from_numpy(np.array(llm.scores[: len(ids)]))
    want = _logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), ids)
    assert float((got - want).abs().max() / want.std()) < bound


def test_sharded_checkpoint_exports_bf16_losslessly(merged, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "run" / "merged"
    AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16).save_pretrained(
        sharded, max_shard_size="100KB"
    )
    for f in merged.iterdir():
        if not f.name.startswith("model"):
            shutil.copy(f, sharded / f.name)
    assert (sharded / "model.safetensors.index.json").is_file()
    (result,) = ge.export_gguf(sharded, tmp_path / "gguf", ["bf16"])
    assert result.verified and result.max_logit_err == 0.0, result.message


def _flip_tensor_bytes(path: Path, name: str) -> None:
    import gguf

    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    with open(path, "r+b") as fh:
        fh.seek(t.data_offset)
        data = fh.read(t.n_bytes)
        fh.seek(t.data_offset)
        fh.write(bytes(b ^ 0xFF for b in data))


def test_corrupted_file_is_rejected_and_not_handed_over(merged, tmp_path, monkeypatch):
    write = ge.write_gguf

    def write_then_corrupt(merged_dir, path, gguf_type):
        notes = write(merged_dir, path, gguf_type)
        _flip_tensor_bytes(path, "blk.1.attn_q.weight")
        return notes

    monkeypatch.setattr(ge, "write_gguf", write_then_corrupt)
    handed: list[Path] = []
    (result,) = ge.export_gguf(merged, tmp_path, ["q8_0"], on_file_ready=handed.append)
    assert not result.verified and handed == [] and list(tmp_path.iterdir()) == []
    assert result.message.startswith("rejected: logits differ") and result.max_logit_err > 1


def test_unknown_type_is_refused_before_any_work(merged, tmp_path):
    with pytest.raises(ValueError, match="q4_k_m"):
        ge.export_gguf(merged, tmp_path / "out", ["q8_0", "q4_k_m"])
    assert not (tmp_path / "out").exists()


def test_every_supported_type_has_a_writer_and_a_bound():
    assert set(ge.MAX_REL_LOGIT_ERR) == SUPPORTED_GGUF_TYPES
    assert {ge.estimate_gguf_bytes(1, t) > 0 for t in SUPPORTED_GGUF_TYPES} == {True}


def test_estimate_covers_the_real_model():
    n = 1_777_088_000  # DeepSeek-R1-Distill-Qwen-1.5B
    assert 1.88e9 < ge.estimate_gguf_bytes(n, "q8_0") < 1.92e9
    assert 3.55e9 < ge.estimate_gguf_bytes(n, "f16") == ge.estimate_gguf_bytes(n, "bf16") < 3.58e9


def test_pre_tokenizer_name_follows_the_split_rules(tiny_tokenizer):
    from tokenizers import pre_tokenizers

    from r1ft.tiny import build_tokenizer

    # transformers loads the tiny tokenizer as a Qwen2 tokenizer, with the base model's split regex
    assert ge.pre_tokenizer_name(tiny_tokenizer) == "deepseek-r1-qwen"
    gpt2_style = build_tokenizer()  # its own tokenizer.json pre-tokenizer, not transformers' Qwen2 one
    assert ge.pre_tokenizer_name(gpt2_style) == "gpt-2"
    gpt2_style.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="pre-tokenizer"):
        ge.pre_tokenizer_name(gpt2_style)


def test_markdown_gives_ready_commands_and_says_what_was_withheld(tmp_path):
    results = [
        ge.GgufResult("f16", tmp_path / "model-f16.gguf", 0, 1.0, False, 3.2, "rejected: logits differ"),
        ge.GgufResult("q8_0", tmp_path / "model-q8_0.gguf", 1_890_000_000, 60.0, True, 0.03, "ok"),
    ]
    md = ge.gguf_markdown(results, "someone/r1ft-math")
    assert "| `gguf/model-q8_0.gguf` | q8_0 | 1.89 GB | 0.03 | verified |" in md
    assert "not published: rejected: logits differ" in md
    assert "hf download someone/r1ft-math gguf/model-q8_0.gguf --local-dir ." in md
    assert "llama-cli -m gguf/model-q8_0.gguf --jinja" in md
    assert "FROM ./gguf/model-q8_0.gguf" in md and "<｜Assistant｜><think>\n" in md
    assert "ollama create r1ft-q8_0 -f Modelfile" in md
    assert "aws s3 cp s3://b/p/gguf/model-q8_0.gguf" in ge.gguf_markdown(results, "s3://b/p/")
    assert ge.gguf_markdown([], "x") == ""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def full_size_merged(tmp_path_factory) -> Path:
    """The real architecture with random bf16 weights (3.55 GB), the tiny tokenizer padded to its vocab."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1ft.tiny import base_config, build_tokenizer

    dest = tmp_path_factory.mktemp("full") / "merged"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**base_config())).to(torch.bfloat16)
    model.to("cpu").save_pretrained(dest)
    build_tokenizer().save_pretrained(dest)
    return dest


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="full-size export runs on the GPU machine")
@pytest.mark.parametrize("gguf_type", ["q8_0", "f16"])
def test_full_size_export_fits_a_16_gb_budget(full_size_merged, tmp_path, gguf_type):
    import resource
    import threading
    import time

    def used() -> int:
        return sum(
            f.stat().st_size for d in (full_size_merged, tmp_path) for f in d.rglob("*") if f.is_file()
        )

    peak, done = [used()], threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            peak.append(used())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.monotonic()
    (result,) = ge.export_gguf(full_size_merged, tmp_path, [gguf_type])
    done.set()
    watcher.join()
    n_params = 1_777_088_000
    print(
        f"\nfull-size {gguf_type}: {result.size_bytes / 1e9:.3f} GB (estimate "
        f"{ge.estimate_gguf_bytes(n_params, gguf_type) / 1e9:.3f}), {time.monotonic() - start:.0f} s, "
        f"peak disk {max(peak) / 1e9:.2f} GB, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB, "
        f"rel logit err {result.max_logit_err:.3g}: {result.message}"
    )
    assert result.verified, result.message
    assert result.size_bytes <= ge.estimate_gguf_bytes(n_params, gguf_type)
    assert max(peak) < 16e9
