"""Download the base model at its pinned revision into the work dir's Hub cache."""

from __future__ import annotations

import logging
from pathlib import Path

from r1ft.pipeline import EXIT_SETTINGS, JobError
from r1ft.settings import Settings

log = logging.getLogger("r1ft")

MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]


def hub_cache(settings: Settings) -> Path:
    return Path(settings.work_dir).resolve() / "hf_cache" / "hub"


def download_base_model(settings: Settings) -> Path:
    """snapshot_download of the pinned revision (huggingface_hub retries transfers itself)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    where = f"{settings.base_model}@{settings.base_revision}"
    try:
        path = snapshot_download(
            settings.base_model,
            revision=settings.base_revision,
            cache_dir=str(hub_cache(settings)),
            allow_patterns=MODEL_FILES,
            token=token,
        )
    except GatedRepoError as e:
        raise JobError(
            f"{where} is gated: accept its terms on the Hub and set HF_TOKEN", EXIT_SETTINGS
        ) from e
    except RevisionNotFoundError as e:
        raise JobError(f"{where}: no such revision; fix R1FT_BASE_REVISION", EXIT_SETTINGS) from e
    except RepositoryNotFoundError as e:
        raise JobError(
            f"{settings.base_model} not found (or private): fix R1FT_BASE_MODEL or set HF_TOKEN",
            EXIT_SETTINGS,
        ) from e
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise JobError(
            f"could not download {where} ({e.__class__.__name__}: {e}); check the network, or point "
            "R1FT_BASE_MODEL at a local copy",
            EXIT_SETTINGS,
        ) from e
    log.info("base model %s at %s", where, path)
    return Path(path)
