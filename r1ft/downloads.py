"""Downloads from the Hugging Face Hub (the base model, Hub data sources, MATH-500): one snapshot call and
one translation of its failures into messages that say what to do (`DownloadError`). Callers turn it into
their own error (a settings error before any GPU work)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DownloadError(Exception):
    """A download that failed for good; the message names the setting to fix or the way around it."""


@dataclass(frozen=True)
class HubItem:
    """What to fetch and which settings name it (for the messages)."""

    repo: str
    repo_type: str  # "model" or "dataset"
    revision: str
    setting: str  # e.g. R1FT_BASE_MODEL
    revision_setting: str  # e.g. R1FT_BASE_REVISION

    @property
    def what(self) -> str:
        return f"the Hub {self.repo_type} {self.repo}"

    @property
    def page(self) -> str:
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        return f"https://huggingface.co/{prefix}{self.repo}"


def snapshot(item: HubItem, cache_dir: Path, token: str | None, patterns: list[str] | None = None) -> Path:
    """`snapshot_download` of `item` at its revision into `cache_dir`; a DownloadError that says what to do
    when it fails (huggingface_hub retries the transfers themselves)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    local = f"or download it elsewhere and point {item.setting} at the local copy"
    try:
        path = snapshot_download(
            repo_id=item.repo,
            repo_type=item.repo_type,
            revision=item.revision,
            cache_dir=str(cache_dir),
            allow_patterns=patterns,
            token=token,
        )
    except GatedRepoError as e:
        raise DownloadError(
            f"{item.what} is gated (401/403): accept its terms on {item.page} and set HF_TOKEN to a token of "
            f"that account, {local}"
        ) from e
    except RevisionNotFoundError as e:
        raise DownloadError(
            f"{item.what} has no revision {item.revision!r}: set {item.revision_setting} to an existing "
            f"branch, tag or commit, {local}"
        ) from e
    except RepositoryNotFoundError as e:
        raise DownloadError(
            f"{item.what} was not found or is private (401/404): check {item.setting}={item.repo!r} "
            f"(if it is meant as a local path, {Path(item.repo).resolve()} does not exist); for a private "
            f"repo set HF_TOKEN to a token that can read it, {local}"
        ) from e
    except LocalEntryNotFoundError as e:
        raise DownloadError(
            f"cannot reach the Hub to download {item.what} (revision {item.revision!r}) and it is not in the "
            f"cache {cache_dir}: check the network (and HF_HUB_OFFLINE), {local}"
        ) from e
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        hint = "set HF_TOKEN to a token that can read it" if status in (401, 403) else "retry later"
        raise DownloadError(f"the Hub refused {item.what} (HTTP {status}): {hint}, {local}") from e
    except (OSError, ValueError) as e:  # connection errors, offline mode, a malformed id
        raise DownloadError(
            f"could not download {item.what} ({type(e).__name__}: {e}): check the network and "
            f"{item.setting}, {local}"
        ) from e
    return Path(path)
