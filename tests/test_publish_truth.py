"""What a finished run publishes tells the truth, on the smoke job end to end: `last-checkpoint/` ends at
the final step (also when pushes lag), a publish retried after exit 3 rewrites the report's state here and
at the destination, collect refuses a manifest that lost or gained an entry, no credential identifier is
published or logged, and the published adapter names its Hub base the way PEFT would."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import pytest
from jobrun import REPO, job_env, published_dir, run_dir_of, run_job, run_job_until
from s3server import job_bucket, s3_server

pytestmark = pytest.mark.slow

KEY_ID = "AKIAR1FTTESTKEY12345"  # shaped like a real AWS access key id
AWS_SECRET = "r1ft-test-secret-" + "q" * 23
HF_TOKEN = "hf_" + "R1ftTestTokenValue" * 2


@pytest.fixture(scope="module")
def s3_run(tmp_path_factory):
    """The smoke job to S3 over a slow link, pushing last-checkpoint/ every second save (steps 8, not 4 or
    12): what the destination holds afterwards, and the job's output."""
    tmp = tmp_path_factory.mktemp("s3run")
    with s3_server() as (endpoint, faults):
        env = job_env(tmp, **job_bucket(endpoint))
        env.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=AWS_SECRET, HF_TOKEN=HF_TOKEN,
                   R1FT_PUSH_CHECKPOINT_EVERY="2")  # fmt: skip
        faults.slow_puts_s = 0.1
        result = run_job(env, tmp)
        faults.slow_puts_s = 0.0
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY_ID,
                          aws_secret_access_key=AWS_SECRET, region_name="us-east-1")  # fmt: skip
        objects = {
            o["Key"]: s3.get_object(Bucket="results", Key=o["Key"])["Body"].read()
            for o in s3.list_objects_v2(Bucket="results")["Contents"]
        }
    assert result.rc == 0, result.output[-3000:]
    return tmp, result, objects


def test_last_checkpoint_ends_at_the_final_step_and_the_report_says_so(s3_run):
    tmp, _, objects = s3_run
    state = json.loads(objects["runs/smoke/last-checkpoint/trainer_state.json"])
    assert state["global_step"] == 12
    report = json.loads((run_dir_of(tmp) / "report.json").read_text())
    assert report["last_checkpoint"] == {**report["last_checkpoint"], "step": 12, "newest_step": 12,
                                         "pushed": True}  # fmt: skip
    assert report["last_checkpoint"]["location"] == "s3://results/runs/smoke/last-checkpoint"
    card = objects["runs/smoke/README.md"].decode()
    assert "`s3://results/runs/smoke/last-checkpoint` holds step 12, the newest checkpoint." in card


def test_the_published_report_and_card_say_verified(s3_run):
    tmp, _, objects = s3_run
    published = json.loads(objects["runs/smoke/report.json"])
    assert published["publish"]["verified"] is True and published["error"] is None
    manifest = json.loads(objects["runs/smoke/manifest.json"])
    assert published["publish"]["files"] == manifest["total_files"] + 1
    assert published["publish"]["bytes"] == manifest["total_bytes"]
    assert objects["runs/smoke/report.json"] == (run_dir_of(tmp) / "report.json").read_bytes()
    assert b"verified against `manifest.json`" in objects["runs/smoke/README.md"]


def test_no_credential_identifier_in_any_output_file_or_log(s3_run):
    tmp, result, objects = s3_run
    needles = [KEY_ID, KEY_ID[:10], AWS_SECRET, HF_TOKEN, HF_TOKEN[:10]]
    texts = {"output": result.output.encode()}
    texts |= {f"s3:{k}": v for k, v in objects.items()}
    texts |= {str(p): p.read_bytes() for p in tmp.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000}
    assert (run_dir_of(tmp) / "job.log").is_file()
    for where, data in texts.items():
        for needle in needles:
            assert needle.encode() not in data, (needle[:6], where)
    assert "aws_access_key_id" in json.loads(objects["runs/smoke/report.json"])["settings"]["secrets_set"]


# --- a publish that failed, then succeeded --------------------------------------------------------------


@pytest.fixture(scope="module")
def republished(tmp_path_factory):
    """The smoke job whose destination turns into a file during the merge (its publish fails: exit 3), then
    `r1ft publish --run-dir` once it is a directory again."""
    tmp = tmp_path_factory.mktemp("republished")
    out = published_dir(tmp)

    def break_destination(proc):
        shutil.rmtree(out)
        out.write_text("not a directory any more")

    failed = run_job_until(job_env(tmp), tmp, "== merge", after=break_destination)
    assert failed.rc == 3, failed.output[-3000:]
    run_dir = run_dir_of(tmp)
    assert json.loads((run_dir / "report.json").read_text())["error"].startswith("publish failed: ")
    out.unlink()
    again = run_job(job_env(tmp), tmp, "publish", "--run-dir", str(run_dir))
    assert again.rc == 0, again.output[-3000:]
    return tmp, run_dir


def test_a_later_publish_rewrites_the_state_locally_and_at_the_destination(republished):
    tmp, run_dir = republished
    local = json.loads((run_dir / "report.json").read_text())
    remote = json.loads((published_dir(tmp) / "report.json").read_text())
    assert local == remote
    assert remote["error"] is None and remote["publish"]["verified"] is True
    assert remote["publish"]["error"] is None and remote["publish"]["location"] == str(published_dir(tmp))
    (failure,) = remote["history"]["failed_publishes"]  # the failure is history, not the state
    assert "not a directory" in failure["error"].lower() or "exists" in failure["error"].lower()
    card = (published_dir(tmp) / "README.md").read_text()
    assert "verified against `manifest.json`" in card and "failed" not in card.split("## Recipe")[0]


def test_collect_summary_of_the_republished_run_says_verified(republished, tmp_path):
    tmp, _ = republished
    (tmp_path / "none.env").touch()  # an empty settings file: nothing from the caller's ./.env
    collect = [sys.executable, str(REPO / "scripts" / "collect"), "--env-file", str(tmp_path / "none.env")]
    got = subprocess.run([*collect, str(published_dir(tmp)), str(tmp_path / "got")], capture_output=True,
                         text=True, timeout=120, env=job_env(tmp_path))  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert f"publish: location {published_dir(tmp)}, verified True" in got.stdout
    assert "ERROR" not in got.stdout


def edited_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dst


def drop_merged_weights(manifest: dict) -> None:
    manifest["files"] = [f for f in manifest["files"] if not f["path"].startswith("merged/model")]


def add_an_entry(manifest: dict) -> None:
    manifest["files"].append(dict(manifest["files"][0]))


@pytest.mark.parametrize(
    ("edit", "message"),
    [(drop_merged_weights, "but its total_files says"), (add_an_entry, "more than once")],
    ids=["entry-removed", "entry-added"],
)
def test_collect_refuses_a_manifest_with_missing_or_extra_entries(republished, tmp_path, edit, message):
    tmp, _ = republished
    src = edited_copy(published_dir(tmp), tmp_path / "edited", edit)
    result = run_job(job_env(tmp_path), tmp_path, "collect", str(src), str(tmp_path / "got"), timeout=120)
    assert result.rc == 3, result.output[-2000:]
    assert message in result.output and "entries are missing or extra" in result.output
    assert "Traceback" not in result.output


# --- the adapter names its Hub base ---------------------------------------------------------------------

HUB_BASE = "someone/tiny-r1"
HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"

LOAD_PUBLISHED_ADAPTER = textwrap.dedent(
    """
    import sys, torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM
    adapter, base_dir = sys.argv[1], sys.argv[2]
    model = AutoPeftModelForCausalLM.from_pretrained(adapter, dtype=torch.float32).eval()  # by id, offline
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, adapter).eval()  # the base training used, by path
    ids = torch.tensor([[1, 17, 42, 99, 7]])
    with torch.no_grad():
        err = (model(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max().item()
    assert err == 0.0, err
    """
)


def test_the_published_adapter_loads_onto_its_hub_base_by_id(republished, tmp_path):
    """A run whose base came from the Hub (its report says so; the weights are the tiny model's, cached as
    that Hub repo): the published adapter_config.json names the Hub id and revision, and a user's
    AutoPeftModelForCausalLM.from_pretrained(<published adapter>) loads it with nothing else given."""
    _, run_dir = republished
    run = shutil.copytree(run_dir, tmp_path / "runs" / "hub-run")
    report = json.loads((run / "report.json").read_text())
    base_dir = Path(
        json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    assert base_dir.is_dir()  # training loaded the base from a local directory, as on the GPU instance
    report["settings"].update(base_model=HUB_BASE, base_revision=HUB_REVISION)
    (run / "report.json").write_text(json.dumps(report))
    cache = tmp_path / "hf_cache"
    repo = cache / f"models--{HUB_BASE.replace('/', '--')}"
    shutil.copytree(base_dir, repo / "snapshots" / HUB_REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_REVISION)
    env = job_env(tmp_path, R1FT_OUTPUT=str(tmp_path / "published"))
    assert run_job(env, tmp_path, "publish", "--run-dir", str(run)).rc == 0
    config = json.loads((tmp_path / "published" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == HUB_BASE and config["revision"] == HUB_REVISION
    manifest = json.loads((tmp_path / "published" / "manifest.json").read_text())
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    digest = hashlib.sha256((tmp_path / "published" / "adapter" / "adapter_config.json").read_bytes())
    assert listed["adapter/adapter_config.json"] == digest.hexdigest()
    user = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    loaded = subprocess.run([sys.executable, "-c", LOAD_PUBLISHED_ADAPTER, str(tmp_path / "published" / "adapter"),
                             str(base_dir)], capture_output=True, text=True, env=user, timeout=300)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
