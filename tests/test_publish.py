"""Publishing: S3 against moto's real HTTP server (with injected failures), the Hub through a fake HfApi,
local directories; manifests, verification, streaming, checkpoints and collect."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import boto3
import pytest
from fakehub import FakeHfApi, http_error
from s3server import s3_server

from r1ft.publish.checkpoint import fetch_last_checkpoint, push_checkpoint
from r1ft.publish.collect import collect
from r1ft.publish.connect import destination_for
from r1ft.publish.destination import PublishError
from r1ft.publish.location import Location, LocationError, parse_location
from r1ft.publish.manifest import CHECKPOINT_DIR, MANIFEST, run_files
from r1ft.publish.retry import RetryPolicy, retry_after_seconds
from r1ft.publish.run import publish_run
from r1ft.settings_load import load_settings

RUN_ID = "r1ft-smoke-test"
AWS_SECRET = "s3-secret-value-never-shown"
HF_TOKEN = "hf_" + "T0kenValueNeverShown" * 2
MIB = 1024 * 1024


class Sleeps(list):
    """A `sleep` that records instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fast(attempts: int = 4, sleep=None) -> RetryPolicy:
    return RetryPolicy(
        attempts=attempts,
        initial_s=0.001,
        max_s=0.01,
        sdk_attempts=2,
        sleep=sleep if sleep is not None else (lambda s: None),
    )


def make_run(root: Path, big: int = 6 * MIB) -> Path:
    """A finished run directory in the contract's layout, small random files (one `big` shard)."""
    run = root / "work" / "runs" / RUN_ID
    rng = __import__("random").Random(0)
    files = {
        "adapter/adapter_config.json": b'{"r": 16, "lora_alpha": 32}',
        "adapter/adapter_model.safetensors": rng.randbytes(300_000),
        "adapter/tokenizer.json": b'{"model": {}}' * 50,
        "merged/config.json": b'{"model_type": "qwen2"}',
        "merged/generation_config.json": b'{"do_sample": true}',
        "merged/model-00001-of-00002.safetensors": rng.randbytes(big),
        "merged/model-00002-of-00002.safetensors": rng.randbytes(1_200_000),
        "merged/model.safetensors.index.json": b'{"weight_map": {}}',
        "logs/events.out.tfevents.1700000000.host.1.0": rng.randbytes(5_000),
        "eval/results.json": b'{"accuracy": 0.5}',
        "eval/samples.jsonl": b'{"id": 1}\n' * 20,
        "report.json": b'{"run_id": "r1ft-smoke-test"}',
        "README.md": b"# model card\n",
        "data/train.jsonl": b"not published\n",
        "checkpoints/checkpoint-4/adapter_model.safetensors": b"not published either",
    }
    for rel, data in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    return run


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_same_files(run: Path, collected: Path) -> None:
    """Every published file came back byte for byte, plus the manifest; nothing else."""
    published = set(run_files(run)) | {MANIFEST}
    got = {p.relative_to(collected).as_posix() for p in collected.rglob("*") if p.is_file()}
    assert got == published
    for rel in published:
        assert (collected / rel).read_bytes() == (run / rel).read_bytes(), rel


# --- locations ----------------------------------------------------------------------------------------


def test_parse_location():
    assert parse_location("hf://me/model") == Location("hf", repo="me/model")
    assert parse_location("hf://me/model@dev") == Location("hf", repo="me/model", revision="dev")
    assert parse_location("s3://bucket/a/b/") == Location("s3", bucket="bucket", prefix="a/b")
    assert parse_location("s3://bucket") == Location("s3", bucket="bucket")
    assert parse_location("file:///data/out") == Location("local", path=Path("/data/out"))
    assert parse_location("out/dir") == Location("local", path=Path("out/dir"))
    assert parse_location("s3://bucket/a/b/").uri == "s3://bucket/a/b" and parse_location("hf://me/m").remote
    bad = ("gs://bucket/x", "hf://nobody", "s3:///x", "", "file://", "hf://a/b@", "s3://bucket/../x",
           "s3://bucket/a//b", "hf://a/b@dev..x", "s3://Bad_Bucket/x", "hf://a--b/c", "hf:/me/model",
           "s3:/bucket/x", "hf:me/model", "file:/data/out")  # fmt: skip
    for uri in bad:
        with pytest.raises(LocationError):
            parse_location(uri)


def test_retry_after_parsing():
    assert retry_after_seconds(http_error(429, "7")) == 7.0
    assert 0 <= retry_after_seconds(http_error(429, "Wed, 21 Oct 2015 07:28:00 GMT")) <= 1
    assert retry_after_seconds(http_error(503)) is None
    assert retry_after_seconds(ValueError("no response")) is None


# --- local directories --------------------------------------------------------------------------------


def test_local_default_destination_publish_and_collect(tmp_path, monkeypatch):
    run = make_run(tmp_path, big=100_000)
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"R1FT_PRESET": "smoke"}, env_file=None)
    result = publish_run(settings, run, RUN_ID)
    published = tmp_path / "runs" / RUN_ID
    assert result.verified and result.location == str(published)
    assert result.files == len(run_files(run)) + 1
    manifest = json.loads((published / MANIFEST).read_text())
    assert {f["path"] for f in manifest["files"]} == set(run_files(run))
    assert not (published / "data").exists() and not (published / "checkpoints").exists()
    back = collect(f"file://{published}", tmp_path / "back", settings)
    assert back.verified and back.files == len(run_files(run))
    assert_same_files(run, tmp_path / "back")


def test_local_publish_onto_itself_only_writes_the_manifest(tmp_path):
    run = make_run(tmp_path, big=10_000)
    settings = load_settings({"R1FT_PRESET": "smoke", "R1FT_OUTPUT": str(run)}, env_file=None)
    before = tree_digest(run)
    result = publish_run(settings, run, RUN_ID)
    assert result.verified
    after = tree_digest(run)
    assert after.pop(MANIFEST) and after == before


def test_local_streamed_shard_moves_and_lands_in_the_manifest(tmp_path):
    run = make_run(tmp_path, big=50_000)
    out = tmp_path / "published"
    settings = load_settings({"R1FT_PRESET": "smoke", "R1FT_OUTPUT": f"file://{out}"}, env_file=None)
    dest = destination_for(settings)
    shard = run / "merged/model-00001-of-00002.safetensors"
    original = shard.read_bytes()
    dest.stage_file(shard, "merged/model-00001-of-00002.safetensors", delete_after=True)
    assert not shard.exists() and (out / "merged/model-00001-of-00002.safetensors").read_bytes() == original
    result = publish_run(settings, run, RUN_ID, dest=dest)
    assert result.verified
    listed = {f["path"] for f in json.loads((out / MANIFEST).read_text())["files"]}
    assert "merged/model-00001-of-00002.safetensors" in listed


def test_publishing_a_wrong_run_dir_publishes_nothing(tmp_path):
    out = tmp_path / "published"
    settings = load_settings({"R1FT_PRESET": "smoke", "R1FT_OUTPUT": str(out)}, env_file=None)
    with pytest.raises(PublishError, match="nothing to publish"):
        publish_run(settings, tmp_path / "no-such-run", RUN_ID)
    assert not out.exists()  # a good manifest there would not be replaced by an empty one


def test_collect_detects_a_damaged_file(tmp_path):
    run = make_run(tmp_path, big=10_000)
    out = tmp_path / "published"
    settings = load_settings({"R1FT_PRESET": "smoke", "R1FT_OUTPUT": str(out)}, env_file=None)
    publish_run(settings, run, RUN_ID)
    (out / "eval/results.json").write_bytes(b'{"accuracy": 0.9}')  # same size, other bytes
    with pytest.raises(PublishError, match=r"eval/results\.json: sha256 differs"):
        collect(str(out), tmp_path / "back", settings)
    with pytest.raises(PublishError, match=r"has no manifest\.json"):
        collect(str(tmp_path / "nowhere"), tmp_path / "back2", settings)


# --- S3 (moto's server mode over HTTP on loopback) ----------------------------------------------------


@pytest.fixture
def s3():
    with s3_server() as (endpoint, faults):
        admin = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="x",
            aws_secret_access_key="y",
            region_name="us-east-1",
        )
        admin.create_bucket(Bucket="results")
        yield endpoint, faults, admin


def s3_settings(endpoint: str, prefix: str = "runs/smoke"):
    env = {
        "R1FT_PRESET": "smoke",
        "R1FT_OUTPUT": f"s3://results/{prefix}",
        "AWS_ACCESS_KEY_ID": "test-key-id",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return load_settings(env, env_file=None)


def s3_dest(settings, retry: RetryPolicy):
    dest = destination_for(settings, retry=retry)
    dest.part_size = 5 * MIB  # S3's smallest part: the 6 MiB shard goes up in two parts
    return dest


def test_s3_publish_then_collect_is_byte_identical(s3, tmp_path):
    endpoint, faults, admin = s3
    run = make_run(tmp_path)
    settings = s3_settings(endpoint)
    result = publish_run(settings, run, RUN_ID, dest=s3_dest(settings, fast()))
    assert result.verified and result.location == "s3://results/runs/smoke"
    keys = {o["Key"] for o in admin.list_objects_v2(Bucket="results")["Contents"]}
    assert keys == {f"runs/smoke/{rel}" for rel in [*run_files(run), MANIFEST]}
    big = admin.head_object(Bucket="results", Key="runs/smoke/merged/model-00001-of-00002.safetensors")
    assert big["ETag"].strip('"').endswith("-2")  # really multipart
    uploads = [path for method, path, _ in faults.log if method == "PUT"]
    assert uploads[-1].startswith("/results/runs/smoke/manifest.json")  # the manifest goes last
    back = collect(settings.output, tmp_path / "back", settings, retry=fast())
    assert back.verified
    assert_same_files(run, tmp_path / "back")
    assert AWS_SECRET not in result.message + back.message


@pytest.mark.parametrize(
    ("fail_after", "parts_only"), [(0, True), (6, False)], ids=["multipart-parts", "after-six-uploads"]
)
def test_s3_injected_500s_mid_upload_still_end_verified(s3, tmp_path, caplog, fail_after, parts_only):
    endpoint, faults, _ = s3
    run = make_run(tmp_path)
    settings = s3_settings(endpoint)
    faults.fail_uploads, faults.fail_after, faults.parts_only = 4, fail_after, parts_only
    with caplog.at_level(logging.WARNING):
        result = publish_run(settings, run, RUN_ID, dest=s3_dest(settings, fast()))
    assert result.verified
    failed = [path for method, path, status in faults.log if method == "PUT" and status == 500]
    assert len(failed) == 4
    assert all("partNumber=" in path for path in failed) == parts_only
    collect(settings.output, tmp_path / "back", settings, retry=fast())
    assert_same_files(run, tmp_path / "back")
    assert AWS_SECRET not in caplog.text


def test_s3_store_without_checksums_is_verified_by_etag_and_size(s3, tmp_path, caplog):
    endpoint, faults, admin = s3
    run = make_run(tmp_path)
    settings = s3_settings(endpoint)
    faults.refuse_checksums = True
    with caplog.at_level(logging.WARNING):
        result = publish_run(settings, run, RUN_ID, dest=s3_dest(settings, fast()))
    assert result.verified and "refuses SHA256 checksums" in caplog.text
    head = admin.head_object(Bucket="results", Key="runs/smoke/README.md", ChecksumMode="ENABLED")
    assert "ChecksumSHA256" not in head
    collect(settings.output, tmp_path / "back", settings, retry=fast())
    assert_same_files(run, tmp_path / "back")


def test_s3_down_ends_in_publish_error_with_nothing_lost(s3, tmp_path, caplog):
    endpoint, faults, _ = s3
    run = make_run(tmp_path, big=100_000)
    before = tree_digest(run)
    settings = s3_settings(endpoint)
    faults.down = True
    with caplog.at_level(logging.WARNING), pytest.raises(PublishError) as err:
        publish_run(settings, run, RUN_ID, dest=s3_dest(settings, fast(attempts=2)))
    message = str(err.value)
    assert f"r1ft publish --run-dir {run}" in message
    assert str(run.resolve()) in message and "s3://results/runs/smoke" in message
    assert AWS_SECRET not in message + caplog.text
    assert tree_digest(run) == before  # every output still there, untouched


def test_s3_unreachable_endpoint_ends_in_publish_error(tmp_path):
    run = make_run(tmp_path, big=1000)
    settings = s3_settings("http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(PublishError, match="r1ft publish --run-dir"):
        publish_run(settings, run, RUN_ID, retry=fast(attempts=2))


def test_s3_streamed_shard_is_deleted_locally_and_in_the_manifest(s3, tmp_path):
    endpoint, _, _ = s3
    run = make_run(tmp_path)
    settings = s3_settings(endpoint)
    dest = s3_dest(settings, fast())
    shard = run / "merged/model-00001-of-00002.safetensors"
    original = shard.read_bytes()
    dest.stage_file(shard, "merged/model-00001-of-00002.safetensors", delete_after=True)
    assert not shard.exists()  # verified at the destination, then freed
    result = publish_run(settings, run, RUN_ID, dest=dest)
    assert result.verified
    listed = {f["path"] for f in json.loads((run / MANIFEST).read_text())["files"]}
    assert "merged/model-00001-of-00002.safetensors" in listed
    collect(settings.output, tmp_path / "back", settings, retry=fast())
    assert (tmp_path / "back/merged/model-00001-of-00002.safetensors").read_bytes() == original


def test_s3_collect_detects_a_replaced_object(s3, tmp_path):
    endpoint, _, admin = s3
    run = make_run(tmp_path, big=1000)
    settings = s3_settings(endpoint)
    publish_run(settings, run, RUN_ID, retry=fast())
    admin.put_object(Bucket="results", Key="runs/smoke/README.md", Body=b"# other card\n")
    with pytest.raises(PublishError, match=r"README\.md"):
        collect(settings.output, tmp_path / "back", settings, retry=fast())


def make_checkpoint(run: Path, step: int, files: dict[str, bytes]) -> Path:
    ckpt = run / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (ckpt / rel).write_bytes(data)
    return ckpt


def test_s3_checkpoint_push_replaces_and_fetch_verifies(s3, tmp_path):
    endpoint, _, admin = s3
    run = make_run(tmp_path, big=1000)
    settings = s3_settings(endpoint)
    assert fetch_last_checkpoint(settings, tmp_path / "resume", retry=fast()) is None  # nothing yet
    first = make_checkpoint(run, 4, {"adapter_model.safetensors": b"a" * 2000, "optimizer.pt": b"o" * 3000})
    push_checkpoint(settings, first, retry=fast())
    second = make_checkpoint(run, 8, {"adapter_model.safetensors": b"b" * 2000, "trainer_state.json": b"{}"})
    result = push_checkpoint(settings, second, retry=fast())
    assert result.verified and result.location == f"s3://results/runs/smoke/{CHECKPOINT_DIR}"
    keys = {o["Key"] for o in admin.list_objects_v2(Bucket="results", Prefix="runs/smoke/last")["Contents"]}
    prefix = f"runs/smoke/{CHECKPOINT_DIR}/"
    assert keys == {prefix + n for n in ("adapter_model.safetensors", "trainer_state.json", MANIFEST)}
    got = fetch_last_checkpoint(settings, tmp_path / "resume", retry=fast())
    assert got == tmp_path / "resume"
    assert tree_digest(got) == tree_digest(second)
    admin.delete_object(Bucket="results", Key=prefix + MANIFEST)  # a push that never finished
    assert fetch_last_checkpoint(settings, tmp_path / "resume2", retry=fast()) is None


# --- the Hub (through a fake HfApi) -------------------------------------------------------------------


def hub_settings(output: str = "hf://me/r1ft-math", **extra: str):
    return load_settings(
        {"R1FT_PRESET": "smoke", "R1FT_OUTPUT": output, "HF_TOKEN": HF_TOKEN, **extra}, env_file=None
    )


def hub_dest(settings, api: FakeHfApi, retry: RetryPolicy | None = None):
    return destination_for(settings, retry=retry or fast(), hf_api=api)


def test_hub_publish_sequence_and_collect(tmp_path):
    run = make_run(tmp_path, big=2 * MIB)
    api = FakeHfApi()
    settings = hub_settings()
    result = publish_run(settings, run, RUN_ID, dest=hub_dest(settings, api))
    assert result.verified and result.location == "hf://me/r1ft-math"
    names = api.names()
    assert names[0] == "create_repo" and api.calls[0][1]["private"] is True
    assert names.count("create_commit") == 1
    commit = names.index("create_commit")
    assert set(names[1:commit]) == {"preupload_lfs_files"}  # large files go up before the commit
    preuploaded = {p for name, d in api.calls if name == "preupload_lfs_files" for p in d["paths"]}
    assert "merged/model-00001-of-00002.safetensors" in preuploaded and "README.md" not in preuploaded
    assert names[commit + 1 :] == ["list_repo_tree"]  # then the revision is verified
    details = api.calls[commit][1]
    assert set(details["adds"]) == set(run_files(run)) | {MANIFEST}
    assert RUN_ID in details["message"] and "files" in details["message"]
    assert api.repos["me/r1ft-math"]["commits"] == [details["message"]]
    back = collect("hf://me/r1ft-math", tmp_path / "back", settings, retry=fast(), hf_api=api)
    assert back.verified
    assert_same_files(run, tmp_path / "back")


def test_hub_public_repo_on_a_branch(tmp_path):
    run = make_run(tmp_path, big=1000)
    api = FakeHfApi()
    settings = hub_settings("hf://me/r1ft-math@dev", R1FT_HF_PRIVATE="false")
    publish_run(settings, run, RUN_ID, dest=hub_dest(settings, api))
    assert api.calls[0] == ("create_repo", {"repo_id": "me/r1ft-math", "private": False, "exist_ok": True})
    assert ("create_branch", {"repo_id": "me/r1ft-math", "branch": "dev"}) in api.calls
    commit = next(d for name, d in api.calls if name == "create_commit")
    assert commit["revision"] == "dev"
    assert MANIFEST in api.files("me/r1ft-math", "dev") and not api.files("me/r1ft-math")


def test_hub_commit_retries_5xx_and_429_honouring_retry_after(tmp_path, caplog):
    run = make_run(tmp_path, big=2 * MIB)
    api = FakeHfApi()
    api.fail["create_commit"] = [http_error(503), http_error(429, retry_after="7")]
    api.fail["preupload_lfs_files"] = [http_error(502)]
    sleeps = Sleeps()
    settings = hub_settings()
    with caplog.at_level(logging.WARNING):
        result = publish_run(settings, run, RUN_ID, dest=hub_dest(settings, api, fast(sleep=sleeps)))
    assert result.verified
    assert api.names().count("create_commit") == 3
    assert len(api.repos["me/r1ft-math"]["commits"]) == 1  # one commit landed
    assert 7.0 in sleeps  # Retry-After wins over the tiny exponential wait
    assert all(s < 0.1 for s in sleeps if s != 7.0)
    assert HF_TOKEN not in caplog.text


def test_hub_final_failure_raises_publish_error(tmp_path, caplog):
    run = make_run(tmp_path, big=2 * MIB)
    before = tree_digest(run)
    api = FakeHfApi()
    api.fail["create_commit"] = [http_error(500) for _ in range(4)]
    settings = hub_settings()
    with caplog.at_level(logging.WARNING), pytest.raises(PublishError) as err:
        publish_run(settings, run, RUN_ID, dest=hub_dest(settings, api, fast(attempts=4)))
    message = str(err.value)
    assert api.names().count("create_commit") == 4
    assert f"r1ft publish --run-dir {run}" in message and "hf://me/r1ft-math" in message
    assert HF_TOKEN not in message + caplog.text
    assert MANIFEST not in api.files("me/r1ft-math")  # nothing half-published
    before[MANIFEST] = tree_digest(run)[MANIFEST]  # the only new local file
    assert tree_digest(run) == before


def test_hub_client_errors_are_not_retried(tmp_path):
    run = make_run(tmp_path, big=1000)
    api = FakeHfApi()
    api.fail["create_repo"] = [http_error(403)]
    settings = hub_settings()
    with pytest.raises(PublishError, match="403"):
        publish_run(settings, run, RUN_ID, dest=hub_dest(settings, api))
    assert api.names() == ["create_repo"]


def test_hub_verification_catches_a_bad_revision(tmp_path):
    run = make_run(tmp_path, big=1000)
    api = FakeHfApi()
    real_commit = api.create_commit

    def lossy_commit(repo_id, operations, **kw):
        out = real_commit(repo_id, operations, **kw)
        api.files(repo_id)["eval/results.json"] = b"{}"  # the revision does not hold what was sent
        return out

    api.create_commit = lossy_commit
    settings = hub_settings()
    with pytest.raises(PublishError, match=r"could not be verified: eval/results\.json: size"):
        publish_run(settings, run, RUN_ID, dest=hub_dest(settings, api))


def test_hub_streaming_frees_shards_before_the_single_commit(tmp_path):
    run = make_run(tmp_path, big=2 * MIB)
    api = FakeHfApi()
    settings = hub_settings()
    dest = hub_dest(settings, api)
    shard = run / "merged/model-00001-of-00002.safetensors"
    small = run / "merged/config.json"
    original = shard.read_bytes()
    dest.stage_file(shard, "merged/model-00001-of-00002.safetensors", delete_after=True)
    assert not shard.exists()  # pre-uploaded (LFS), so freed at once
    dest.stage_file(small, "merged/config.json", delete_after=True)
    assert small.exists()  # a plain git file: the commit still needs it
    assert "create_commit" not in api.names()
    publish_run(settings, run, RUN_ID, dest=dest)
    assert api.names().count("create_commit") == 1 and not small.exists()
    assert api.files("me/r1ft-math")["merged/model-00001-of-00002.safetensors"] == original
    listed = {f["path"] for f in json.loads(api.files("me/r1ft-math")[MANIFEST])["files"]}
    assert {"merged/model-00001-of-00002.safetensors", "merged/config.json"} <= listed


def test_hub_checkpoint_push_and_fetch(tmp_path):
    run = make_run(tmp_path, big=1000)
    api = FakeHfApi()
    settings = hub_settings()
    dest = hub_dest(settings, api)
    assert fetch_last_checkpoint(settings, tmp_path / "resume", source=dest) is None  # no repo yet
    first = make_checkpoint(run, 4, {"adapter_model.safetensors": b"a" * 2000, "optimizer.pt": b"o" * 3000})
    push_checkpoint(settings, first, dest=dest)
    second = make_checkpoint(run, 8, {"adapter_model.safetensors": b"b" * 2000, "scheduler.pt": b"s"})
    push_checkpoint(settings, second, dest=dest)
    commits = [d for name, d in api.calls if name == "create_commit"]
    assert len(commits) == 2 and commits[1]["deletes"] == [f"{CHECKPOINT_DIR}/optimizer.pt"]
    assert "checkpoint-8" in commits[1]["message"]
    assert not dest.staged  # checkpoint files are not part of the run's manifest
    got = fetch_last_checkpoint(settings, tmp_path / "resume", source=dest)
    assert got is not None and tree_digest(got) == tree_digest(second)
    assert not list(tmp_path.glob("resume.partial"))


def test_no_secret_in_any_error(tmp_path):
    run = make_run(tmp_path, big=1000)
    api = FakeHfApi()
    api.fail["create_repo"] = [http_error(401, url=f"https://huggingface.co/api?token={HF_TOKEN}")]
    settings = hub_settings()
    with pytest.raises(PublishError) as err:
        publish_run(settings, run, RUN_ID, dest=hub_dest(settings, api))
    assert HF_TOKEN not in str(err.value) and "401" in str(err.value)
    assert os.fspath(run) in str(err.value)
