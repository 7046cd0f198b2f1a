"""The check every GGUF file passes before it is published: llama.cpp itself runs it against the merged model.

llama.cpp (the build in the pinned `xllamacpp` wheel, run in a child process by `r1ft.export.llamacpp`) must:

- load the file;
- tokenize the training prompts (chat-template renderings of `CHECK_PROMPTS` and a two-turn conversation)
  and `CHECK_TEXTS` to the merged tokenizer's ids;
- render those conversations from the file's own template with its Jinja engine, as `llama-server --jinja`
  does, into text that it tokenizes to the same ids: the prompt a user's runtime builds is the training one;
- give log-probabilities at every position of those prompts whose mean KL divergence from the merged model's
  (transformers, float32) is within the type's bound, `MAX_KL`;
- for f16, continue the first prompt greedily with the tokens transformers picks, but where the two best
  tokens' logits are closer than `GREEDY_TIE` of their spread (float summation order may then pick either;
  the continuations part there, and the rest is not compared).
"""

from __future__ import annotations

import gc
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1ft.export.llamacpp import Request, read_observation, request_json

# Mean KL divergence (nats per token, the merged model's distribution first) allowed between llama.cpp's
# log-probabilities and the merged model's over the check prompts. Measured 2026-12-01 on the 2-core CPU
# machine (scripts/gguf_bench.py, tests/test_gguf.py), on three random-weight models: the tiny test model
# (hidden 64: every k-quant tensor a fallback type), a 256-wide one (real K blocks, sharp distributions)
# and the full-size shape:
#            tiny      256-wide   full-size   bound
#   f16      4e-7      3.7e-6     2.5e-6      1e-4
#   bf16     1e-5      7e-5       4.6e-5      1e-3
#   q8_0     2.5e-4    2.2e-3     1.2e-3      0.01
#   q6_k     2.5e-4    0.019      0.0095      0.06
#   q5_k_m   0.007     0.032      0.027       0.1
#   q4_k_m   0.0067    0.16       0.087       0.5
# One tensor's bytes flipped (q8_0, q4_k_m, q6_k, f16): 3.4 nats or more, often not finite. The bounds give
# the largest measured value a factor of 3 or more; a trained model is not measured here, so every run
# records its files' values in report.json and the model card.
MAX_KL = {
    "f16": 1e-4,
    "bf16": 1e-3,
    "q8_0": 0.01,
    "q6_k": 0.06,
    "q5_k_m": 0.1,
    "q4_k_m": 0.5,
}
# Greedy tokens compared after the first prompt (f16 only), and how close two logits may be, relative to
# the standard deviation of that step's logits, for either to count as the greedy choice (f16 llama.cpp
# logits differ from transformers' float32 ones by at most 0.002 of it on the tiny model).
GREEDY_TOKENS = 16
GREEDY_TIE = 0.01
# A full-size file's check takes about a minute on 2 cores; a hung child must not hold the job.
CHILD_TIMEOUT_S = 1800

CHECK_PROMPTS = [
    "What is 3 + 5 * 2? Please reason step by step, and put your final answer within \\boxed{}.",
    "Calculate the force needed to accelerate a 10 kg mass at 5 m/s^2. The unit of the answer is N.\n"
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "Solve for x:  3x + 5 = 20.\n\n```python\nprint(solve(3*x + 5 - 20, x))\n```",
]
# Plain texts, tokenized with BOS (digits, spaces, unicode, added tokens inside text).
CHECK_TEXTS = [
    "  Leading spaces, 12345 digits, tabs\tand\nnewlines; ΔH = -285.8 kJ/mol, 温度 298 K 🚀.",
    "<think>\nx = 5\n</think>\n\nThe answer is \\boxed{5}.<｜end▁of▁sentence｜>",
]


def check_conversations() -> list[list[dict[str, str]]]:
    """The check prompts as single user turns, and a second turn after an answer whose reasoning the
    template must drop."""
    single = [[{"role": "user", "content": p}] for p in CHECK_PROMPTS]
    answer = "<think>\n3 + 10 = 13\n</think>\n\nThe answer is \\boxed{13}."
    two_turns = [
        {"role": "user", "content": CHECK_PROMPTS[0]},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And (3 + 5) * 2?"},
    ]
    return [*single, two_turns]


@dataclass(frozen=True)
class Reference:
    """What every file is checked against, from the merged model and its tokenizer."""

    conversations: list[list[dict[str, str]]]
    rendered: list[str]
    prompt_ids: list[list[int]]
    text_ids: list[list[int]]
    logprobs: list[Any]  # float32 (positions, vocab) per prompt
    greedy: list[int]
    greedy_logits: Any  # float32 (GREEDY_TOKENS, vocab): the logits each greedy token was chosen from


@dataclass(frozen=True)
class Verdict:
    ok: bool
    kl: float | None  # mean KL divergence, when llama.cpp got that far
    message: str


def reference(merged_dir: Path) -> Reference:
    """The merged tokenizer's renderings and ids, and its model's float32 log-probabilities and greedy path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    conversations = check_conversations()
    rendered = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
    ]
    prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in rendered]
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    try:
        with torch.no_grad():
            logprobs = [
                torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1).numpy()
                for ids in prompt_ids
            ]
            greedy, greedy_logits = _greedy(model, prompt_ids[0], GREEDY_TOKENS)
    finally:
        del model
        gc.collect()
    return Reference(
        conversations=conversations,
        rendered=rendered,
        prompt_ids=prompt_ids,
        text_ids=[tokenizer(text)["input_ids"] for text in CHECK_TEXTS],
        logprobs=logprobs,
        greedy=greedy,
        greedy_logits=greedy_logits,
    )


def _greedy(model, ids: list[int], n: int) -> tuple[list[int], Any]:
    """`n` argmax tokens after `ids` (EOS does not stop it, as in llama.cpp's loop) and their logits."""
    import numpy as np
    import torch

    out = model(torch.tensor([ids]), use_cache=True)
    tokens, rows = [], []
    for _ in range(n):
        row = out.logits[0, -1].float()
        rows.append(row.numpy())
        tokens.append(int(row.argmax()))
        out = model(torch.tensor([[tokens[-1]]]), cache=out.cache, use_cache=True)
    return tokens, np.stack(rows)


def check_gguf(path: Path, gguf_type: str, ref: Reference) -> Verdict:
    """Run the file in llama.cpp and compare; a verdict that is not ok says every problem found."""

    request = Request(
        gguf=str(path),
        conversations=ref.conversations,
        tokenize=[*((text, False) for text in ref.rendered), *((text, True) for text in CHECK_TEXTS)],
        logits_for=ref.prompt_ids,
        greedy_from=ref.prompt_ids[0],
        greedy_tokens=GREEDY_TOKENS if gguf_type == "f16" else 0,
    )
    work = path.with_name(f".check-{path.name}")
    try:
        obs, logits, failure = _run_child(request, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if failure:
        return Verdict(False, None, failure)
    problems = tokenizer_problems(ref, obs.tokens, obs.rendered, obs.rendered_tokens)
    if obs.n_vocab != ref.logprobs[0].shape[-1]:
        problems.append(
            f"llama.cpp has {obs.n_vocab} tokens, the merged model {ref.logprobs[0].shape[-1]} logits"
        )
        return Verdict(False, None, "; ".join(problems))
    kl = mean_kl(ref.logprobs, [logits[f"p{i}"] for i in range(len(ref.prompt_ids))])
    bound = MAX_KL[gguf_type]
    if not kl <= bound:  # also catches NaN
        problems.append(
            f"log-probabilities differ from the merged model's: mean KL {kl:.3g} > {gguf_type} bound {bound:g}"
        )
    greedy = greedy_problem(ref.greedy, ref.greedy_logits, obs.greedy) if obs.greedy else None
    if greedy:
        problems.append(greedy)
    if problems:
        return Verdict(False, kl, "; ".join(problems))
    said = f"llama.cpp: prompts tokenized and rendered as in training, mean KL {kl:.2g} (bound {bound:g})"
    return Verdict(
        True, kl, said + (f", greedy {GREEDY_TOKENS} tokens as transformers'" if obs.greedy else "")
    )


def _run_child(request, work: Path):
    """`observe` in a child process: (observation, logits, None), or (None, None, why it failed)."""

    work.mkdir(parents=True, exist_ok=True)
    (work / "request.json").write_text(request_json(request), encoding="utf-8")
    cmd = [sys.executable, "-m", "r1ft.export.llamacpp", str(work / "request.json"), str(work)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, None, f"llama.cpp did not finish the check in {CHILD_TIMEOUT_S} s"
    log_tail = proc.stderr.strip()[-1500:]
    if proc.returncode != 0 or not (work / "observation.json").is_file():
        return None, None, f"llama.cpp check process failed (exit {proc.returncode}): {log_tail}"
    obs, logits = read_observation(work)
    if obs.error:
        return None, None, f"{obs.error}; llama.cpp said: {_errors(log_tail)}"
    return obs, logits, None


def _errors(log: str) -> str:
    """The lines of llama.cpp's log that say what went wrong (all of its tail if none is marked)."""
    lines = [ln for ln in log.splitlines() if " E " in ln or "error" in ln.lower() or "failed" in ln.lower()]
    return " | ".join(lines[-5:]) if lines else log[-500:]


def tokenizer_problems(
    ref: Reference, tokens: list[list[int]], rendered: list[str], rendered_tokens: list[list[int]]
) -> list[str]:
    """Where llama.cpp's tokenization or template rendering leads to other ids than training's."""
    problems = []
    n = len(ref.rendered)
    for i, (want, got) in enumerate(zip(ref.prompt_ids, tokens[:n], strict=True)):
        if got != want:
            problems.append(f"training prompt {i} tokenized to {_first_diff(got, want)}")
    for text, want, got in zip(CHECK_TEXTS, ref.text_ids, tokens[n:], strict=True):
        if got != want:
            problems.append(f"text {text[:30]!r} tokenized to {_first_diff(got, want)}")
    for i, (want, text, got) in enumerate(zip(ref.prompt_ids, rendered, rendered_tokens, strict=True)):
        if got != want:
            problems.append(
                f"llama.cpp's rendering of conversation {i} ({text[-60:]!r}; training's ends "
                f"{ref.rendered[i][-60:]!r}) tokenizes to {_first_diff(got, want)}"
            )
    return problems


def mean_kl(ref_logprobs: list[Any], logits: list[Any]) -> float:
    """Mean over all positions of KL(merged || llama.cpp), in nats; infinite when llama.cpp's are not finite."""
    import numpy as np

    total, count = 0.0, 0
    for ref, got in zip(ref_logprobs, logits, strict=True):
        got = np.asarray(got, dtype=np.float64)
        if got.shape != ref.shape or not np.isfinite(got).all():
            return math.inf
        got = got - got.max(-1, keepdims=True)
        got = got - np.log(np.exp(got).sum(-1, keepdims=True))
        ref = np.asarray(ref, dtype=np.float64)
        total += float((np.exp(ref) * (ref - got)).sum())
        count += ref.shape[0]
    return max(total / count, 0.0)


def greedy_problem(want: list[int], want_logits: Any, got: list[int]) -> str | None:
    """How llama.cpp's greedy tokens part from transformers', unless at a near-tie (None when they agree)."""
    for step, (w, g) in enumerate(zip(want, got, strict=True)):
        if w == g:
            continue
        row = want_logits[step]
        gap, tie = float(row[w] - row[g]), GREEDY_TIE * float(row.std())
        if gap <= tie:
            return None  # both are the greedy choice within float error; the continuations part here
        return f"greedy token {step} is {g}, transformers' {w} (logit gap {gap:.3g} > {tie:.3g})"
    return None


def _first_diff(got: list[int], want: list[int]) -> str:
    i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return f"{got[i : i + 5]} at {i}, expected {want[i : i + 5]} ({len(got)} vs {len(want)} ids)"
