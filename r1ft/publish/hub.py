"""hf://owner/name[@revision] on the Hugging Face Hub: large files pre-uploaded, then ONE commit per
publish (retried with backoff: the final commit POST is not retried by the library), then the revision's
tree checked against what was sent."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from r1ft.files import HASH_CHUNK
from r1ft.publish.destination import FileEntry, Mismatch, RemoteMissing
from r1ft.publish.retry import DEFAULT_RETRY, RetryPolicy, with_retry

log = logging.getLogger(__name__)

HUB_PREUPLOAD_MIN = 1024 * 1024  # files this large go through preupload_lfs_files before the commit
GIT_OID_MAX = 10 * 1024 * 1024  # small files are committed as plain git blobs: verify them by git oid


def git_blob_oid(path: Path) -> str:
    """The git blob id (sha1 of `blob <size>\\0<content>`) the Hub reports for a non-LFS file."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hub_transient(exc: BaseException) -> bool:
    """Whether a Hub error is worth retrying: 429, 408, 5xx, dropped connections and timeouts."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):  # HF_HUB_OFFLINE=1: no retry can help
        return False
    if isinstance(exc, Mismatch | LocalEntryNotFoundError):  # the latter: a download that lost the network
        return True
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", 0)
        return status >= 500 or status in (408, 429)
    return isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError)


TOKEN_PAGE = "https://huggingface.co/settings/tokens"


def hub_denial(exc: BaseException, repo_id: str) -> str:
    """What to fix when a Hub error refuses the token or its permissions, else ''."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it, or publish elsewhere"
    if isinstance(exc, LocalTokenNotFoundError):
        return f"HF_TOKEN is not set: set it to a token with write access ({TOKEN_PAGE})"
    if isinstance(exc, GatedRepoError):
        return f"{repo_id} is gated: accept its terms on https://huggingface.co/{repo_id} with this account"
    if isinstance(exc, RepositoryNotFoundError):
        return (
            f"{repo_id} does not exist, or HF_TOKEN's account cannot see it: check the repo id in R1FT_OUTPUT "
            "and that HF_TOKEN belongs to an account that may use it"
        )
    if not isinstance(exc, HfHubHTTPError):
        return ""
    status = getattr(exc.response, "status_code", 0)
    if status == 401:
        return f"HF_TOKEN is not a valid token (expired or revoked?): create one with write access at {TOKEN_PAGE}"
    if status == 403:
        owner = repo_id.split("/")[0]
        return (
            f"HF_TOKEN may not write to {repo_id}: use a token with write access to {owner!r} (a fine-grained "
            f"token needs write permission on this repo or namespace; {TOKEN_PAGE})"
        )
    return ""


class HubDestination:
    """hf://owner/name[@revision]: pre-uploads, then ONE commit per publish, then the revision checked."""

    atomic = True

    def __init__(
        self,
        repo_id: str,
        revision: str | None,
        api: Any,
        *,
        private: bool = True,
        retry: RetryPolicy = DEFAULT_RETRY,
        secrets: Iterable[str] = (),
    ):
        self.repo_id = repo_id
        self.revision = revision or None
        self.api = api
        self.private = private
        self.retry = retry
        self.secrets = list(secrets)
        self.location = f"hf://{repo_id}" + (f"@{self.revision}" if self.revision else "")
        self.staged: dict[str, FileEntry] = {}
        self._adds: dict[str, Any] = {}  # remote -> CommitOperationAdd, committed at `commit`
        self._deletes: list[Any] = []
        self._delete_after_commit: list[Path] = []
        self._git_oids: dict[str, str] = {}  # remote -> git blob id, for files small enough to be plain blobs
        self._repo_ready = False

    @property
    def url(self) -> str:
        base = f"https://huggingface.co/{self.repo_id}"
        return f"{base}/tree/{self.revision}" if self.revision else base

    def _retry(self, fn: Callable[[], Any], what: str) -> Any:
        return with_retry(fn, policy=self.retry, transient=hub_transient, what=what, secrets=self.secrets)

    def ensure_repo(self) -> None:
        """Create the repo (private unless R1FT_HF_PRIVATE=false) and the revision's branch if needed."""
        if self._repo_ready:
            return
        self._retry(
            lambda: self.api.create_repo(
                self.repo_id, private=self.private, exist_ok=True, repo_type="model"
            ),
            f"create_repo {self.repo_id}",
        )
        if self.revision:
            self._retry(
                lambda: self.api.create_branch(
                    self.repo_id, branch=self.revision, exist_ok=True, repo_type="model"
                ),
                f"create_branch {self.revision}",
            )
        self._repo_ready = True

    def probe(self, write: bool) -> None:
        """Reading: the Hub answers and accepts the token (a repo that does not exist, or that the token
        cannot see, reads as empty: its files are then missing). Writing: the token is valid, the repo (and
        branch) exists or is created now, and the Hub says the token may write it (no commit is made)."""
        from huggingface_hub.errors import RepositoryNotFoundError

        if not write:
            with contextlib.suppress(RepositoryNotFoundError):
                self._retry(
                    lambda: self.api.auth_check(self.repo_id, repo_type="model"),
                    f"access check of {self.location}",
                )
            return
        self._retry(lambda: self.api.whoami(), "token check (whoami)")
        self.ensure_repo()
        self._retry(
            lambda: self.api.auth_check(self.repo_id, repo_type="model", write=True),
            f"write check of {self.location}",
        )

    def denial(self, exc: BaseException) -> str:
        return hub_denial(exc, self.repo_id)

    def stage_file(self, local: Path, remote: str, delete_after: bool = False) -> FileEntry:
        from huggingface_hub import CommitOperationAdd

        self.ensure_repo()
        local = Path(local)
        entry = FileEntry.of(local, remote)
        if entry.size <= GIT_OID_MAX:
            self._git_oids[remote] = git_blob_oid(local)
        op = CommitOperationAdd(path_in_repo=remote, path_or_fileobj=str(local))
        op.upload_info.sha256 = bytes.fromhex(entry.sha256)  # already known: spare the library a second read
        if entry.size >= HUB_PREUPLOAD_MIN or delete_after:
            self._retry(
                lambda: self.api.preupload_lfs_files(
                    self.repo_id, additions=[op], revision=self.revision, repo_type="model"
                ),
                f"pre-upload of {remote}",
            )
        self._adds[remote] = op
        self.staged[remote] = entry
        if delete_after:
            if getattr(op, "_is_uploaded", False):
                local.unlink()  # the bytes are on the Hub's storage; the commit only references them
            else:
                self._delete_after_commit.append(local)  # a plain git file: the commit still reads it
        return entry

    def commit(self, message: str) -> None:
        from huggingface_hub import CommitOperationDelete

        if not self._adds and not self._deletes:
            return
        self.ensure_repo()
        deletes = [CommitOperationDelete(path_in_repo=p) for p in self._deletes]
        operations = [*deletes, *self._adds.values()]
        self._retry(
            lambda: self.api.create_commit(
                self.repo_id,
                operations=operations,
                commit_message=message,
                revision=self.revision,
                repo_type="model",
            ),
            f"commit to {self.location}",
        )
        self._adds.clear()
        self._deletes.clear()
        for path in self._delete_after_commit:
            path.unlink(missing_ok=True)
        self._delete_after_commit.clear()

    def delete(self, remotes: list[str]) -> None:
        self._deletes += [r for r in remotes if r not in self._adds]

    def _tree(self) -> dict[str, Any]:
        def listing() -> dict[str, Any]:
            items = self.api.list_repo_tree(
                self.repo_id, recursive=True, revision=self.revision, repo_type="model"
            )
            return {item.path: item for item in items if hasattr(item, "size")}  # RepoFile, not RepoFolder

        return self._retry(listing, f"listing of {self.location}")

    def list_files(self, prefix: str = "") -> list[str]:
        return sorted(p for p in self._tree() if p.startswith(prefix))

    def verify(self, entries: list[FileEntry]) -> list[str]:
        tree = self._tree()
        problems = []
        for entry in entries:
            item = tree.get(entry.path)
            if item is None:
                problems.append(f"{entry.path}: missing from the revision")
            elif item.size != entry.size:
                problems.append(f"{entry.path}: size {item.size} != {entry.size}")
            elif item.lfs is not None and item.lfs.sha256 != entry.sha256:
                problems.append(f"{entry.path}: LFS sha256 differs")
            elif (
                item.lfs is None
                and getattr(item, "xet_hash", None) is None  # xet-stored: size only unless LFS info is given
                and entry.path in self._git_oids
                and item.blob_id != self._git_oids[entry.path]
            ):
                problems.append(f"{entry.path}: git blob id differs")
        return problems

    def download(self, remote: str, local: Path) -> None:
        from huggingface_hub.errors import (
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        missing = (RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

        staging = local.parent / ".r1ft-download"
        staging.mkdir(parents=True, exist_ok=True)

        def fetch() -> str:
            try:
                return self.api.hf_hub_download(
                    self.repo_id, remote, revision=self.revision, repo_type="model", local_dir=str(staging)
                )
            except missing as exc:  # no such file, or no repo / branch yet (a first run)
                raise RemoteMissing(f"{self.location}/{remote} does not exist") from exc

        try:
            path = self._retry(fetch, f"download of {remote} from {self.location}")
            os.replace(path, local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
