"""The model card says what was trained: the base precision and the optimizer, the data's choices (dedup,
interpreter output loss) and its mix by origin at each step."""

from __future__ import annotations

from r1ft.data import prepare as data
from r1ft.machine.gpu import Hardware
from r1ft.model.tiny import base_config
from r1ft.publish.location import parse_location
from r1ft.recipe import make_recipe
from r1ft.report.card import model_card
from r1ft.report.schema import RunReport
from r1ft.settings_load import load_settings

WHERE = parse_location("hf://someone/r1ft-run")
H100 = Hardware(device="cuda", gpu_name="NVIDIA H100 80GB HBM3", gpu_mem_gb=85.0, gpu_count=1, bf16=True)


def test_the_card_names_base_precision_optimizer_and_the_mix(tmp_path, tiny_tokenizer):
    smoke = load_settings({"R1FT_PRESET": "smoke", "R1FT_WORK_DIR": str(tmp_path)}, env_file=None)
    stats = data.prepare_data(smoke, tiny_tokenizer, tmp_path / "run").stats
    original = load_settings({"R1FT_PRESET": "original"}, env_file=None)
    report = RunReport(settings=original.public_dict(), recipe=make_recipe(original, H100, 1, base_config()),
                       data=stats)  # fmt: skip
    card = model_card(report, WHERE)
    assert "| base weights in training | 4-bit NF4 (QLoRA), bf16 compute |" in card
    assert "| optimizer | paged_adamw_8bit |" in card
    assert "Duplicates: only exact (problem, solution) repeats removed" in card
    assert "Interpreter output blocks: carry loss" in card
    mix = stats.mix
    header = "| origin | rendered | after guard + dedup | drawn | train | eval | train rows |"
    assert header in card and f"Origin {mix.rule}." in card
    n, total = mix.train_rows["interpolated"], sum(mix.train_rows.values())
    row = next(line for line in card.splitlines() if line.startswith("| interpolated |"))
    assert row.endswith(f"| {n:,} ({100 * n / total:.0f}%) |")
    assert "Loss tokens by block: text " in card
    bf16 = load_settings({"R1FT_OPTIM": "adamw_torch"}, env_file=None)
    card = model_card(
        RunReport(settings=bf16.public_dict(), recipe=make_recipe(bf16, H100, 1, base_config())), WHERE
    )
    assert "| base weights in training | bf16 |" in card and "| optimizer | adamw_torch |" in card


def test_the_card_says_when_last_checkpoint_is_behind():
    from r1ft.report.schema import LastCheckpointRecord

    stale = LastCheckpointRecord(location="s3://b/r/last-checkpoint", step=4, newest_step=12, pushed=False,
                                 error="endpoint unreachable")  # fmt: skip
    card = model_card(RunReport(last_checkpoint=stale), WHERE)
    assert "`s3://b/r/last-checkpoint` holds step 4, not the newest (step 12): endpoint unreachable." in card
    none = stale.model_copy(update={"step": 0, "error": ""})
    assert "holds no checkpoint, not the newest (step 12): not pushed." in model_card(
        RunReport(last_checkpoint=none), WHERE
    )
