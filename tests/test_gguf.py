"""GGUF export: files llama.cpp itself runs like the merged model, k-quants as llama-quantize mixes them and
ggml quantizes them, written and handed over one at a time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from r1ft.export import gguf as ge
from r1ft.export import gguf_check as gc
from r1ft.export.gguf_quant import storage_type, use_more_bits
from r1ft.export.gguf_types import SUPPORTED_GGUF_TYPES


def _save_merged(model, tokenizer_dir: Path, dest: Path) -> Path:
    """A run's `merged/` dir as the merge step writes it: bf16 weights, the tokenizer, the generation config."""
    import torch
    from transformers import AutoTokenizer

    model.to(torch.bfloat16).save_pretrained(dest)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(dest)
    shutil.copy(tokenizer_dir / "generation_config.json", dest / "generation_config.json")
    return dest


@pytest.fixture(scope="module")
def merged(tiny_base, tmp_path_factory) -> Path:
    """The tiny model (hidden size 64: every k-quant tensor falls back to Q5_0/Q5_1/Q8_0)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    return _save_merged(model, tiny_base, tmp_path_factory.mktemp("run") / "merged")


@pytest.fixture(scope="module")
def merged_256(tiny_base, tmp_path_factory) -> Path:
    """Rows of 256 and 512 values, so the k-quants are real K blocks; two layers, the second one of those
    that keep more bits."""
    import json

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tiny = json.loads((tiny_base / "config.json").read_text())
    keep = (
        "vocab_size",
        "num_hidden_layers",
        "num_key_value_heads",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    )
    config = Qwen2Config(
        **{k: tiny[k] for k in keep},
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(
            0.0, 0.25
        )  # sharp distributions, as a trained model's (and the tiny one's)
    return _save_merged(model, tiny_base, tmp_path_factory.mktemp("run256") / "merged")


@pytest.fixture(scope="module")
def exported(merged, tmp_path_factory):
    """f16, q8_0 and q4_k_m exported with a callback that, like a publisher short of disk, moves each away."""
    out = tmp_path_factory.mktemp("gguf")
    kept = tmp_path_factory.mktemp("kept")
    seen: list[tuple[str, list[str]]] = []

    def publish_and_delete(path: Path) -> None:
        seen.append((path.name, sorted(p.name for p in out.iterdir())))
        shutil.move(path, kept / path.name)

    results = ge.export_gguf(merged, out, ["f16", "q8_0", "q4_k_m"], on_file_ready=publish_and_delete)
    return results, seen, kept, out


@pytest.fixture(scope="module")
def exported_256(merged_256, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf256")
    results = ge.export_gguf(merged_256, out, ["q4_k_m", "q6_k"])
    return {r.type: r for r in results}


def _types(path: Path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def test_files_checked_by_llama_cpp_and_handed_over_one_at_a_time(exported):
    results, seen, kept, out = exported
    assert [(r.type, r.path.name, r.verified) for r in results] == [
        ("f16", "model-f16.gguf", True),
        ("q8_0", "model-q8_0.gguf", True),
        ("q4_k_m", "model-q4_k_m.gguf", True),
    ], [r.message for r in results]
    # once per file, in order, and at that moment the only file in the output dir
    assert [s[0] for s in seen] == ["model-f16.gguf", "model-q8_0.gguf", "model-q4_k_m.gguf"]
    assert all(listing == [name] for name, listing in seen)
    assert list(out.iterdir()) == []
    for r in results:
        assert r.size_bytes == (kept / r.path.name).stat().st_size
        assert r.message.startswith("llama.cpp: prompts tokenized and rendered as in training")
        assert 0 <= r.kl_divergence <= gc.MAX_KL[r.type] and 0 < r.check_seconds < r.seconds
    assert "greedy 16 tokens as transformers'" in results[0].message


def test_llama_cpp_reproduces_the_merged_model_in_the_kept_file(exported, merged):
    """The kept file, reopened: llama.cpp's ids for a new problem's prompt are the training ids, and its
    f16 log-probabilities are the merged model's within float error."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1ft.chat import prompt_ids, prompt_text, user_message
    from r1ft.export.llamacpp import Model

    _, _, kept, _ = exported
    tok = AutoTokenizer.from_pretrained(merged)
    problem = user_message("A 2.0 kg mass moves at 3.0 m/s. Find its kinetic energy.", "J")
    ids = prompt_ids(tok, problem)
    with Model(kept / "model-f16.gguf", 512) as llama:
        assert llama.tokenize(prompt_text(tok, problem), add_special=False) == ids
        got = llama.logits(ids)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1).numpy()
    assert gc.mean_kl([want], [got]) < gc.MAX_KL["f16"]


def test_tiny_k_quant_takes_llama_cpps_fallbacks(exported):
    """Rows of 64 and 128 values fill no 256-value block: Q4_K -> Q5_0 and Q6_K -> Q8_0, as llama-quantize."""
    _, _, kept, _ = exported
    types = _types(kept / "model-q4_k_m.gguf")
    assert types["output.weight"] == types["blk.1.attn_v.weight"] == types["blk.1.ffn_down.weight"] == "Q8_0"
    assert (
        types["token_embd.weight"] == types["blk.0.attn_v.weight"] == types["blk.1.attn_q.weight"] == "Q5_0"
    )
    assert types["blk.0.attn_norm.weight"] == types["blk.0.attn_q.bias"] == "F32"
    (r,) = [r for r in exported[0] if r.type == "q4_k_m"]
    assert "stored as Q5_0/Q8_0" in r.message


def test_k_quant_mix_is_llama_quantizes_and_its_blocks_are_ggmls(exported_256, merged_256):
    """At Q4_K_M the output and, in the layers that keep more bits, attn_v and ffn_down are Q6_K; the rest
    Q4_K, token embedding included. A tensor's bytes in the file are ggml's reference quantizer's."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    from r1ft.export.llamacpp import reference_quantize

    q4, q6 = exported_256["q4_k_m"], exported_256["q6_k"]
    assert q4.verified and q6.verified, (q4.message, q6.message)
    assert "rows not a multiple" not in q4.message
    types = _types(q4.path)
    assert types["output.weight"] == types["blk.1.attn_v.weight"] == types["blk.1.ffn_down.weight"] == "Q6_K"
    others = {
        k: v
        for k, v in types.items()
        if k not in ("output.weight", "blk.1.attn_v.weight", "blk.1.ffn_down.weight")
    }
    assert {v for k, v in others.items() if k.endswith(".weight") and "norm" not in k} == {"Q4_K"}
    assert {v for k, v in _types(q6.path).items() if "norm" not in k and k.endswith(".weight")} == {"Q6_K"}
    assert gguf.GGUFReader(q4.path).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert q6.kl_divergence < q4.kl_divergence  # more bits, closer to the merged model

    tensor = next(t for t in gguf.GGUFReader(q4.path).tensors if t.name == "blk.0.ffn_up.weight")
    with safe_open(merged_256 / "model.safetensors", framework="pt") as st:
        rows = st.get_tensor("model.layers.0.mlp.up_proj.weight").float().numpy()
    want = reference_quantize(rows, "q4_K")[: tensor.n_bytes]
    assert np.asarray(tensor.data).tobytes() == want


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q5_K", "Q5_0", "Q5_1", "Q8_0"])
def test_libgguf_blocks_equal_ggmls_reference_quantizer(qtype):
    """libgguf against ggml's `quantize_row_*_ref` inside llama.cpp's library, byte for byte, on rows of
    varied scale with zeros and an outlier (the K types and the fallbacks llama-quantize uses)."""
    import libgguf
    import numpy as np

    from r1ft.export.llamacpp import reference_quantize

    rng = np.random.default_rng(7)
    rows = (rng.standard_normal((16, 1536)) * rng.uniform(1e-3, 4.0, (16, 1))).astype(np.float32)
    rows[3, :300], rows[5, 11], rows[9] = 0.0, 60.0, 1e-8
    ours = libgguf.quantize_rows(rows, libgguf.GGMLQuantizationType[qtype]).tobytes()
    assert ours == reference_quantize(rows, "q" + qtype[1:])[: len(ours)]  # ggml names them q4_K, q5_0...


def _flip_tensor_bytes(path: Path, name: str) -> None:
    import gguf

    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    with open(path, "r+b") as fh:
        fh.seek(t.data_offset)
        data = fh.read(t.n_bytes)
        fh.seek(t.data_offset)
        fh.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.parametrize("model, gguf_type", [("merged", "q8_0"), ("merged_256", "q4_k_m")])
def test_corrupted_file_is_refused_and_not_handed_over(model, gguf_type, request, tmp_path, monkeypatch):
    write = ge.write_gguf

    def write_then_corrupt(merged_dir, path, t, stop_check=None):
        notes = write(merged_dir, path, t, stop_check)
        _flip_tensor_bytes(path, "blk.1.attn_q.weight")
        return notes

    monkeypatch.setattr(ge, "write_gguf", write_then_corrupt)
    handed: list[Path] = []
    (result,) = ge.export_gguf(
        request.getfixturevalue(model), tmp_path, [gguf_type], on_file_ready=handed.append
    )
    assert not result.verified and handed == [] and list(tmp_path.iterdir()) == []
    assert result.message.startswith("rejected: log-probabilities differ from the merged model's")
    assert result.kl_divergence > 3 * gc.MAX_KL[gguf_type], result.message


def test_truncated_file_is_refused_with_llama_cpps_reason(merged, tmp_path, monkeypatch):
    write = ge.write_gguf

    def write_then_truncate(merged_dir, path, t, stop_check=None):
        notes = write(merged_dir, path, t, stop_check)
        with open(path, "r+b") as fh:
            fh.truncate(path.stat().st_size // 2)
        return notes

    monkeypatch.setattr(ge, "write_gguf", write_then_truncate)
    (result,) = ge.export_gguf(merged, tmp_path, ["q8_0"])
    assert not result.verified and result.kl_divergence is None and list(tmp_path.iterdir()) == []
    assert "llama-server could not start" in result.message or "could not load" in result.message
    assert "not within the file bounds" in result.message or "failed to load" in result.message


def test_a_template_llama_cpp_renders_otherwise_is_refused(merged, tmp_path):
    """The file's template must give the training prompt: one that drops `<think>\\n` from the generation
    prompt (the template before February 2025) is caught by llama.cpp's rendering."""
    ref = gc.reference(merged)
    old = tmp_path / "run" / "merged"
    shutil.copytree(merged, old)
    template = (old / "chat_template.jinja").read_text(encoding="utf-8")
    assert "<｜Assistant｜><think>\\n" in template
    (old / "chat_template.jinja").write_text(template.replace("<｜Assistant｜><think>\\n", "<｜Assistant｜>"))
    path = tmp_path / "model-f16.gguf"
    ge.write_gguf(old, path, "f16")
    verdict = gc.check_gguf(path, "f16", ref)
    assert not verdict.ok and "llama.cpp's rendering of conversation 0" in verdict.message
    assert verdict.kl is not None and verdict.kl <= gc.MAX_KL["f16"]  # the weights themselves are fine


def test_greedy_check_allows_near_ties_only():
    import numpy as np

    logits = np.zeros((3, 10), dtype=np.float32)
    logits[:, 0] = [5.0, 5.0, 5.0]
    logits[1, 7] = 5.0 - 0.5 * gc.GREEDY_TIE * float(logits[1].std())  # a near-tie at step 1
    assert gc.greedy_problem([0, 0, 0], logits, [0, 0, 0]) is None
    assert gc.greedy_problem([0, 0, 0], logits, [0, 7, 3]) is None  # parted at the tie: the rest not compared
    assert "greedy token 0 is 3" in gc.greedy_problem([0, 0, 0], logits, [3, 0, 0])


def test_mean_kl_is_zero_for_the_same_distribution_and_infinite_for_nan():
    import numpy as np

    logits = np.random.default_rng(0).standard_normal((4, 50))
    logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert gc.mean_kl([logprobs], [logits + 3.0]) == pytest.approx(0.0, abs=1e-12)
    assert gc.mean_kl([logprobs], [logits * 2]) > 0.1
    assert gc.mean_kl([logprobs], [np.full_like(logits, np.nan)]) == float("inf")


def test_sharded_checkpoint_exports_bf16(merged, tmp_path):
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
    assert result.verified and result.kl_divergence <= gc.MAX_KL["bf16"], result.message


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


def test_unknown_type_is_refused_before_any_work(merged, tmp_path):
    with pytest.raises(ValueError, match="q2_k"):
        ge.export_gguf(merged, tmp_path / "out", ["q8_0", "q2_k"])
    assert not (tmp_path / "out").exists()


def test_every_supported_type_has_a_bound_and_an_estimate():
    from r1ft.model.tiny import base_config

    assert set(gc.MAX_KL) == SUPPORTED_GGUF_TYPES
    config = base_config()
    assert all(
        ge.estimate_gguf_bytes(config, t) > ge.gguf_file_bytes(config, t) > 0 for t in SUPPORTED_GGUF_TYPES
    )


def test_real_model_mix_and_estimates_match_published_files():
    """DeepSeek-R1-Distill-Qwen-1.5B: the layers that keep more bits at Q4_K_M, and the sizes of the
    files llama.cpp users publish for it (Unsloth's Q8_0 1.89 GB and Q5_K_M 1.29 GB)."""
    from r1ft.model.tiny import base_config

    config = base_config()
    more = [i for i in range(28) if use_more_bits(i, 28)]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]
    for i in range(28):
        want = "Q6_K" if i in more else "Q4_K"
        assert storage_type(f"blk.{i}.attn_v.weight", (256, 1536), "q4_k_m", 28).name == want
        assert storage_type(f"blk.{i}.ffn_down.weight", (1536, 8960), "q4_k_m", 28).name == want
        assert storage_type(f"blk.{i}.ffn_up.weight", (8960, 1536), "q4_k_m", 28).name == "Q4_K"
    assert storage_type("token_embd.weight", (151936, 1536), "q4_k_m", 28).name == "Q4_K"
    assert storage_type("token_embd.weight", (151936, 1536), "q4_k_m", 28, tied=True).name == "Q6_K"
    assert storage_type("output.weight", (151936, 1536), "q4_k_m", 28).name == "Q6_K"
    assert storage_type("output.weight", (151936, 1536), "q8_0", 28).name == "Q8_0"
    gb = {t: ge.gguf_file_bytes(config, t) / 1e9 for t in SUPPORTED_GGUF_TYPES}
    assert 1.885 < gb["q8_0"] < 1.91 and 1.28 < gb["q5_k_m"] < 1.30
    assert gb["q4_k_m"] < gb["q5_k_m"] < gb["q6_k"] < gb["q8_0"] < gb["f16"] == gb["bf16"] < 3.58


def test_pre_tokenizer_name_follows_the_split_rules(tiny_tokenizer):
    from tokenizers import pre_tokenizers

    from r1ft.model.tiny import build_tokenizer

    # transformers loads the tiny tokenizer as a Qwen2 tokenizer, with the base model's split regex
    assert ge.pre_tokenizer_name(tiny_tokenizer) == "deepseek-r1-qwen"
    gpt2_style = build_tokenizer()  # its own tokenizer.json pre-tokenizer, not transformers' Qwen2 one
    assert ge.pre_tokenizer_name(gpt2_style) == "gpt-2"
    gpt2_style.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="pre-tokenizer"):
        ge.pre_tokenizer_name(gpt2_style)


def test_markdown_gives_ready_commands_for_the_k_quant_and_says_what_was_withheld(tmp_path):
    from r1ft.publish.location import parse_location
    from r1ft.report.card import gguf_section
    from r1ft.report.schema import GgufRecord

    def record(t, size, verified, kl, message):
        return GgufRecord(type=t, path=str(tmp_path / f"model-{t}.gguf"), size_bytes=size, verified=verified,
                          kl_divergence=kl, message=message)  # fmt: skip

    results = [
        record("f16", 0, False, 3.2, "rejected: log-probabilities differ"),
        record("q8_0", 1_890_000_000, True, 0.0031, "ok"),
        record("q4_k_m", 1_120_000_000, True, 0.05, "ok"),
    ]
    md = gguf_section(results, parse_location("hf://someone/r1ft-math"))
    assert "| `gguf/model-q8_0.gguf` | q8_0 | 1.89 GB | 0.0031 | verified by llama.cpp |" in md
    assert "| `gguf/model-q4_k_m.gguf` | q4_k_m | 1.12 GB | 0.05 | verified by llama.cpp |" in md
    assert "not published: rejected: log-probabilities differ" in md
    assert "hf download someone/r1ft-math gguf/model-q4_k_m.gguf --local-dir ." in md
    assert "llama-cli -m gguf/model-q4_k_m.gguf --jinja" in md and "llama-cli -m gguf/model-q8_0" not in md
    assert "FROM ./gguf/model-q4_k_m.gguf" in md and "<｜Assistant｜><think>\n" in md
    assert "ollama create r1ft-q4_k_m -f Modelfile" in md
    assert "aws s3 cp s3://bucket/p/gguf/model-q4_k_m.gguf" in gguf_section(
        results, parse_location("s3://bucket/p/")
    )
    assert "llama-cli -m gguf/model-q8_0.gguf" in gguf_section(results[:2], parse_location("x"))
    assert gguf_section([], parse_location("x")) == ""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def full_size_merged(tmp_path_factory) -> Path:
    """The real architecture with random bf16 weights (3.55 GB), the tiny tokenizer padded to its vocab."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1ft.model.tiny import base_config, build_tokenizer

    dest = tmp_path_factory.mktemp("full") / "merged"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**base_config())).to(torch.bfloat16)
    model.to("cpu").save_pretrained(dest)
    build_tokenizer().save_pretrained(dest)
    return dest


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="full-size export runs on the GPU machine")
@pytest.mark.parametrize("gguf_type", ["q4_k_m", "q8_0", "f16"])
def test_full_size_export_fits_a_16_gb_budget(full_size_merged, tmp_path, gguf_type):
    import resource
    import threading
    import time

    from r1ft.model.tiny import base_config

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
    estimate = ge.gguf_file_bytes(base_config(), gguf_type)
    print(
        f"\nfull-size {gguf_type}: {result.size_bytes / 1e9:.3f} GB (estimate {estimate / 1e9:.3f}), "
        f"{time.monotonic() - start:.0f} s (check {result.check_seconds:.0f} s), peak disk {max(peak) / 1e9:.2f} GB, "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB, KL {result.kl_divergence}: "
        f"{result.message}"
    )
    assert result.verified, result.message
    assert result.size_bytes <= estimate
    assert max(peak) < 16e9


def test_a_stop_between_tensors_deletes_the_file_being_written_and_keeps_the_finished_ones(merged, tmp_path):
    """The job's stop flag is checked before each tensor: the stop raised mid-file leaves no `.partial`, and
    the files finished before it are kept and were reported as they came."""
    from r1ft.machine.signals import Stopped

    calls, reported = {"n": 0}, []
    tensors = len(ge.plan_tensors(merged, json.loads((merged / "config.json").read_text()), "f16"))

    def stop_check() -> None:  # the stop arrives halfway through the second file
        calls["n"] += 1
        if calls["n"] > tensors + tensors // 2:
            raise Stopped("SIGTERM", "gguf")

    with pytest.raises(Stopped):
        ge.export_gguf(merged, tmp_path, ["f16", "q8_0"], stop_check=stop_check, on_result=reported.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-f16.gguf"]
    assert [(r.type, r.verified) for r in reported] == [("f16", True)]
