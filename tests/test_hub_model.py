"""Downloading the base model: the pinned revision into the work dir, and clear errors when it fails."""

from __future__ import annotations

import pytest
from huggingface_hub import errors

from r1ft.model import base as hub_model
from r1ft.pipeline import JobError
from r1ft.settings_load import load_settings


def fake_response(status: int):
    import httpx2 as httpx

    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/x"))


def test_downloads_the_pinned_revision_into_the_work_dir(tmp_path, monkeypatch):
    seen = {}

    def snapshot_download(repo_id, **kw):
        seen.update(repo_id=repo_id, **kw)
        return str(tmp_path / "snap")

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    s = load_settings({"R1FT_WORK_DIR": str(tmp_path / "w"), "HF_TOKEN": "hf_x"}, env_file=None)
    assert hub_model.download_base_model(s) == tmp_path / "snap"
    assert seen["repo_id"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert seen["revision"] == "ad9f0ae0864d7fbcd1cd905e3c6c5b069cc8b562"
    assert seen["cache_dir"] == str(tmp_path / "w" / "hf_cache" / "hub")
    assert seen["token"] == "hf_x"


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (lambda: errors.GatedRepoError("gated", response=fake_response(403)), "HF_TOKEN"),
        (lambda: errors.RevisionNotFoundError("no rev", response=fake_response(404)), "R1FT_BASE_REVISION"),
        (lambda: errors.RepositoryNotFoundError("missing", response=fake_response(404)), "R1FT_BASE_MODEL"),
        (lambda: errors.LocalEntryNotFoundError("offline"), "local copy"),
        (lambda: OSError("Network is unreachable"), "local copy"),
    ],
)
def test_failures_say_what_to_do_and_exit_2(tmp_path, monkeypatch, exc, needle):
    def snapshot_download(repo_id, **kw):
        raise exc()

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    s = load_settings({"R1FT_WORK_DIR": str(tmp_path)}, env_file=None)
    with pytest.raises(JobError) as err:
        hub_model.download_base_model(s)
    assert err.value.exit_code == 2 and needle in str(err.value)
