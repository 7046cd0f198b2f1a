"""The model card (README.md) published with the run, built from report.json."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from r1ft.chat import MATH_INSTRUCTION
from r1ft.data.stats import DataStats
from r1ft.files import format_bytes
from r1ft.publish.location import Location, LocationError, output_location, parse_location
from r1ft.report.card_evaluation import evaluation_section
from r1ft.report.schema import GgufRecord, RunReport
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


_MIX_STEPS = (
    ("loaded", "rendered"),
    ("deduplicated", "after guard + dedup"),
    ("drawn", "drawn"),
    ("train", "train"),
    ("eval", "eval"),
    ("train_rows", "train rows"),
)
_DEDUP = {
    "pair": "only exact (problem, solution) repeats removed (R1FT_DEDUP=pair): every solution of a problem kept",
    "problem": "one solution kept per problem (R1FT_DEDUP=problem)",
}
_OUTPUT_LOSS = {
    True: "carry loss (R1FT_INTERPRETER_OUTPUT_LOSS=true)",
    False: "in the context without loss (R1FT_INTERPRETER_OUTPUT_LOSS=false)",
}


def _mix(stats: DataStats) -> list[str]:
    """The examples by origin at each step, and how the origin was told."""
    mix = stats.mix
    steps = [(key, title) for key, title in _MIX_STEPS if getattr(mix, key)]
    if not steps:
        return []
    origins = list(dict.fromkeys(o for key, _ in steps for o in getattr(mix, key)))
    rows = [
        "| origin | " + " | ".join(title for _, title in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for origin in origins:
        cells = []
        for key, _ in steps:
            counts = getattr(mix, key)
            total = sum(counts.values())
            n = counts.get(origin, 0)
            cells.append(f"{n:,} ({100 * n / total:.0f}%)" if total else "0")
        rows.append(f"| {origin} | " + " | ".join(cells) + " |")
    return ["Examples by origin at each step:", "", *rows, "", f"Origin {mix.rule}."]


def _loss_blocks(t) -> str:
    by = t.train_loss_by_block
    total = sum(by.values())
    if not total:
        return ""
    shares = ", ".join(f"{kind} {100 * n / total:.1f}%" for kind, n in by.items())
    return f" Loss tokens by block: {shares} ({t.train_output_tokens:,} interpreter-output tokens in train)."


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


def _data(stats: DataStats | None, settings: dict) -> str:
    """Counts per source, the mix by origin, what was dropped and why, token lengths (the full numbers are
    in report.json)."""
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
    dedup, output_loss = settings.get("dedup"), settings.get("interpreter_output_loss")
    if dedup in _DEDUP:
        out.append(f"Duplicates: {_DEDUP[dedup]}.")
    if output_loss in _OUTPUT_LOSS:
        out.append(f"Interpreter output blocks: {_OUTPUT_LOSS[output_loss]}.")
    mix = _mix(stats)
    if mix:
        out += ["", *mix, ""]
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
            + _loss_blocks(t)
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


def _publication(report: RunReport) -> str:
    """Where this run was published and whether that publish was verified (the report's publish state)."""
    p, text = report.publish, ""
    if p is None:
        text = "Not published yet."
    elif p.verified:
        text = (
            f"Published to `{p.location}`: {p.files} files ({format_bytes(p.bytes)}), verified against "
            "`manifest.json` (every file's size and sha256)."
        )
    else:
        text = f"The last publish to `{p.location or '?'}` failed and was not verified: {p.error or '?'}"
    return text + _last_checkpoint(report)


def _last_checkpoint(report: RunReport) -> str:
    """What `last-checkpoint/` (the resume point of a lost instance) holds, when training pushed one."""
    c = report.last_checkpoint
    if c is None or not c.location:
        return ""
    if c.pushed or (c.step and c.step == c.newest_step):
        return f" `{c.location}` holds step {c.step}, the newest checkpoint."
    held = f"step {c.step}" if c.step else "no checkpoint"
    return f" `{c.location}` holds {held}, not the newest (step {c.newest_step}): {c.error or 'not pushed'}."


def _usage(where: Location) -> str:
    fetch, repo = "", repo_hint(where)
    if where.kind == "s3":
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


def model_card(report: RunReport, where: Location) -> str:
    """The README.md published with the run."""
    parts = [
        _front_matter(report),
        f"# {report.run_id or 'r1ft run'}\n",
        f"A LoRA fine-tune of `{report.settings.get('base_model')}` for step-by-step math and science "
        "reasoning in the DeepSeek-R1 format (`<think>` reasoning, then the answer), made with r1ft.\n",
        "Layout: `adapter/` (LoRA adapter + tokenizer), `merged/` (bf16 merged model), `logs/` (TensorBoard), "
        "`eval/` (evaluation outputs, loss curves), `gguf/` (if exported), `report.json`, `manifest.json` "
        "(every file with its size and sha256, written last).\n",
        "## Publication\n",
        _publication(report),
        "\n## Recipe\n",
        _recipe(report),
        "\n## Training metrics\n",
        _metrics(report),
        "\n## Data\n",
        _data(report.data, report.settings),
    ]
    if report.evaluation:
        parts += ["\n## Evaluation\n\n" + evaluation_section(report.evaluation, report.merge)]
    if report.gguf:
        parts += ["", gguf_section(report.gguf, where)]
    parts += ["\n## How to use\n", _usage(where), "\n## Licenses\n", LICENSES, ""]
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
    """README.md in the run directory, for where the run is published (the run's R1FT_OUTPUT until then)."""
    path = run_dir / "README.md"
    where = output_location(str(report.settings.get("output", "")), report.run_id or run_dir.name)
    if report.publish is not None and report.publish.location:
        with contextlib.suppress(LocationError):  # an older report's location string: keep the run's output
            where = parse_location(report.publish.location)
    path.write_text(model_card(report, where))
    return path


# --- GGUF ------------------------------------------------------------------------------------------


def gguf_section(results: list[GgufRecord], where: Location) -> str:
    """The model card's GGUF section: the files, how they were checked, and ready llama.cpp/Ollama commands.

    `where` is where the published files live (a Hub repo, an S3 prefix or a directory); it only shapes the
    download line.
    """
    if not results:
        return ""
    lines = [
        "## GGUF (llama.cpp, Ollama, LM Studio)",
        "",
        "Converted from `merged/` with llama.cpp's `gguf` library; the k-quants (q4_k_m, q5_k_m, q6_k) carry the "
        "tensor-type mix llama.cpp's `llama-quantize` picks, quantized with ggml's reference quantizers. Each "
        "file carries the tokenizer and the chat template, so a llama.cpp-based runtime builds the prompt exactly "
        "as training did (ending `<｜Assistant｜><think>\\n`). Before publishing, llama.cpp itself loaded each "
        "file, tokenized and rendered the training prompts to the training ids, and gave log-probabilities on "
        "them close to the merged model's (mean KL divergence per token, in nats).",
        "",
        "| file | type | size | KL vs merged | check |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        kl = f"{r.kl_divergence:.2g}" if r.kl_divergence is not None else "-"
        status = "verified by llama.cpp" if r.verified else f"not published: {r.message}"
        size = format_bytes(r.size_bytes) if r.verified else "-"
        lines.append(f"| `gguf/{Path(r.path).name}` | {r.type} | {size} | {kl} | {status} |")
    ready = {r.type: r for r in results if r.verified}
    if ready:
        # The commands name the smallest file made: q4_k_m is the on-device choice.
        best = ready[next(t for t in _USAGE_PREFERENCE if t in ready)]
        lines += ["", *_gguf_usage(f"gguf/{Path(best.path).name}", where, best.type)]
    return "\n".join(lines) + "\n"


_USAGE_PREFERENCE = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16")


def _download_line(rel: str, where: Location) -> str:
    if where.kind == "s3":
        return f"aws s3 cp {where.uri}/{rel} {rel}"
    if where.kind == "hf":
        revision = f" --revision {where.revision}" if where.revision else ""
        return f"hf download {where.repo} {rel}{revision} --local-dir ."
    return f"cp {repo_hint(where)}/{rel} {rel}"


def _gguf_usage(rel: str, where: Location, gguf_type: str) -> list[str]:
    """Download, llama.cpp and Ollama instructions for one published file."""

    question = f"What is 3 + 5 * 2? {MATH_INSTRUCTION}"
    return [
        "Get the file:",
        "",
        "```bash",
        f"mkdir -p gguf && {_download_line(rel, where)}",
        "```",
        "",
        "llama.cpp (the template inside the file formats the chat; sampling as the base model recommends):",
        "",
        "```bash",
        f"llama-cli -m {rel} --jinja -cnv --temp 0.6 --top-p 0.95 -c 8192 -n 4096",
        f"llama-server -m {rel} --jinja --temp 0.6 --top-p 0.95 -c 8192  # OpenAI-compatible API on :8080",
        "```",
        "",
        "Ollama (`Modelfile` beside the `gguf/` folder; the template matches training: no system prompt, "
        "instructions in the user turn):",
        "",
        "```",
        f"FROM ./{rel}",
        'TEMPLATE """{{- range .Messages }}{{- if eq .Role "user" }}<｜User｜>{{ .Content }}'
        '{{- else if eq .Role "assistant" }}<｜Assistant｜>{{ .Content }}<｜end▁of▁sentence｜>{{- end }}'
        "{{- end }}<｜Assistant｜><think>",
        '"""',
        "PARAMETER temperature 0.6",
        "PARAMETER top_p 0.95",
        "PARAMETER num_ctx 8192",
        'PARAMETER stop "<｜end▁of▁sentence｜>"',
        "```",
        "",
        "```bash",
        f"ollama create r1ft-{gguf_type} -f Modelfile",
        f"ollama run r1ft-{gguf_type} '{question}'",
        "```",
        "",
        f"LM Studio: load `{rel.split('/')[-1]}`; it reads the chat template from the file.",
    ]
