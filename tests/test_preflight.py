"""The destination is proved writable before anything is spent, and the resume lookup never mistakes "could
not look" for "there is nothing": S3 against moto's real HTTP server (with moto's IAM checks, injected
failures, a server that never answers), the Hub through the fake HfApi, real directories; and the job
itself, which must stop before downloading the base model (exit 2 with the fix, 3 when unreachable)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import boto3
import pytest
from fakehub import FakeHfApi, http_error
from jobrun import job_env, run_job
from s3server import Credentials, iam_enforced, iam_user, job_bucket, s3_server

from r1ft.checkpoints.resume import find_resume_point
from r1ft.exits import JobError
from r1ft.publish.checkpoint import push_checkpoint
from r1ft.publish.connect import destination_for
from r1ft.publish.destination import DestinationDenied, DestinationUnreachable
from r1ft.publish.preflight import check_destination, reach
from r1ft.publish.retry import RetryPolicy
from r1ft.settings_load import load_settings

RUN_ID = "r1ft-smoke-preflight"
SECRET_SHOWN_NEVER = "never-shown-secret-value"


def fast(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, initial_s=0.01, max_s=0.02, sdk_attempts=1, deadline_s=10)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3():
    with s3_server() as (endpoint, faults):
        admin = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                             region_name="us-east-1")  # fmt: skip
        admin.create_bucket(Bucket="results")
        yield endpoint, faults, admin


def s3_settings(endpoint: str, creds: Credentials | None = None, output: str = "s3://results/runs/smoke"):
    creds = creds or Credentials("test-key-id", SECRET_SHOWN_NEVER)
    env = {"R1FT_PRESET": "smoke", "R1FT_OUTPUT": output, "AWS_ACCESS_KEY_ID": creds.key_id,
           "AWS_SECRET_ACCESS_KEY": creds.secret, "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    return load_settings(env, env_file=None)


def preflight(settings, tmp_path: Path, **kw):
    return check_destination(settings, tmp_path / "work" / "runs" / RUN_ID, RUN_ID, policy=fast(), **kw)


# --- S3 ----------------------------------------------------------------------------------------------


def test_s3_preflight_puts_reads_back_and_deletes_under_the_run_prefix(s3, tmp_path):
    endpoint, faults, admin = s3
    writer = iam_user(endpoint, "writer", ["s3:*"])
    with iam_enforced():
        assert preflight(s3_settings(endpoint, writer), tmp_path) == "s3://results/runs/smoke"
    calls = [(method, path.split("?")[0]) for method, path, status in faults.log if status < 300]
    probes = [(m, p) for m, p in calls if "/results/runs/smoke/.r1ft-preflight-" in p]
    assert [m for m, _ in probes] == ["PUT", "GET", "DELETE"]
    assert "Contents" not in admin.list_objects_v2(Bucket="results")  # nothing left behind


@pytest.mark.parametrize(
    ("who", "fix"),
    [
        ("unknown key", "AWS_ACCESS_KEY_ID"),
        ("wrong secret", "AWS_SECRET_ACCESS_KEY is not the secret of AWS_ACCESS_KEY_ID"),
        ("no permission", "s3:PutObject"),
        ("read only", "s3:PutObject"),
        ("no bucket", "the bucket does not exist"),
    ],
)
def test_s3_refusals_are_settings_errors_with_the_fix_and_no_retry(s3, tmp_path, who, fix):
    endpoint, faults, _ = s3
    good = iam_user(endpoint, "writer", ["s3:*"])
    creds = {
        "unknown key": Credentials("AKIAIOSFODNN7EXAMPLE", SECRET_SHOWN_NEVER),
        "wrong secret": Credentials(good.key_id, SECRET_SHOWN_NEVER),
        "no permission": iam_user(endpoint, "nobody", []),
        "read only": iam_user(endpoint, "reader", ["s3:ListBucket", "s3:GetObject"]),
        "no bucket": good,
    }[who]
    output = "s3://no-such-bucket/runs/smoke" if who == "no bucket" else "s3://results/runs/smoke"
    faults.log.clear()
    with iam_enforced(), pytest.raises(DestinationDenied) as err:
        preflight(s3_settings(endpoint, creds, output), tmp_path)
    assert fix in str(err.value)
    assert SECRET_SHOWN_NEVER not in str(err.value) and "AKIAIOSFODNN7EXAMPLE" not in str(err.value)
    assert len([1 for _, _, status in faults.log if status >= 400]) == 1  # refused once, not retried


def test_s3_transient_failures_are_retried_then_the_preflight_passes(s3, tmp_path):
    endpoint, faults, _ = s3
    faults.log.clear()
    faults.fail_requests = 2
    assert preflight(s3_settings(endpoint), tmp_path) == "s3://results/runs/smoke"
    assert [status for _, _, status in faults.log][:2] == [500, 500]


def test_s3_down_is_unreachable_after_bounded_tries(s3, tmp_path):
    endpoint, faults, _ = s3
    faults.log.clear()
    faults.down = True
    t0 = time.monotonic()
    with pytest.raises(DestinationUnreachable, match=r"gave up after \d+ s: at most 3 tries"):
        preflight(s3_settings(endpoint), tmp_path)
    assert time.monotonic() - t0 < 10
    assert len(faults.log) == 3 * 2  # 3 tries, each with botocore's one retry (sdk_attempts=1)


def test_a_destination_that_never_answers_is_given_up_at_the_deadline(tmp_path):
    """A server that accepts connections and never answers (a half-dead proxy): the deadline ends it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []

    def accept_and_say_nothing() -> None:
        with contextlib.suppress(OSError):  # the server socket is closed at the end of the test
            while True:
                held.append(server.accept())

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    settings = s3_settings(f"http://127.0.0.1:{server.getsockname()[1]}")
    t0 = time.monotonic()
    with pytest.raises(DestinationUnreachable, match="no answer within 2 s"):
        preflight(settings, tmp_path, deadline_s=2)
    assert time.monotonic() - t0 < 4
    server.close()


# --- the Hub (fake HfApi) -----------------------------------------------------------------------------


def hub_settings(output: str = "hf://me/r1ft-math"):
    env = {"R1FT_PRESET": "smoke", "R1FT_OUTPUT": output, "HF_TOKEN": "hf_" + "x" * 30}
    return load_settings(env, env_file=None)


def test_hub_preflight_checks_the_token_creates_the_repo_and_asks_for_write_access(tmp_path):
    api = FakeHfApi()
    assert preflight(hub_settings("hf://me/r1ft-math@dev"), tmp_path, hf_api=api) == "hf://me/r1ft-math@dev"
    assert api.names() == ["whoami", "create_repo", "create_branch", "auth_check"]
    assert api.calls[-1] == ("auth_check", {"write": True})
    assert api.repos["me/r1ft-math"]["private"] is True and not api.repos["me/r1ft-math"]["commits"]


@pytest.mark.parametrize(
    ("break_it", "fix"),
    [
        (lambda api: setattr(api, "token_valid", False), "HF_TOKEN is not a valid token"),
        (lambda api: setattr(api, "writable", False), "HF_TOKEN may not write to me/r1ft-math"),
        (lambda api: api.fail.setdefault("create_repo", []).append(http_error(403)), "may not write"),
    ],
    ids=["invalid-token", "read-only-token", "namespace-refused"],
)
def test_hub_refusals_are_settings_errors_with_the_fix(tmp_path, break_it, fix):
    api = FakeHfApi()
    break_it(api)
    with pytest.raises(DestinationDenied, match=fix) as err:
        preflight(hub_settings(), tmp_path, hf_api=api)
    assert "hf_xxxx" not in str(err.value)


def test_hub_transient_errors_are_retried_and_an_outage_is_unreachable(tmp_path):
    api = FakeHfApi()
    api.fail["whoami"] = [http_error(503), http_error(502)]
    assert preflight(hub_settings(), tmp_path, hf_api=api) == "hf://me/r1ft-math"
    down = FakeHfApi()
    down.fail["whoami"] = [http_error(503) for _ in range(5)]
    with pytest.raises(DestinationUnreachable, match="at most 3 tries"):
        preflight(hub_settings(), tmp_path, hf_api=down)
    assert down.names() == ["whoami"] * 3


# --- directories ----------------------------------------------------------------------------------------


def local_settings(output: str, work: Path):
    return load_settings({"R1FT_PRESET": "smoke", "R1FT_OUTPUT": output, "R1FT_WORK_DIR": str(work)},
                         env_file=None)  # fmt: skip


def test_a_directory_is_created_and_written(tmp_path):
    out = tmp_path / "deep" / "published"
    assert preflight(local_settings(str(out), tmp_path / "work"), tmp_path) == str(out)
    assert out.is_dir() and not list(out.iterdir())


@pytest.mark.parametrize(
    ("output", "fix"),
    [
        ("a-file", "is a file, not a directory"),
        ("a-file/sub", "is a file, not a directory"),
        ("work/runs/" + RUN_ID, "is inside the run directory"),
        ("work/runs/" + RUN_ID + "/published", "is inside the run directory"),
        ("work/runs/" + RUN_ID + "/../../../work/runs/" + RUN_ID, "is inside the run directory"),
    ],
)
def test_unusable_directories_are_settings_errors(tmp_path, monkeypatch, output, fix):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(DestinationDenied, match=fix):
        preflight(local_settings(output, tmp_path / "work"), tmp_path)


def test_a_work_dir_inside_a_published_folder_is_refused(tmp_path):
    """R1FT_WORK_DIR=<out>/logs/work: publishing to <out> would write where the run directory lives."""
    settings = local_settings(str(tmp_path), tmp_path / "logs" / "work")
    with pytest.raises(DestinationDenied, match="lies inside"):
        check_destination(settings, tmp_path / "logs" / "work" / "runs" / RUN_ID, RUN_ID, policy=fast())


def test_the_default_destination_in_the_work_dir_is_the_run_directory_published_in_place(
    tmp_path, monkeypatch
):
    """The image's default: R1FT_OUTPUT empty, working directory = work dir, so runs/<id> is the run dir."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    settings = local_settings("", tmp_path / "work")
    run_dir = tmp_path / "work" / "runs" / RUN_ID
    assert check_destination(settings, run_dir, RUN_ID, policy=fast()) == str(run_dir)


# --- the resume lookup ---------------------------------------------------------------------------------


def test_resume_lookup_that_cannot_look_stops_instead_of_starting_from_scratch(s3, tmp_path):
    endpoint, faults, _ = s3
    faults.down = True
    run_dir = tmp_path / "work" / "runs" / RUN_ID
    t0 = time.monotonic()
    with pytest.raises(JobError) as err:
        find_resume_point(s3_settings(endpoint), run_dir, RUN_ID)
    assert err.value.exit_code == 3 and "Not starting from scratch" in str(err.value)
    assert time.monotonic() - t0 < 75  # REACH_RETRY: 4 tries, none started after 45 s
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").glob("checkpoint-*"))


def test_resume_lookup_refused_exits_2(s3, tmp_path):
    endpoint, _, _ = s3
    nobody = iam_user(endpoint, "nobody", [])
    with iam_enforced(), pytest.raises(JobError) as err:
        find_resume_point(s3_settings(endpoint, nobody), tmp_path / "work" / "runs" / RUN_ID, RUN_ID)
    assert err.value.exit_code == 2 and "s3:ListBucket" in str(err.value)


def test_resume_lookup_retries_a_transient_failure_and_resumes(s3, tmp_path):
    from r1ft.checkpoints.markers import mark_complete

    endpoint, faults, _ = s3
    settings = s3_settings(endpoint)
    first = tmp_path / "first" / "runs" / RUN_ID / "checkpoints" / "checkpoint-4"
    first.mkdir(parents=True)
    (first / "adapter_model.safetensors").write_bytes(b"w" * 100)
    mark_complete(first, {"run_id": RUN_ID, "global_step": 4})
    push_checkpoint(settings, first, run_id=RUN_ID, dest=destination_for(settings, RUN_ID, retry=fast()))
    faults.fail_requests = 1
    point = find_resume_point(settings, tmp_path / "fresh" / "runs" / RUN_ID, RUN_ID)
    assert point.source == "destination" and point.step == 4


def test_reading_probe_of_a_missing_repo_or_directory_is_not_an_error(tmp_path):
    api = FakeHfApi()
    reach(destination_for(hub_settings(), hf_api=api, retry=fast()), write=False)
    reach(destination_for(local_settings(str(tmp_path / "nothing"), tmp_path)), write=False)


# --- the job stops before any download ----------------------------------------------------------------


def assert_stopped_before_download(result, code: int) -> None:
    assert result.rc == code, result.output[-3000:]
    assert "== destination" in result.output and "Nothing was downloaded or trained" in result.output
    assert "== base model" not in result.output and "== train" not in result.output
    assert "Traceback" not in result.output


def test_job_with_wrong_s3_credentials_exits_2_before_the_base_model(tmp_path):
    with s3_server() as (endpoint, _):
        env = job_env(tmp_path, **job_bucket(endpoint))
        env.update(AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE", AWS_SECRET_ACCESS_KEY=SECRET_SHOWN_NEVER)
        with iam_enforced():
            result = run_job(env, tmp_path, timeout=300)
    assert_stopped_before_download(result, 2)
    assert "AWS_ACCESS_KEY_ID" in result.output
    assert SECRET_SHOWN_NEVER not in result.output and "AKIAIOSFODNN7EXAMPLE" not in result.output


def test_job_with_an_unreachable_s3_endpoint_exits_3_before_the_base_model(tmp_path):
    env = job_env(tmp_path, **{"R1FT_OUTPUT": "s3://results/runs/smoke", "AWS_ACCESS_KEY_ID": "k",
                               "AWS_SECRET_ACCESS_KEY": "s", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}"})  # fmt: skip
    t0 = time.monotonic()
    result = run_job(env, tmp_path, timeout=300)
    assert_stopped_before_download(result, 3)
    assert "gave up after" in result.output and time.monotonic() - t0 < 120


def test_job_with_an_unreachable_hub_exits_3_before_the_base_model(tmp_path):
    env = job_env(tmp_path, R1FT_OUTPUT="hf://me/r1ft-math", HF_TOKEN="hf_" + "y" * 30, HF_HUB_OFFLINE="0",
                  HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")  # fmt: skip
    result = run_job(env, tmp_path, timeout=300)
    assert_stopped_before_download(result, 3)
    assert "hf_yyyy" not in result.output


@pytest.mark.parametrize("output", ["a-file", "work/runs/fixed-id"], ids=["a-file", "the-run-dir"])
def test_job_with_an_unusable_output_directory_exits_2_before_the_base_model(tmp_path, output):
    (tmp_path / "a-file").write_text("not a directory")
    result = run_job(job_env(tmp_path, R1FT_OUTPUT=output, R1FT_RUN_ID="fixed-id"), tmp_path, timeout=300)
    assert_stopped_before_download(result, 2)


def test_job_to_the_hub_in_offline_mode_exits_2_at_once(tmp_path):
    env = job_env(tmp_path, R1FT_OUTPUT="hf://me/r1ft-math", HF_TOKEN="hf_" + "y" * 30)  # HF_HUB_OFFLINE=1
    result = run_job(env, tmp_path, timeout=300)
    assert_stopped_before_download(result, 2)
    assert "HF_HUB_OFFLINE is set" in result.output and "retry" not in result.output
