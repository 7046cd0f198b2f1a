"""The model card (README.md) published with the run, built from report.json."""

from __future__ import annotations

import math
import re
from pathlib import Path

from r1ft.data.stats import DataStats
from r1ft.evaluation.run import MODELS, SCIBENCH_GROUP
from r1ft.export.gguf import GgufResult, gguf_markdown
from r1ft.publish.location import Location, output_location
from r1ft.report.schema import RunReport
from r1ft.settings import BASE_MODEL_ID

LICENSES = (
    "Base model: MIT (deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B). Training data: MathCodeInstruct "
    "(Apache-2.0), SciBench (MIT). The adapter and merged weights inherit these terms."
)


def _front_matter(report: RunReport) -> str:
    base = report.settings.get("base_model", BASE_MODEL_ID)
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


def _recipe(report: RunReport) -> str:
    s, recipe = report.settings, report.recipe
    base = str(s.get("base_model"))
    pinned = "/" in base and not base.startswith("/")
    rows = [
        ("base model", f"`{base}`" + (f" @ `{s.get('base_revision')}`" if pinned else "")),
        ("base weights in training", recipe.base_precision if recipe else "?"),
        ("optimizer", recipe.optimizer if recipe else "?"),
        (
            "LoRA",
            f"r={s.get('lora_r')}, alpha={s.get('lora_alpha')}, dropout={s.get('lora_dropout')}, "
            f"targets {s.get('lora_targets')}",
        ),
        ("optimizer steps", _steps(report)),
        ("epochs", _epochs(report)),
        (
            "learning rate",
            f"{s.get('learning_rate')} ({s.get('lr_scheduler')}, warm-up {s.get('warmup_ratio')})",
        ),
    ]
    if recipe:
        lay = recipe.layout
        rows.append(
            (
                "sequences per optimizer step",
                f"{s.get('global_batch')} ({lay.per_device} per device x {lay.accum} accumulation x "
                f"{lay.processes} processes)",
            )
        )
    rows += [("max sequence length", str(s.get("max_seq_len"))), ("seed", str(s.get("seed")))]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _steps(report: RunReport) -> str:
    """Steps trained of the steps planned, and why training stopped early if it did."""
    t = report.training
    if t is None:
        return "?"
    text = f"{t.global_step} of {t.max_steps}" if t.max_steps else str(t.global_step)
    return text + (f" (stopped early: {t.interrupted})" if t.interrupted else "")


def _epochs(report: RunReport) -> str:
    """Epochs trained of the epochs planned (R1FT_MAX_STEPS, when set, decides how many that is)."""
    t, s = report.training, report.settings
    if t is None or t.epoch is None:
        return f"{s.get('epochs')} / max steps {s.get('max_steps') or '-'}"
    return f"{t.epoch:g} of {t.epochs:g}" if t.epochs else f"{t.epoch:g}"


def _data(stats: DataStats | None) -> str:
    """Counts per source, what was dropped and why, token lengths (the full numbers are in report.json)."""
    if stats is None:
        return "(no data statistics)"
    rows = [
        "| source | records | train rows | eval rows | duplicates removed | too long | bad |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, src in stats.sources.items():
        revision = f", rev {src.revision}" if src.revision else ""
        rows.append(
            f"| {name} ({src.origin or '?'}{revision}) | {src.records} | {src.train_rows} | {src.eval} "
            f"| {sum(src.duplicates.values())} | {src.length.get('too_long', 0)} | {sum(src.bad.values())} |"
        )
    out = ["\n".join(rows), ""]
    c = stats.contamination
    if c.test_problems:
        out.append(
            f"SciBench's {c.test_problems} test problems (the main files) are held out for evaluation: "
            f"{c.removed} matching example(s) removed from training data, {c.leaked} leaked."
        )
    t = stats.tokens
    if t.train_total:
        out.append(
            f"Training tokens: {t.train_total:,} ({t.train_loss:,} carry loss); example length p50 "
            f"{t.length.get('p50', '?')}, p90 {t.length.get('p90', '?')}, max {t.length.get('max', '?')}."
        )
    return "\n".join(out)


def _metrics(report: RunReport) -> str:
    m = report.training.metrics if report.training else {}
    wanted = {
        "train_loss": "mean training loss",
        "eval_loss": "final eval loss",
        "train_runtime": "training time (s)",
        "train_samples_per_second": "sequences per second",
        "epoch": "epochs trained",
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


def model_card(report: RunReport, repo_hint: str = "OWNER/NAME") -> str:
    """The README.md published with the run."""
    parts = [
        _front_matter(report),
        f"# {report.run_id or 'r1ft run'}\n",
        f"A LoRA fine-tune of `{report.settings.get('base_model')}` for step-by-step math and science "
        "reasoning in the DeepSeek-R1 format (`<think>` reasoning, then the answer), made with r1ft.\n",
        "Layout: `adapter/` (LoRA adapter + tokenizer), `merged/` (bf16 merged model), `logs/` (TensorBoard), "
        "`eval/` (evaluation outputs, loss curves), `gguf/` (if exported), `report.json`, `manifest.json` "
        "(every file with its size and sha256, written last).\n",
        "## Recipe\n",
        _recipe(report),
        "\n## Training metrics\n",
        _metrics(report),
        "\n## Data\n",
        _data(report.data),
    ]
    if report.evaluation:
        parts += ["\n## Evaluation\n\n" + evaluation_section(report.evaluation)]
    if report.gguf:
        results = [
            GgufResult(g.type, Path(g.path), g.size_bytes, g.seconds, g.verified, g.max_logit_err, g.message)
            for g in report.gguf
        ]
        parts += ["", gguf_markdown(results, repo_hint)]
    parts += ["\n## How to use\n", _usage(repo_hint), "\n## Licenses\n", LICENSES, ""]
    return "\n".join(parts)


def repo_hint(location: Location) -> str:
    """Where readers load the published run from: the Hub repo id, the S3 URI, or the local directory."""
    if location.kind == "hf":
        return location.repo
    if location.kind == "s3":
        return location.uri
    assert location.path is not None
    return str(Path(location.path).expanduser().resolve())


def write_model_card(run_dir: Path, report: RunReport) -> Path:
    """README.md in the run directory, for the run's destination."""
    path = run_dir / "README.md"
    where = output_location(str(report.settings.get("output", "")), report.run_id or run_dir.name)
    path.write_text(model_card(report, repo_hint(where)))
    return path


# --- evaluation --------------------------------------------------------------------------------------

_GROUP_TITLES = {
    "scibench-test": "SciBench test problems (SciBench scoring: last \\boxed{}, 5% relative)",
    "eval:mathcodeinstruct": "Held-out eval split: MathCodeInstruct",
    "eval:scibench": "Held-out eval split: SciBench worked solutions",
    "eval:chat": "Held-out eval split: chat",
    "overall": "All scored problems",
}


def _cell(p: dict) -> str:
    if not p["n"]:
        return "n/a"
    lo, hi = p["ci95"]
    return f"{100 * p['accuracy']:.1f}% ({p['correct']}/{p['n']}; 95% CI {100 * lo:.1f}–{100 * hi:.1f}%)"


def _fence(text: str) -> str:
    """`text` in a code fence longer than any backtick run inside it."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}text\n{text}\n{fence}"


def _verdict(passed: bool | None) -> str:
    return {True: "✅ pass", False: "❌ fail", None: "– not measured"}[passed]


def evaluation_section(result: dict) -> str:
    """The body of the model card's evaluation section (the card supplies the `## Evaluation` heading):
    before/after table, success indicators, loss curves, the three prompts with both models' outputs."""
    d = result["decoding"]
    lines = [
        f"Base model (before) and fine-tune (after) answered the same {result['scored']} problems "
        f"(planned: {result['planned']['eval']} held-out eval examples, {result['planned']['scibench']} SciBench "
        f"test problems), greedy decoding, up to {d['max_new_tokens']} new tokens, batches of {d['batch_size']}, "
        f"{result['dtype']} on {result['device']}. Accuracy with Wilson 95% confidence intervals.",
        "",
        "| Problems | Before (base) | After (fine-tune) |",
        "|---|---|---|",
    ]
    sl = result["scibench_lenient"]
    for name, row in result["accuracy"].items():
        lines.append(f"| {_GROUP_TITLES.get(name, name)} | {_cell(row['before'])} | {_cell(row['after'])} |")
        if name == SCIBENCH_GROUP and sl["before"]["n"]:
            title = "SciBench, lenient parsing (\\frac, units, unboxed)"
            lines.append(f"| {title} | {_cell(sl['before'])} | {_cell(sl['after'])} |")
    for name in MODELS:
        m = result["models"][name]
        if m["budget_exhausted"]:
            lines += ["", f"The time budget ({result['time_budget_s']} s) ran out: the {name} model scored "
                          f"{m['scored']} of {m['planned']} problems."]  # fmt: skip
    lines += [
        "",
        f"Generation: {result['generation_tokens_per_s']:.0f} tokens/s over {result['generation_tokens']} tokens; "
        f"evaluation took {result['seconds']:.0f} s.",
        "",
        "### Success indicators",
        "",
        "| Indicator | Result | Measured |",
        "|---|---|---|",
    ]
    lines += [f"| {i['name']} | {_verdict(i['passed'])} | {i['detail']} |" for i in result["indicators"]]
    if result["loss_curve"]:
        lines += ["", "### Loss curves", "", f"![Training and eval loss]({result['loss_curve']})"]
    lines += [
        "",
        "### The three test prompts",
        "",
        f"Sampled at temperature {d['prompts']['temperature']}, top_p {d['prompts']['top_p']}, "
        f"seed {d['prompts']['seed']}, up to {d['max_new_tokens']} new tokens; full outputs.",
    ]
    for p in result["prompts"]:
        lines += ["", f"**{p['prompt']}**"]
        for name, label in (("base", "Base model"), ("finetuned", "Fine-tune")):
            lines += ["", f"<details><summary>{label}</summary>", "", _fence(p[name]), "", "</details>"]
    return "\n".join(lines) + "\n"
