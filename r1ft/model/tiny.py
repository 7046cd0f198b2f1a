"""The embedded tiny default: a random-weight Qwen2 and a byte-level BPE tokenizer that carries the real
model's special tokens and its real chat template, built locally with no download.

The smoke preset and the tests train this model through the real pipeline; its tokenizer reproduces the
traps of the real one (the template emits BOS and the post-processor adds another; PAD == EOS; the
template deletes everything before `</think>` in assistant turns).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
EOT = "<｜EOT｜>"
THINK = "<think>"
END_THINK = "</think>"
# The real ids run 151643..151649 in this order; the tiny vocabulary keeps the order.
ADDED_TOKENS = [
    (EOS, True),
    (USER, False),
    (ASSISTANT, False),
    (BOS, True),
    (EOT, False),
    (THINK, False),
    (END_THINK, False),
]

TINY_MODEL = "tiny"  # R1FT_BASE_MODEL's name for this model (the smoke preset's)
TINY_VOCAB = 1024
TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}

_CORPUS_SEED = """\
Please reason step by step, and put your final answer within \\boxed{}.
Solve for x: 3x + 5 = 20. Subtract 5 from both sides: 3x = 15, so x = 5. The answer is \\boxed{5}.
What is the derivative of f(x) = x^3 + 2x^2 - 5x + 3? f'(x) = 3x^2 + 4x - 5.
Calculate the force required to accelerate a 10 kg object at 5 m/s^2. F = m a = 50 N.
The unit of the answer is J. The unit of the answer is $\\mathrm{kJ} \\mathrm{mol}^{-1}$.
```python
import math
from sympy import symbols, solve, Rational
x = symbols('x')
print(solve(3*x + 5 - 20, x))
```
```output
[5]
```
\\frac{1}{2} \\dfrac{a}{b} \\sqrt{2} \\times 10^{-3} \\pi \\theta \\Delta H = -285.8 kJ/mol
Let's think. First, we compute the total. Therefore the final answer is 42. Hence the probability is 0.25.
The temperature T = 298 K, pressure p = 1.0 atm, volume V = 22.4 L, energy E = h \\nu.
0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ? ' " % $ # @ & | ^ _ ~ `
"""


def chat_template() -> str:
    """The base model's chat template, verbatim."""
    return resources.files("r1ft.assets").joinpath("chat_template.jinja").read_text(encoding="utf-8")


def base_config() -> dict:
    """The real base model's config.json (for building the full-size model with random weights)."""
    return json.loads(resources.files("r1ft.assets").joinpath("base_config.json").read_text(encoding="utf-8"))


def build_tokenizer(extra_corpus: list[str] | None = None):
    """A byte-level BPE tokenizer with the real special tokens, post-processor and chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([_CORPUS_SEED, *(extra_corpus or [])] * 4, trainer)
    for content, special in ADDED_TOKENS:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS, model_max_length=16384
    )
    fast.chat_template = chat_template()
    return fast


def build_tiny_base(dest: Path, seed: int = 0) -> Path:
    """Write the tiny random-weight Qwen2, its tokenizer and generation config into `dest`."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    dest = Path(dest)
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (BOS, EOS)}
    # Like the real model (151,936 rows for 151,665 tokens), the embedding has spare rows: AutoTokenizer
    # loads this tokenizer as Qwen2Tokenizer, which appends `<|endoftext|>` after the saved vocabulary.
    config = Qwen2Config(
        vocab_size=-(-(len(tokenizer) + 1) // 64) * 64,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[EOS],
        **TINY_SHAPE,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        # At hidden size 64 the usual 0.02 init caps every logit near +-1.5 through a frozen lm_head, so no
        # adapter could make a confident prediction; a wider head lets the tiny model actually learn.
        model.lm_head.weight.normal_(0.0, 0.25)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[EOS],
        do_sample=True,
        temperature=0.6,
        top_p=0.95,
    )
    tmp = dest.with_name(dest.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for f in tmp.iterdir():
        f.replace(dest / f.name)
    tmp.rmdir()
    return dest
