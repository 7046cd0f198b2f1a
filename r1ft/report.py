"""The model card (README.md) published with the run, built from report.json."""

from __future__ import annotations

import math
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


def _weights(choices: dict[str, Any]) -> str:
    if choices.get("quant") == "nf4":
        return "4-bit NF4 (QLoRA), bf16 compute"
    return "fp32 (CPU)" if choices.get("device") == "cpu" else "bf16"


def _recipe(s: dict[str, Any], report: dict[str, Any]) -> str:
    choices = report.get("training_choices", {})
    layout = choices.get("layout", {})
    rows = [
        (
            "base model",
            f"`{s.get('base_model')}`"
            + (
                f" @ `{s.get('base_revision')}`"
                if "/" in str(s.get("base_model")) and not str(s.get("base_model")).startswith("/")
                else ""
            ),
        ),
        ("base weights in training", _weights(choices)),
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
    """Counts per source, what was dropped and why, token lengths (the full numbers are in report.json)."""
    if not stats:
        return "(no data statistics)"
    rows = [
        "| source | records | train rows | eval rows | duplicates removed | too long | bad |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, src in stats.get("sources", {}).items():
        dups = sum((src.get("duplicates") or {}).values())
        length = src.get("length") or {}
        rows.append(
            f"| {name} ({src.get('origin', '?')}{', rev ' + src['revision'] if src.get('revision') else ''}) "
            f"| {src.get('records', 0)} | {src.get('train_rows', 0)} | {src.get('eval', 0)} | {dups} "
            f"| {length.get('too_long', 0)} | {sum((src.get('bad') or {}).values())} |"
        )
    out = ["\n".join(rows), ""]
    contamination = stats.get("contamination") or {}
    if contamination:
        out.append(
            f"SciBench's {contamination.get('test_problems', 0)} test problems (the main files) are held out for "
            f"evaluation: {contamination.get('removed', 0)} matching example(s) removed from training data, "
            f"{contamination.get('leaked', 0)} leaked."
        )
    tokens = stats.get("tokens") or {}
    lengths = tokens.get("length") or {}
    if tokens:
        out.append(
            f"Training tokens: {tokens.get('train_total', 0):,} ({tokens.get('train_loss', 0):,} carry loss); "
            f"example length p50 {lengths.get('p50', '?')}, p90 {lengths.get('p90', '?')}, max {lengths.get('max', '?')}."
        )
    return "\n".join(out)


def _metrics(report: dict[str, Any]) -> str:
    m = report.get("training", {}).get("metrics", {})
    wanted = {
        "train_loss": "mean training loss",
        "eval_loss": "final eval loss",
        "train_runtime": "training time (s)",
        "train_samples_per_second": "sequences per second",
        "epoch": "epochs",
    }
    rows = [
        f"| {label} | {m[key]:.4g} |" for key, label in wanted.items() if isinstance(m.get(key), int | float)
    ]
    if isinstance(m.get("eval_loss"), int | float):
        rows.append(f"| eval perplexity | {math.exp(min(m['eval_loss'], 50)):.4g} |")
    if not rows:
        return "(none)"
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)


def _usage(repo: str) -> str:
    fetch = ""
    if repo.startswith("s3://"):
        fetch = f"Fetch it first (checked against the manifest): `r1ft collect {repo} run`, then load from `run`.\n\n"
        repo = "run"
    return (
        fetch
        + f"""With PEFT (adapter on the base model):

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
    )


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

        body = evaluation_markdown(evaluation)
        parts += [body if body.lstrip().startswith("## Evaluation") else "\n## Evaluation\n\n" + body]
    gguf = report.get("gguf")
    if gguf:
        from r1ft.export.gguf import GgufResult, gguf_markdown

        results = [GgufResult(**{**g, "path": Path(g["path"])}) for g in gguf]
        parts += ["", gguf_markdown(results, repo_hint)]
    parts += ["\n## How to use\n", _usage(repo_hint), "\n## Licenses\n", LICENSES, ""]
    return "\n".join(parts)


def repo_hint(output: str, run_dir: Path) -> str:
    """Where readers load the published run from: the Hub repo id, the S3 URI, or the local directory."""
    if output.startswith("hf://"):
        return output[5:].split("@")[0]
    if output.startswith("s3://"):
        return output
    if output:
        return str(Path(output.removeprefix("file://")).resolve())
    return str(Path("runs", run_dir.name).resolve())


def write_model_card(run_dir: Path, report: dict[str, Any]) -> Path:
    path = run_dir / "README.md"
    path.write_text(model_card(report, repo_hint(report.get("settings", {}).get("output", ""), run_dir)))
    return path
