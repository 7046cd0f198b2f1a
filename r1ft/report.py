"""The model card (README.md) published with the run, built from report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from r1ft.settings import BASE_MODEL_ID

LICENSES = (
    "Base model: MIT (deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B). Training data: MathCodeInstruct "
    "(Apache-2.0), SciBench (MIT). The adapter and merged weights inherit these terms."
)


def _front_matter(report: dict[str, Any]) -> str:
    s = report.get("settings", {})
    base = s.get("base_model", BASE_MODEL_ID)
    base_line = f"base_model: {base}\n" if "/" in base else ""
    return (
        "---\n"
        f"{base_line}"
        "library_name: peft\n"
        "license: mit\n"
        "pipeline_tag: text-generation\n"
        "tags: [r1ft, lora, deepseek-r1, math, science, reasoning]\n"
        "---\n"
    )


def _recipe(s: dict[str, Any], report: dict[str, Any]) -> str:
    choices = report.get("training_choices", {})
    layout = choices.get("layout", {})
    rows = [
        ("base model", f"`{s.get('base_model')}` @ `{s.get('base_revision')}`"),
        ("base weights in training", "4-bit NF4 (QLoRA)" if choices.get("quant") == "nf4" else "bf16"),
        (
            "LoRA",
            f"r={s.get('lora_r')}, alpha={s.get('lora_alpha')}, dropout={s.get('lora_dropout')}, "
            f"targets {s.get('lora_targets')}",
        ),
        ("optimizer steps", str(report.get("training", {}).get("global_step", "?"))),
        ("epochs / max steps", f"{s.get('epochs')} / {s.get('max_steps') or '-'}"),
        (
            "learning rate",
            f"{s.get('learning_rate')} ({s.get('lr_scheduler')}, warm-up {s.get('warmup_ratio')})",
        ),
        (
            "sequences per optimizer step",
            f"{s.get('global_batch')} ({layout.get('per_device', '?')} per device x "
            f"{layout.get('accum', '?')} accumulation x {layout.get('processes', '?')} "
            "processes)",
        ),
        ("max sequence length", str(s.get("max_seq_len"))),
        ("seed", str(s.get("seed"))),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _data(stats: dict[str, Any]) -> str:
    if not stats:
        return "(no data statistics)"
    return "```json\n" + json.dumps(stats, indent=1, default=str)[:4000] + "\n```"


def _metrics(report: dict[str, Any]) -> str:
    m = report.get("training", {}).get("metrics", {})
    keep = {k: v for k, v in m.items() if isinstance(v, int | float)}
    if not keep:
        return "(none)"
    return "| metric | value |\n|---|---|\n" + "\n".join(
        f"| {k} | {v:.4g} |" for k, v in sorted(keep.items())
    )


def _usage(repo: str) -> str:
    return f"""With PEFT (adapter on the base model):

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
model = AutoPeftModelForCausalLM.from_pretrained("{repo}", subfolder="adapter", dtype="bfloat16")
tok = AutoTokenizer.from_pretrained("{repo}", subfolder="adapter")
```

With transformers (merged bf16 model):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{repo}", subfolder="merged", dtype="bfloat16")
tok = AutoTokenizer.from_pretrained("{repo}", subfolder="merged")
prompt = tok.apply_chat_template([{{"role": "user", "content": "Solve for x: 3x + 5 = 20. "
    "Please reason step by step, and put your final answer within \\\\boxed{{}}."}}],
    add_generation_prompt=True, tokenize=False)  # ends with <｜Assistant｜><think>\\n
ids = tok(prompt, return_tensors="pt", add_special_tokens=False)  # the template already has BOS
out = model.generate(**ids, max_new_tokens=2048, do_sample=True, temperature=0.6, top_p=0.95)
```
"""


def model_card(report: dict[str, Any], repo_hint: str = "OWNER/NAME") -> str:
    """The README.md published with the run."""
    s = report.get("settings", {})
    parts = [
        _front_matter(report),
        f"# {report.get('run_id', 'r1ft run')}\n",
        f"A LoRA fine-tune of `{s.get('base_model')}` for step-by-step math and science reasoning in the "
        "DeepSeek-R1 format (`<think>` reasoning, then the answer), made with r1ft.\n",
        "Layout: `adapter/` (LoRA adapter + tokenizer), `merged/` (bf16 merged model), `logs/` (TensorBoard), "
        "`eval/` (evaluation outputs, loss curves), `gguf/` (if exported), `report.json`, `manifest.json` "
        "(every file with its size and sha256, written last).\n",
        "## Recipe\n",
        _recipe(s, report),
        "\n## Training metrics\n",
        _metrics(report),
        "\n## Data\n",
        _data(report.get("data", {})),
    ]
    evaluation = report.get("evaluation")
    if evaluation:
        from r1ft.evaluate import evaluation_markdown

        parts += ["\n## Evaluation\n", evaluation_markdown(evaluation)]
    gguf = report.get("gguf")
    if gguf:
        from r1ft.gguf_export import GgufResult, gguf_markdown

        results = [GgufResult(**{**g, "path": Path(g["path"])}) for g in gguf]
        parts += ["", gguf_markdown(results, repo_hint)]
    parts += ["\n## How to use\n", _usage(repo_hint), "\n## Licenses\n", LICENSES, ""]
    return "\n".join(parts)


def repo_hint(output: str, run_dir: Path) -> str:
    if output.startswith("hf://"):
        return output[5:].split("@")[0]
    return str(run_dir)


def write_model_card(run_dir: Path, report: dict[str, Any]) -> Path:
    path = run_dir / "README.md"
    path.write_text(model_card(report, repo_hint(report.get("settings", {}).get("output", ""), run_dir)))
    return path
