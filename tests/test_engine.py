"""The generation engine on the tiny model (CPU, fp32): greedy equality with HF `generate`, seeded sampling,
the stop flag, length caps and EOS, cache sizing and its out-of-memory fallback, the sampler's nucleus,
and the Triton decode kernel under Triton's interpreter."""

from __future__ import annotations

import sys

import pytest

from r1ft.evaluation import decode_attention, engine, kv_cache, sampling
from r1ft.evaluation.decode_model import shape_of
from r1ft.evaluation.engine import Engine, Request, Sampling
from r1ft.model.tiny import base_config

TEXTS = [
    "Solve for x: 3x + 5 = 20",
    "What is the derivative of f(x) = x^3 + 2x^2 - 5x + 3?",
    "F = m a",
    "Calculate the force required to accelerate a 10 kg object at 5 m/s^2. The unit of the answer is N.",
    "0123456789 + - * / = ( )",
    "Let's think. First, we compute the total.",
]


@pytest.fixture(scope="module")
def model(tiny_base):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer) -> list[list[int]]:
    return [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def hf_greedy(model, prompt: list[int], max_new: int, eos: int) -> list[int]:
    """HF `generate`'s greedy continuation of one prompt (EOS included when it came)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos, temperature=1.0, top_p=1.0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


def requests(prompts, seed0: int = 0) -> list[Request]:
    return [Request(f"p{i}", p, seed=seed0 + i) for i, p in enumerate(prompts)]


def test_greedy_equals_hf_generate_with_refills(model, prompts, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    refs = [hf_greedy(model, p, 48, eos) for p in prompts]
    assert any(eos in r for r in refs) and any(eos not in r for r in refs)  # both endings are exercised
    eng = Engine(model, eos, max_slots=2)  # 6 requests through 2 slots: refilled mid-run
    out = eng.generate(requests(prompts), Sampling(0.0, 1.0, 48))
    assert [c.key for c in out] == [f"p{i}" for i in range(len(prompts))]
    for c, ref in zip(out, refs, strict=True):
        assert c.token_ids + [eos] * c.finished == ref
        assert c.finished == (eos in ref) and c.new_tokens == len(ref)
        assert eos not in c.token_ids
    st = eng.stats
    assert st.slots == 2 and st.completed == len(prompts) and not st.stopped
    assert st.generated_tokens == sum(len(r) for r in refs)


def test_sampling_reproduces_with_the_seed_whatever_the_batch(model, prompts, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    s = Sampling(0.6, 0.95, 32)
    together = Engine(model, eos, max_slots=4).generate(requests(prompts), s)
    alone = Engine(model, eos, max_slots=1).generate(requests(prompts)[2:3], s)
    shuffled = Engine(model, eos, max_slots=3).generate(list(reversed(requests(prompts))), s)
    assert alone[0].token_ids == together[2].token_ids
    assert {c.key: c.token_ids for c in shuffled} == {c.key: c.token_ids for c in together}
    other_seeds = Engine(model, eos, max_slots=4).generate(requests(prompts, seed0=100), s)
    differ = sum(a.token_ids != b.token_ids for a, b in zip(together, other_seeds, strict=True))
    assert differ >= len(prompts) - 1
    greedy = Engine(model, eos).generate(requests(prompts), Sampling(0.0, 1.0, 32))
    assert any(a.token_ids != b.token_ids for a, b in zip(together, greedy, strict=True))


def test_stop_flag_ends_generation_between_steps(model, prompts, tiny_tokenizer):
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 5

    done = []
    eng = Engine(model, None, max_slots=2)  # no EOS: every request would run 200 tokens
    out = eng.generate(requests(prompts), Sampling(0.0, 1.0, 200), should_stop=stop, on_complete=done.append)
    assert eng.stats.stopped and len(calls) == 6
    assert out == [] and done == [] and eng.stats.unfinished == len(prompts)
    assert eng.stats.decode_steps <= 5


def test_length_caps_and_eos(model, prompts, tiny_tokenizer):
    eng = Engine(model, None, max_slots=3)
    reqs = [
        Request("a", prompts[0], max_new_tokens=3),
        Request("b", prompts[1]),
        Request("c", prompts[2], max_new_tokens=1),
    ]
    done: list = []
    out = eng.generate(reqs, Sampling(0.0, 1.0, 7), on_complete=done.append)
    assert [(c.key, len(c.token_ids), c.finished, c.new_tokens) for c in out] == [
        ("a", 3, False, 3), ("b", 7, False, 7), ("c", 1, False, 1)]  # fmt: skip
    assert sorted(c.key for c in done) == ["a", "b", "c"]
    # EOS: make the first greedy token of prompt 0 the EOS id, and it finishes at once with no tokens
    first = out[0].token_ids[0]
    stopped = Engine(model, first).generate([Request("a", prompts[0])], Sampling(0.0, 1.0, 7))
    assert stopped[0].token_ids == [] and stopped[0].finished and stopped[0].new_tokens == 1


FULL = shape_of(__import__("transformers").Qwen2Config(**{k: v for k, v in base_config().items() if k not in ("architectures", "model_type")}))  # fmt: skip
GB = 1e9
WEIGHTS = 3.55 * GB + 0.6 * GB  # the bf16 weights and the CUDA context


@pytest.mark.parametrize("card_gb", [80, 48, 24])
@pytest.mark.parametrize("max_new", [16_384, 32_768])
def test_cache_plan_fits_the_card(card_gb, max_new):
    free = int(card_gb * GB - WEIGHTS)
    row = kv_cache.row_length(600, max_new)
    plan = kv_cache.plan_cache(free, row, FULL, 2, wanted=10_000)
    assert row >= 600 + max_new and plan.row_len == row
    assert plan.total_bytes <= free * kv_cache.MEMORY_FRACTION
    assert (plan.slots + 1) * plan.slot_bytes + plan.reserve_bytes > free * kv_cache.MEMORY_FRACTION
    assert plan.slot_bytes >= row * 28 * 2 * 2 * 128 * 2  # a whole row of KV: never runs out
    expected = {(80, 16_384): 130, (48, 16_384): 72, (24, 16_384): 28, (80, 32_768): 66, (48, 32_768): 36, (24, 32_768): 14}  # fmt: skip
    assert expected[card_gb, max_new] <= plan.slots <= expected[card_gb, max_new] * 1.15
    assert kv_cache.plan_cache(free, row, FULL, 2, wanted=5).slots == 5


def test_cache_plan_refuses_a_card_too_small():
    with pytest.raises(MemoryError, match="lower max_new_tokens"):
        kv_cache.plan_cache(int(2 * GB), kv_cache.row_length(600, 32_768), FULL, 2, wanted=4)


def test_out_of_memory_falls_back_to_fewer_slots(model, prompts, tiny_tokenizer, monkeypatch):
    import torch

    eng = Engine(model, tiny_tokenizer.eos_token_id, max_slots=8)
    real = eng.runner.allocate_cache

    def allocate(slots, row_len):
        if slots > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return real(slots, row_len)

    monkeypatch.setattr(eng.runner, "allocate_cache", allocate)
    out = eng.generate(requests(prompts * 2), Sampling(0.0, 1.0, 8))
    assert len(out) == 12 and eng.stats.slots == 4
    assert [n.split(";")[0] for n in eng.stats.oom_fallbacks] == [
        "out of memory with 8 slots of 256 tokens (CUDA out of memory. Tried to allocate 9 GiB)",
        "out of memory with 6 slots of 256 tokens (CUDA out of memory. Tried to allocate 9 GiB)",
    ]


def test_buckets_cover_every_batch_size():
    for slots in (1, 3, 17, 130, 300):
        b = kv_cache.buckets(slots)
        assert b[-1] == slots and b == sorted(set(b)) and all(x <= slots for x in b)
    assert kv_cache.buckets(256)[:6] == [1, 2, 4, 8, 16, 32]


# --- the sampler ---------------------------------------------------------------------------------------------


def hf_nucleus(logits, temperature: float, top_p: float):
    """The token set HF's warpers keep (temperature, then TopPLogitsWarper)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    scores = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
    return [set(row.nonzero().flatten().tolist()) for row in scores > float("-inf")]


def test_nucleus_is_hf_top_p_and_the_full_sort_agrees():
    import torch

    gen = torch.Generator().manual_seed(0)
    peaked = torch.randn(64, 5000, generator=gen) * 4  # nucleus inside the top 64
    flat = torch.randn(8, 5000, generator=gen) * 0.3  # nucleus far beyond it
    seeds, steps = torch.arange(72), torch.full((72,), 7)
    logits = torch.cat([peaked, flat])
    tokens, covered = sampling.nucleus(logits, 0.6, 0.95, seeds, steps)
    assert covered[:64].all() and not covered[64:].any()
    full = sampling.full_sort(logits, 0.6, 0.95, seeds, steps)
    assert torch.equal(tokens[:64], full[:64])
    for t, keep in zip(full.tolist(), hf_nucleus(logits, 0.6, 0.95), strict=True):
        assert t in keep


def test_sampled_frequencies_follow_the_nucleus():
    import torch

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]]))  # T=1, top_p 0.9: {0, 1, 2}
    n = 6000
    draws = [
        sampling.nucleus(logits, 1.0, 0.9, torch.tensor([7]), torch.tensor([s]))[0].item() for s in range(n)
    ]
    freq = [draws.count(i) / n for i in range(5)]
    assert freq[3] == freq[4] == 0
    for f, p in zip(freq[:3], (0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95), strict=True):
        assert abs(f - p) < 0.025


def test_uniforms_are_keyed_and_spread():
    import torch

    ids = torch.arange(100_000).view(1, -1)
    u = sampling.uniforms(torch.tensor([3]), torch.tensor([5]), ids)
    assert u.min() > 0 and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.005
    assert torch.equal(u, sampling.uniforms(torch.tensor([3]), torch.tensor([5]), ids))
    assert (u != sampling.uniforms(torch.tensor([3]), torch.tensor([6]), ids)).float().mean() > 0.99
    assert (u != sampling.uniforms(torch.tensor([4]), torch.tensor([5]), ids)).float().mean() > 0.99


# --- decode attention -----------------------------------------------------------------------------------------


def test_reference_attention_equals_sdpa_per_row():
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(1)
    k = torch.randn(4, 2, 40, 16, generator=gen)
    v = torch.randn(4, 2, 40, 16, generator=gen)
    q = torch.randn(3, 6, 16, generator=gen)
    slots, lens = torch.tensor([2, 0, 2]), torch.tensor([40, 1, 17], dtype=torch.int32)
    k[0, :, 1:] = v[0, :, 1:] = float("nan")  # never written: must not reach row 1's output
    out = decode_attention.reference(q, k, v, slots, lens, 0.25)
    for b in range(3):
        kk = k[slots[b], :, : lens[b]].repeat_interleave(3, 0)
        vv = v[slots[b], :, : lens[b]].repeat_interleave(3, 0)
        want = F.scaled_dot_product_attention(q[b][:, None], kk, vv, scale=0.25)[:, 0]
        torch.testing.assert_close(out[b], want)


ENGINE_WITH_KERNEL = """
import json, sys, torch
from transformers import AutoModelForCausalLM
from r1ft.evaluation.engine import Engine, Request, Sampling
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
prompts = json.loads(sys.argv[2])
refs = []
for p in prompts:
    out = model.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False, temperature=1.0, top_p=1.0,
                         eos_token_id=None, pad_token_id=0)
    refs.append(out[0, len(p):].tolist())
eng = Engine(model, None, max_slots=2, use_kernel=True)
got = eng.generate([Request(str(i), p) for i, p in enumerate(prompts)], Sampling(0.0, 1.0, 24))
print(json.dumps([c.token_ids == r for c, r in zip(got, refs)]))
"""


def test_engine_with_the_triton_kernel_equals_hf_generate_in_the_interpreter(tiny_base, prompts):
    """The engine's decode through the kernel (the GPU path's attention, on the cache's real strides)."""
    import json
    import os
    import subprocess

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    args = [sys.executable, "-c", ENGINE_WITH_KERNEL, str(tiny_base), json.dumps(prompts[:3])]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == [True, True, True]


def test_triton_kernel_equals_reference_in_the_interpreter():
    """Under Triton's interpreter, in a fresh process (TRITON_INTERPRET must precede the first triton
    import); fp32 only there, the GPU mode of scripts/gpu-validate checks bf16 on the card."""
    import json
    import os
    import subprocess

    pytest.importorskip("triton")
    code = ("import json; from dataclasses import asdict; from r1ft.evaluation.decode_attention import check_kernel; "
            "print(json.dumps([asdict(c) for c in check_kernel('cpu')]))")  # fmt: skip
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    checks = json.loads(out.stdout.splitlines()[-1])
    assert len(checks) == len(decode_attention.CHECK_CASES)
    for c in checks:
        assert c["max_abs_error"] <= c["tolerance"], c


def test_a_kernel_that_fails_its_check_falls_back_to_the_reference(model, tiny_tokenizer, monkeypatch):
    """On a card where the Triton kernel does not build (or computes wrong), the engine says so and answers
    with the torch reference attention instead of failing the evaluation."""
    eng = Engine(model, tiny_tokenizer.eos_token_id)
    eng.cuda, eng.use_kernel, eng.use_graphs = True, True, True  # as on a GPU, before the first call

    def broken(*args, **kwargs):
        raise RuntimeError("PTX JIT compilation failed")

    monkeypatch.setattr(engine.decode_attention, "check_kernel", broken)
    eng._check_kernel_once()
    assert (eng.use_kernel, eng.use_graphs) == (False, False)
    assert "PTX JIT compilation failed" in eng.kernel_fallback
