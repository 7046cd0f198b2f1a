"""scripts/vast-launch against a stand-in for Vast: a fake `vastai` executable first on PATH that records
its argv and answers with canned offers, a create reply, status transitions and logs. Checked: the exact
commands, awkward values arriving intact through the real CLI's --env parser, no secret in any printed
line, the dry run, interruptible instances, and the refusals that come before anything is rented."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest
from vastai.utils import parse_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "vast-launch"
IMAGE = "ghcr.io/me/r1ft:0.1.0"
HF_SECRET = "hf_SuperSecretToken123"
VAST_SECRET = "vastkey_SECRET_999"
ENV_TEXT = f"""
R1FT_OUTPUT=hf://me/r1ft-test
HF_TOKEN={HF_SECRET}
R1FT_SEED=7
"""
PLAN = {
    "vram_peak_gb": 40.0,
    "min_gpu_ram_gb": 12.9,
    "disk_peak_gb": 9.6,
    "disk_budget_gb": 16.0,
    "recommended_disk_gb": 20,
    "train_hours": 2.0,
    "quant": "none",
}
OFFERS = [  # one GPU model, so the choice is the cheapest whatever r1ft's speed table says
    {
        "id": 1001,
        "gpu_name": "RTX 4090",
        "num_gpus": 1,
        "gpu_ram": 24564,
        "dph_total": 0.45,
        "min_bid": 0.3,
        "reliability": 0.995,
        "inet_down": 812.4,
        "cuda_max_good": 12.9,
        "geolocation": "SE",
    },
    {"id": 1002, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.30, "min_bid": 0.2},
    {"id": 1003, "gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.35, "min_bid": 0.1},
]
LOGS = [
    ["r1ft 0.1.0 starting", "plan: ..."],
    ["r1ft 0.1.0 starting", "plan: ...", f"oops, printed HF_TOKEN={HF_SECRET}", "step 10 loss 1.2"],
    [
        "plan: ...",
        f"oops, printed HF_TOKEN={HF_SECRET}",
        "step 10 loss 1.2",
        "published to hf://me/r1ft-test",
    ],
]

FAKE_VASTAI = r"""
import json, os, sys
from pathlib import Path

state = Path(os.environ["FAKE_VAST_DIR"])
argv = sys.argv[1:]
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps(argv) + "\n")
scenario = json.loads((state / "scenario.json").read_text())

def nth(name, items):
    counter = state / f"{name}.count"
    n = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(n + 1))
    return items[min(n, len(items) - 1)]

if argv[:2] == ["search", "offers"]:
    print(json.dumps(scenario["offers"]))
elif argv[:2] == ["create", "instance"]:
    reply = nth("create", scenario.get("create", [{"success": True, "new_contract": 123}]))
    if reply == "fail":
        print(json.dumps({"error": True, "status_code": 404, "msg": "offer no longer available"}), file=sys.stderr)
        sys.exit(1)
    print(json.dumps(reply))
elif argv[:2] == ["show", "instance"]:
    status = nth("show", scenario["statuses"])
    if status == "fail":
        print(json.dumps({"error": True, "status_code": 502, "msg": "Bad Gateway"}), file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"instances": None} if status == "gone" else {"id": int(argv[2]), **status}))
elif argv[0] == "logs":
    print("\n".join(nth("logs", scenario["logs"])))
else:
    print("fake vastai: unexpected command", argv, file=sys.stderr)
    sys.exit(2)
"""


def running(actual, intended="running", msg=""):
    return {"actual_status": actual, "intended_status": intended, "status_msg": msg}


HAPPY = [
    running(None),
    running("loading", msg="pulling image"),
    running("running"),
    running("running"),
    "gone",
]


def launch(tmp_path: Path, *args: str, scenario: dict | None = None, env_text: str = ENV_TEXT,
           plan: dict | None = PLAN, api_key: bool = True):  # fmt: skip
    """Run the launcher in tmp_path with the fake vastai; (result, recorded vastai argvs)."""
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True, exist_ok=True)
    exe = fake / "bin" / "vastai"
    exe.write_text(f"#!{sys.executable}\n{FAKE_VASTAI}")
    exe.chmod(0o755)
    (fake / "scenario.json").write_text(
        json.dumps({"offers": OFFERS, "statuses": HAPPY, "logs": LOGS, **(scenario or {})})
    )
    (tmp_path / ".env").write_text(env_text)
    argv = [sys.executable, str(SCRIPT), *args, "--poll-s", "0"]
    if plan is not None:
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        argv += ["--plan-json", str(tmp_path / "plan.json")]
    env = {k: v for k, v in os.environ.items() if k != "VAST_API_KEY"}
    env.update(PATH=f"{fake / 'bin'}:{os.environ['PATH']}", FAKE_VAST_DIR=str(fake), HOME=str(tmp_path))
    if api_key:
        env["VAST_API_KEY"] = VAST_SECRET
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    calls_file = fake / "calls.jsonl"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
    assert HF_SECRET not in result.stdout + result.stderr, "a secret was printed"
    assert VAST_SECRET not in result.stdout + result.stderr, "the Vast API key was printed"
    return result, calls


def load_script():
    loader = SourceFileLoader("vast_launch", str(SCRIPT))
    spec = importlib.util.spec_from_loader("vast_launch", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["vast_launch"] = module  # dataclasses look their module up while the script executes
    loader.exec_module(module)
    return module


SEARCH = [
    "search",
    "offers",
    "num_gpus=1 gpu_ram>=16 disk_space>=20 cuda_vers>=12.8 reliability>0.98 inet_down>=500 dph<=3",
    "-o",
    "dph",
    "--storage",
    "20",
    "--raw",
]


def create(offer_id: str, env: str, *extra: str) -> list[str]:
    head = ["create", "instance", offer_id, "--image", IMAGE, "--disk", "20", "--label", "r1ft-test"]
    return [*head, "--env", env, *(extra or ("--cancel-unavail",)), "--raw", "--args"]


# --- the whole launch -----------------------------------------------------------------------------------
def test_launch_runs_the_exact_commands_and_follows_the_job_to_its_end(tmp_path):
    result, calls = launch(tmp_path, "--image", IMAGE, "--label", "r1ft-test", "--yes")
    assert result.returncode == 0, result.stderr
    env = (
        "-e R1FT_GPU_HOURLY_USD=0.3 -e R1FT_OUTPUT=hf://me/r1ft-test -e HF_TOKEN="
        + HF_SECRET
        + " -e R1FT_SEED=7"
    )
    show, logs = ["show", "instance", "123", "--raw"], ["logs", "123", "--tail", "200"]
    assert calls == [SEARCH, create("1002", env), show, show, show, logs, show, logs, show]
    out = result.stdout
    assert "chosen: offer 1002: 1x RTX 4090 24 GB, $0.300/h, " in out
    for line in ("waiting for the host", "loading: pulling the image", "pulling image", "running"):
        assert f"instance 123: {line}" in out
    log_lines = [line for line in out.splitlines() if line.startswith("  | ")]
    assert log_lines == [
        "  | r1ft 0.1.0 starting",
        "  | plan: ...",
        "  | oops, printed HF_TOKEN=***",
        "  | step 10 loss 1.2",
    ]
    assert "HF_TOKEN=***" in out  # the create command is shown, masked
    assert "results: hf://me/r1ft-test" in out
    assert "fetch them: scripts/collect hf://me/r1ft-test results/123" in out


def test_the_env_reaches_vast_intact_through_the_clis_own_parser(tmp_path):
    """Spaces, quotes, '=' and empty values: what `vastai create --env` parses is exactly the .env."""
    env_text = ENV_TEXT + "\n".join(
        [
            'R1FT_LORA_TARGETS="q_proj, v_proj"',
            "NOTE_EQUALS=a=b==c",
            "NOTE_QUOTES='say \"hi\" now'",
            "NOTE_APOSTROPHES=\"it''s\"",
            "NOTE_EMPTY=",
            'NOTE_TAB="a\tb"',
            "NOTE_UNICODE=Δx ≈ 3 µm",
            "AWS_SECRET_ACCESS_KEY=ab/cd+ef=gh ij",
        ]
    )
    result, calls = launch(tmp_path, "--image", IMAGE, "--label", "r1ft-test", "--yes", "--no-follow",
                           env_text=env_text)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (create_call,) = [c for c in calls if c[:2] == ["create", "instance"]]
    sent = parse_env(create_call[create_call.index("--env") + 1])
    assert sent == {
        "R1FT_GPU_HOURLY_USD": "0.3",
        "R1FT_OUTPUT": "hf://me/r1ft-test",
        "HF_TOKEN": HF_SECRET,
        "R1FT_SEED": "7",
        "R1FT_LORA_TARGETS": "q_proj, v_proj",
        "NOTE_EQUALS": "a=b==c",
        "NOTE_QUOTES": 'say "hi" now',
        "NOTE_APOSTROPHES": "it''s",
        "NOTE_EMPTY": "",
        "NOTE_TAB": "a\tb",
        "NOTE_UNICODE": "Δx ≈ 3 µm",
        "AWS_SECRET_ACCESS_KEY": "ab/cd+ef=gh ij",
    }
    assert "ab/cd+ef=gh ij" not in result.stdout + result.stderr
    assert create_call[-2:] == ["--raw", "--args"]  # args mode: the image's ENTRYPOINT runs the job


@pytest.mark.parametrize(
    "line",
    ['NOTE="it\'s"', "NOTE='\"quoted\"'", 'NOTE="two\nlines"'],
    ids=["odd-quote", "edge-quote", "newline"],
)
def test_a_value_the_cli_would_mangle_is_refused_before_anything_runs(tmp_path, line):
    result, calls = launch(tmp_path, "--image", IMAGE, "--yes", env_text=ENV_TEXT + line + "\n")
    assert result.returncode == 2
    assert "NOTE: its value cannot pass through `vastai create --env` intact" in result.stderr
    assert calls == []


def test_dry_run_prints_the_commands_with_secrets_masked_and_runs_none(tmp_path):
    result, calls = launch(tmp_path, "--image", IMAGE, "--label", "r1ft-test", "--dry-run", api_key=False)
    assert result.returncode == 0, result.stderr
    assert calls == []
    assert result.stdout.splitlines() == [
        "plan: 16 GB GPU memory or more, 20 GB disk, ~2.00 h of training on one H100",
        "vastai search offers 'num_gpus=1 gpu_ram>=16 disk_space>=20 cuda_vers>=12.8 reliability>0.98 "
        "inet_down>=500 dph<=3' -o dph --storage 20 --raw",
        f"vastai create instance OFFER_ID --image {IMAGE} --disk 20 --label r1ft-test --env '-e "
        "R1FT_GPU_HOURLY_USD=PRICE -e R1FT_OUTPUT=hf://me/r1ft-test -e HF_TOKEN=*** -e R1FT_SEED=7' "
        "--cancel-unavail --raw --args",
        "vastai show instance INSTANCE_ID --raw",
        "vastai logs INSTANCE_ID --tail 200",
    ]


def test_interruptible_bids_and_keeps_following_a_paused_instance(tmp_path):
    statuses = [running("running"), running("exited"), running("exited"), running("running"), "gone"]
    result, calls = launch(tmp_path, "--image", IMAGE, "--label", "r1ft-test", "--yes", "--interruptible",
                           scenario={"statuses": statuses})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert calls[0] == [*SEARCH[:-1], "--type", "bid", "--raw"]
    (create_call,) = [c for c in calls if c[:2] == ["create", "instance"]]
    # Offer 1003 has the lowest minimum bid; the bid is 15% above it.
    assert create_call[:3] == ["create", "instance", "1003"]
    assert (
        create_call[-5:] == ["--bid_price", "0.115", "--raw", "--args"][-5:] or "--bid_price" in create_call
    )
    assert create_call[create_call.index("--bid_price") + 1] == "0.115"
    assert "--cancel-unavail" not in create_call
    assert result.stdout.count("paused (outbid); it resumes when its bid is highest again") == 1
    assert "is gone: the job destroyed it after a verified publish" in result.stdout


def test_a_taken_offer_falls_back_to_the_next_one(tmp_path):
    scenario = {"create": ["fail", {"success": True, "new_contract": 124}], "statuses": ["gone"]}
    result, calls = launch(tmp_path, "--image", IMAGE, "--label", "r1ft-test", "--yes", scenario=scenario)
    assert result.returncode == 0, result.stderr
    assert [c[2] for c in calls if c[:2] == ["create", "instance"]] == ["1002", "1003"]
    assert (
        "offer no longer available" in result.stdout + result.stderr
        or "instance 124 created" in result.stdout
    )
    assert "instance 124 created on offer 1003" in result.stdout


def test_a_container_that_exits_leaves_the_instance_and_says_how_to_end_it(tmp_path):
    statuses = [running("running"), running("exited", intended="stopped", msg="Exited (3)")]
    result, calls = launch(tmp_path, "--image", IMAGE, "--label", "r1ft-test", "--yes",
                           scenario={"statuses": statuses})  # fmt: skip
    assert result.returncode == 1
    assert "instance 123: Exited (3)" in result.stdout
    assert "end the instance when done: vastai destroy instance 123 -y" in result.stdout
    assert calls[-1] == ["logs", "123", "--tail", "200"]  # the last words of the job are shown


def test_follow_reattaches_to_an_existing_instance(tmp_path):
    result, calls = launch(
        tmp_path, "--follow", "77", plan=None, scenario={"statuses": [running("running"), "gone"]}
    )
    assert result.returncode == 0, result.stderr
    assert calls == [
        ["show", "instance", "77", "--raw"],
        ["logs", "77", "--tail", "200"],
        ["show", "instance", "77", "--raw"],
    ]


# --- refusals before anything is rented ------------------------------------------------------------------
def test_the_plan_comes_from_r1ft_and_sets_the_filters(tmp_path):
    """Without --plan-json the launcher runs `python -m r1ft plan --json` on the .env (real plan)."""
    (tmp_path / "probe.env").write_text(ENV_TEXT)
    plan = json.loads(
        subprocess.run(
            [sys.executable, "-m", "r1ft", "--env-file", str(tmp_path / "probe.env"), "plan", "--json"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if not k.startswith("R1FT_")},
        ).stdout
    )
    result, _ = launch(tmp_path, "--image", IMAGE, "--dry-run", plan=None)
    assert result.returncode == 0, result.stderr
    gpu_ram = -(-plan["min_gpu_ram_gb"] // 0.85)
    assert f"gpu_ram>={int(gpu_ram)} disk_space>={plan['recommended_disk_gb']} " in result.stdout


def test_missing_plan_keys_get_safe_defaults(tmp_path):
    result, _ = launch(tmp_path, "--image", IMAGE, "--dry-run", plan={})
    assert result.returncode == 0, result.stderr
    assert "plan: 24 GB GPU memory or more, 40 GB disk, training time unknown" in result.stdout


def test_invalid_settings_stop_the_launch_with_the_plans_message(tmp_path):
    result, calls = launch(
        tmp_path, "--image", IMAGE, "--yes", plan=None, env_text=ENV_TEXT + "R1FT_EPOCS=2\n"
    )
    assert result.returncode == 2
    assert "R1FT_EPOCS: unknown setting; did you mean R1FT_EPOCHS?" in result.stderr
    assert calls == []


def test_a_plan_over_the_disk_budget_is_refused(tmp_path):
    result, calls = launch(tmp_path, "--image", IMAGE, "--yes", plan={**PLAN, "disk_peak_gb": 30.0})
    assert result.returncode == 2
    assert "raise R1FT_DISK_BUDGET_GB in the .env to at least 30" in result.stderr
    assert calls == []


def test_a_local_output_is_refused(tmp_path):
    result, calls = launch(tmp_path, "--image", IMAGE, "--yes", env_text="R1FT_SEED=1\n")
    assert result.returncode == 2
    assert "R1FT_OUTPUT is not set: on Vast the results must go to the Hub" in result.stderr
    assert calls == []


def test_no_confirmation_without_a_terminal_means_no_rental(tmp_path):
    result, calls = launch(tmp_path, "--image", IMAGE)
    assert result.returncode == 2
    assert "pass --yes" in result.stderr
    assert [c[:2] for c in calls] == [["search", "offers"]]


def test_no_api_key_is_refused(tmp_path):
    result, calls = launch(tmp_path, "--image", IMAGE, "--yes", api_key=False)
    assert result.returncode == 2 and "VAST_API_KEY" in result.stderr
    assert calls == []


# --- pieces ---------------------------------------------------------------------------------------------
def test_offers_are_ranked_by_projected_cost_of_the_training(monkeypatch):
    vl = load_script()
    monkeypatch.setattr(vl, "gpu_speed", lambda name: {"H100 SXM": 1.0, "RTX 3090": 0.2}.get(name, 0.5))
    args = vl.parse_args(["--image", IMAGE])
    needs = vl.Needs(gpu_ram_gb=16, disk_gb=20, train_hours=1.0, quant="none")
    offers = [
        {"id": 1, "gpu_name": "RTX 3090", "dph_total": 0.25},  # 5 h x 0.25 = 1.25
        {"id": 2, "gpu_name": "H100 SXM", "dph_total": 1.10},  # 1 h x 1.10 = 1.10
        {"id": 3, "gpu_name": "RTX 4090", "dph_total": 0.60},  # 2 h x 0.60 = 1.20
    ]
    assert [o["id"] for o in vl.ranked_offers(offers, needs, args)] == [2, 3, 1]


def test_new_log_lines_are_those_after_the_overlap():
    vl = load_script()
    assert vl.new_lines([], ["a", "b"]) == ["a", "b"]
    assert vl.new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert vl.new_lines(["a", "b"], ["a", "b"]) == []
    assert vl.new_lines(["x"], ["y"]) == ["y"]


def test_secrets_are_masked_argument_by_argument():
    vl = load_script()
    secrets = vl.secret_values({"HF_TOKEN": "it's", "MY_PASSWORD": "p w", "R1FT_SEED": "1"})
    assert set(secrets) >= {"it's", "p w"} and "1" not in secrets
    line = vl.shown(["vastai", "--env", "-e HF_TOKEN='it'\"'\"'s' -e P=\"p w\""], ["p w"])
    assert "p w" not in line


def test_a_failed_poll_is_retried_not_fatal(tmp_path):
    statuses = [running("running"), "fail", running("running"), "gone"]
    result, calls = launch(tmp_path, "--follow", "77", plan=None, scenario={"statuses": statuses})
    assert result.returncode == 0, result.stderr
    assert "instance 77: poll failed (" in result.stdout and "Bad Gateway" in result.stdout
    assert sum(c[:2] == ["show", "instance"] for c in calls) == 4
