"""The base model on local disk: the embedded tiny one (smoke preset), a local directory, or the pinned Hub
revision downloaded into the work dir's Hub cache."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from r1ft.downloads import DownloadError, HubItem, snapshot
from r1ft.exits import ExitCode, JobError
from r1ft.model.tiny import build_tiny_base
from r1ft.settings import Settings

log = logging.getLogger(__name__)

MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def hub_cache(settings: Settings) -> Path:
    return Path(settings.work_dir).resolve() / "hf_cache" / "hub"


def fetch_base_model(settings: Settings) -> Path:
    """The base model's local directory: the tiny one built in the work dir, a local path, or the Hub's."""
    if settings.is_tiny:
        return build_tiny_base(Path(settings.work_dir) / "models" / "tiny", seed=settings.seed)
    if Path(settings.base_model).exists():
        return Path(settings.base_model)
    return download_base_model(settings)


def hub_origin(settings: Settings) -> tuple[str, str] | None:
    """(Hub id, revision) when the base model comes from the Hub (what `fetch_base_model` downloads), None
    for the embedded tiny model or a local directory."""
    if settings.is_tiny or Path(settings.base_model).exists() or not HUB_ID.fullmatch(settings.base_model):
        return None
    return settings.base_model, settings.base_revision


def download_base_model(settings: Settings) -> Path:
    """snapshot_download of the pinned revision; a failure is a settings error (exit 2) saying what to do."""
    item = HubItem(
        settings.base_model, "model", settings.base_revision, "R1FT_BASE_MODEL", "R1FT_BASE_REVISION"
    )
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    try:
        path = snapshot(item, hub_cache(settings), token, MODEL_FILES)
    except DownloadError as e:
        raise JobError(str(e), ExitCode.SETTINGS) from e
    log.info("base model %s@%s at %s", settings.base_model, settings.base_revision, path)
    return path
