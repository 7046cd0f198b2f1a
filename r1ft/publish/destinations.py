"""Publishing a run: to the Hugging Face Hub, S3 (or any S3-compatible store) or a local directory.

One `Destination` protocol, three implementations. A publish stages every file of the run directory's
published layout, writes `manifest.json` (every file with its size and sha256) LAST, commits (one Hub
commit; S3 and directories are written file by file) and verifies the destination against the manifest
before anything is reported as published. The merge step can stream shards through the same object
(`stage_file(..., delete_after=True)`) so a merged model never sits whole on disk.

Published layout (Hub repo root, S3 prefix or directory):
    adapter/ merged/ logs/ eval/ gguf/ report.json README.md manifest.json   (+ last-checkpoint/)

Transient errors (HTTP 429/5xx, dropped connections, a mismatch right after an upload) are retried with
exponential backoff that honours Retry-After; a final failure raises `PublishError`, whose message says
where the outputs are and the exact command to retry. Secrets never appear in messages or logs.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

if TYPE_CHECKING:
    from r1ft.settings import Settings

log = logging.getLogger(__name__)

LAYOUT_DIRS = ("adapter", "merged", "logs", "eval", "gguf")
LAYOUT_FILES = ("report.json", "README.md")
MANIFEST = "manifest.json"
CHECKPOINT_DIR = "last-checkpoint"
MANIFEST_FORMAT = "r1ft-manifest/1"
CHECKPOINT_FORMAT = "r1ft-checkpoint/1"
HASH_CHUNK = 8 * 1024 * 1024
S3_PART_SIZE = 64 * 1024 * 1024  # multipart threshold and part size (s3transfer adjusts it past 10,000 parts)
HUB_PREUPLOAD_MIN = 1024 * 1024  # files this large go through preupload_lfs_files before the commit
GIT_OID_MAX = 10 * 1024 * 1024  # small files are committed as plain git blobs: verify them by git oid


class PublishError(Exception):
    """Publishing (or collecting) failed for good; the message says where the outputs are and what to run."""


class RemoteMissing(Exception):
    """The file does not exist at the destination."""


class _Mismatch(Exception):
    """What the destination holds differs from what was sent (retried: a re-upload usually fixes it)."""


# --- retries -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How transient errors are retried. Tests pass tiny waits and a recording `sleep`."""

    attempts: int = 6
    initial_s: float = 2.0
    max_s: float = 120.0
    retry_after_max_s: float = 900.0  # the Hub's commit rate limit can ask for minutes
    sdk_attempts: int = 5  # botocore's own retries per S3 request (standard mode)
    sleep: Callable[[float], None] = time.sleep


DEFAULT_RETRY = RetryPolicy()


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's Retry-After (seconds or HTTP date) carried by an HTTP error, if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None and isinstance(response, dict):  # botocore ClientError
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    value = (headers.get("retry-after") or headers.get("Retry-After")) if headers else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = retry_after_seconds(exc) if exc is not None else None
        if after is not None:
            return min(after, policy.retry_after_max_s)
        return min(policy.initial_s * 2 ** (state.attempt_number - 1), policy.max_s)

    return wait


def with_retry(
    fn: Callable[[], Any],
    *,
    policy: RetryPolicy,
    transient: Callable[[BaseException], bool],
    what: str,
    secrets: Iterable[str] = (),
) -> Any:
    """Call `fn`, retrying transient errors with exponential backoff (Retry-After wins when given)."""
    secrets = list(secrets)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s failed (%s); retry %d/%d in %.1fs",
            what,
            redact(f"{type(exc).__name__}: {exc}", secrets),
            state.attempt_number,
            policy.attempts - 1,
            wait,
        )

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=_wait(policy),
        retry=retry_if_exception(transient),
        sleep=policy.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


# --- small helpers ------------------------------------------------------------------------------------


def secret_values(settings: Settings) -> list[str]:
    """Every secret's value (for redaction)."""
    from r1ft.settings import SECRET_FIELDS

    values = []
    for name in SECRET_FIELDS:
        secret = getattr(settings, name, None)
        if secret is not None and secret.get_secret_value():
            values.append(secret.get_secret_value())
    return values


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value (and anything shaped like a Hub token) replaced by ***."""
    for value in secrets:
        if value:
            text = text.replace(value, "***")
    return re.sub(r"\bhf_[A-Za-z0-9]{20,}\b", "hf_***", text)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_oid(path: Path) -> str:
    """The git blob id (sha1 of `blob <size>\\0<content>`) the Hub reports for a non-LFS file."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KB' (powers of 1024)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _safe_relpath(rel: str) -> str:
    """`rel` if it is a plain relative path inside the destination; a manifest must not escape it."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise PublishError(f"refusing the path {rel!r} from a manifest: not a plain relative path")
    return rel


@dataclass(frozen=True, order=True)
class FileEntry:
    """One published file: path relative to the destination root, size in bytes, hex sha256."""

    path: str
    size: int
    sha256: str

    @classmethod
    def of(cls, local: Path, remote: str) -> FileEntry:
        return cls(remote, local.stat().st_size, sha256_file(local))

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass
class PublishResult:
    """What a publish (or collect) did. `verified` is True only when the destination matched the manifest."""

    location: str
    verified: bool
    files: int
    bytes: int
    message: str


# --- the protocol -------------------------------------------------------------------------------------


class Destination(Protocol):
    """Where a run is published. Paths are relative to the destination root, '/'-separated."""

    location: str  # human-readable, secret-free (hf://owner/name@rev, s3://bucket/prefix, /abs/dir)
    staged: dict[str, FileEntry]  # every file staged through this object (what the manifest lists)

    def stage_file(self, local: Path, remote: str, delete_after: bool = False) -> FileEntry:
        """Send one file (Hub: pre-upload, visible at `commit`); with `delete_after`, remove the local copy
        as soon as it is safely at the destination."""
        ...

    def commit(self, message: str) -> None:
        """Make everything staged visible (Hub: one commit; S3 and directories: already visible)."""
        ...

    def delete(self, remotes: list[str]) -> None:
        """Remove files (Hub: in the next commit; S3 and directories: now)."""
        ...

    def list_files(self, prefix: str = "") -> list[str]:
        """Paths of the files under `prefix` that are visible at the destination."""
        ...

    def verify(self, entries: list[FileEntry]) -> list[str]:
        """One problem line per entry that is missing or differs (size, checksum where available)."""
        ...

    def download(self, remote: str, local: Path) -> None:
        """Fetch one file to `local` (atomically); `RemoteMissing` when it does not exist."""
        ...

    @property
    def atomic(self) -> bool:
        """Whether `commit` makes all staged files and deletions visible at once."""
        ...


# --- local directory ----------------------------------------------------------------------------------


class LocalDestination:
    """A directory (local disk, a mounted volume): copy (or move), then verify by sha256."""

    atomic = False

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        self.location = str(self.root)
        self.staged: dict[str, FileEntry] = {}

    def stage_file(self, local: Path, remote: str, delete_after: bool = False) -> FileEntry:
        local = Path(local)
        entry = FileEntry.of(local, remote)
        target = self.root / remote
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and os.path.samefile(local, target):
            self.staged[remote] = entry  # publishing a directory onto itself: nothing to copy
            return entry
        partial = target.with_name(target.name + ".partial")
        moved = False
        if delete_after:
            try:
                os.replace(local, partial)  # same filesystem: a rename, nothing copied
                moved = True
            except OSError:
                pass
        if not moved:
            shutil.copyfile(local, partial)
        os.replace(partial, target)
        problem = _local_problem(target, entry)
        if problem:
            raise PublishError(f"{target}: {problem} after copying; the disk may be failing")
        if delete_after and not moved:
            local.unlink()
        self.staged[remote] = entry
        return entry

    def commit(self, message: str) -> None:
        log.info("%s: %s", self.location, message)

    def delete(self, remotes: list[str]) -> None:
        for remote in remotes:
            (self.root / remote).unlink(missing_ok=True)

    def list_files(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def verify(self, entries: list[FileEntry]) -> list[str]:
        problems = []
        for entry in entries:
            problem = _local_problem(self.root / entry.path, entry)
            if problem:
                problems.append(f"{entry.path}: {problem}")
        return problems

    def download(self, remote: str, local: Path) -> None:
        source = self.root / remote
        if not source.is_file():
            raise RemoteMissing(f"{source} does not exist")
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".partial")
        shutil.copyfile(source, partial)
        os.replace(partial, local)


def _local_problem(path: Path, entry: FileEntry) -> str:
    """'' when `path` holds exactly `entry`, else what is wrong."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry.size:
        return f"size {size} != {entry.size}"
    if sha256_file(path) != entry.sha256:
        return "sha256 differs"
    return ""


# --- S3 and S3-compatible stores ----------------------------------------------------------------------


def s3_transient(exc: BaseException) -> bool:
    """Whether an S3 error is worth retrying (5xx, 429, throttling, dropped connections, a mismatch)."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, _Mismatch | RetriesExceededError):
        return True
    if isinstance(exc, S3UploadFailedError):
        exc = exc.__cause__ or exc.__context__ or exc
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status in (408, 429) or code in {"SlowDown", "RequestTimeout", "Throttling"}
    return isinstance(exc, ConnectionError | HTTPClientError | TimeoutError)


def _s3_missing(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey")


def _checksum_refused(exc: BaseException) -> bool:
    """Whether an S3-compatible store rejected the request for its flexible checksum headers."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    if isinstance(exc, S3UploadFailedError):
        exc = exc.__cause__ or exc.__context__ or exc
    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    error = exc.response.get("Error", {})
    text = f"{error.get('Code', '')} {error.get('Message', '')}".lower()
    return status in (400, 501) and ("checksum" in text or error.get("Code") == "NotImplemented")


def s3_part_digests(path: Path, part_size: int) -> tuple[str, str]:
    """(composite sha256 as S3 reports it for a multipart object, multipart ETag) for `part_size` parts."""
    sha_parts, md5_parts = [], []
    with open(path, "rb") as f:
        while chunk := f.read(part_size):
            sha_parts.append(hashlib.sha256(chunk).digest())
            md5_parts.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    composite = base64.b64encode(hashlib.sha256(b"".join(sha_parts)).digest()).decode()
    etag = hashlib.md5(b"".join(md5_parts), usedforsecurity=False).hexdigest()
    return f"{composite}-{len(sha_parts)}", f"{etag}-{len(md5_parts)}"


class S3Destination:
    """s3://bucket/prefix through boto3's transfer manager (multipart, retries), each object verified."""

    atomic = False

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: Any,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        secrets: Iterable[str] = (),
        part_size: int = S3_PART_SIZE,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.retry = retry
        self.secrets = list(secrets)
        self.part_size = part_size
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.staged: dict[str, FileEntry] = {}
        self.checksums = True  # ask the store for SHA256 checksums (some S3-compatible stores refuse them)
        self._fingerprints: dict[str, str] = {}  # remote -> checksum/ETag seen when it was verified

    def key(self, remote: str) -> str:
        return f"{self.prefix}/{remote}" if self.prefix else remote

    def _retry(self, fn: Callable[[], Any], what: str) -> Any:
        return with_retry(fn, policy=self.retry, transient=s3_transient, what=what, secrets=self.secrets)

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.part_size,
            multipart_chunksize=self.part_size,
            max_concurrency=8,
            preferred_transfer_client="classic",
        )

    def stage_file(self, local: Path, remote: str, delete_after: bool = False) -> FileEntry:
        local = Path(local)
        entry = FileEntry.of(local, remote)
        key = self.key(remote)

        def upload_and_check() -> None:
            self._upload(local, key)
            problem, fingerprint = self._check(remote, entry, local)
            if problem:
                raise _Mismatch(f"{self.location}/{remote}: {problem}")
            self._fingerprints[remote] = fingerprint

        self._retry(upload_and_check, f"upload of {remote} to {self.location}")
        self.staged[remote] = entry
        if delete_after:
            local.unlink()
        return entry

    def _upload(self, local: Path, key: str) -> None:
        """Upload with a SHA256 checksum; once a store refuses checksums, without (then ETag and size)."""
        extra = {"ChecksumAlgorithm": "SHA256"} if self.checksums else {}
        try:
            self.client.upload_file(
                str(local), self.bucket, key, ExtraArgs=extra, Config=self._transfer_config()
            )
        except Exception as exc:
            if not (self.checksums and _checksum_refused(exc)):
                raise
            log.warning(
                "%s refuses SHA256 checksums: uploading without them (verified by ETag and size)",
                self.location,
            )
            self.checksums = False
            self.client.upload_file(str(local), self.bucket, key, Config=self._transfer_config())

    def _check(self, remote: str, entry: FileEntry, local: Path | None) -> tuple[str, str]:
        """(problem or '', fingerprint) of the stored object against `entry`.

        Single-part objects carry the file's own sha256. Multipart ones carry a sha256 of the parts'
        sha256s (and an ETag of the parts' md5s): with `local` they are recomputed from the file; without
        it they must equal what was seen when the upload was verified (else only the size is checked).
        """
        head = self.client.head_object(Bucket=self.bucket, Key=self.key(remote), ChecksumMode="ENABLED")
        if head["ContentLength"] != entry.size:
            return f"size {head['ContentLength']} != {entry.size}", ""
        checksum = head.get("ChecksumSHA256") or ""
        etag = head.get("ETag", "").strip('"')
        fingerprint = checksum or etag
        multipart = "-" in etag or "-" in checksum or head.get("ChecksumType") == "COMPOSITE"
        if checksum and not multipart:
            ok = checksum == base64.b64encode(bytes.fromhex(entry.sha256)).decode()
            return ("" if ok else "sha256 differs"), fingerprint
        if local is None:
            recorded = self._fingerprints.get(remote)
            ok = recorded is None or recorded == fingerprint
            return ("" if ok else "changed since its upload was verified"), fingerprint
        if multipart:
            from s3transfer.utils import ChunksizeAdjuster

            part = ChunksizeAdjuster().adjust_chunksize(self.part_size, entry.size)
            composite, multi_etag = s3_part_digests(local, part)
            if checksum:
                ok = checksum.split("-")[0] == composite.split("-")[0]
                return ("" if ok else "composite sha256 differs"), fingerprint
            ok = etag == multi_etag or not re.fullmatch(r"[0-9a-f]{32}-\d+", etag)
            return ("" if ok else "multipart ETag differs"), fingerprint
        if re.fullmatch(r"[0-9a-f]{32}", etag) and head.get("ServerSideEncryption") != "aws:kms":
            md5 = hashlib.md5(usedforsecurity=False)
            with open(local, "rb") as f:
                while chunk := f.read(HASH_CHUNK):
                    md5.update(chunk)
            return ("" if md5.hexdigest() == etag else "ETag (md5) differs"), fingerprint
        return "", fingerprint  # the store gives no checksum for this object: size only

    def commit(self, message: str) -> None:
        log.info("%s: %s", self.location, message)

    def delete(self, remotes: list[str]) -> None:
        for remote in remotes:
            self._retry(
                lambda r=remote: self.client.delete_object(Bucket=self.bucket, Key=self.key(r)),
                f"delete of {remote} at {self.location}",
            )
            self._fingerprints.pop(remote, None)

    def list_files(self, prefix: str = "") -> list[str]:
        def listing() -> list[str]:
            root = f"{self.prefix}/" if self.prefix else ""
            found = []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root + prefix
            ):
                found += [obj["Key"][len(root) :] for obj in page.get("Contents", [])]
            return sorted(found)

        return self._retry(listing, f"listing of {self.location}")

    def verify(self, entries: list[FileEntry]) -> list[str]:
        problems = []
        for entry in entries:
            try:
                problem, _ = self._retry(
                    lambda e=entry: self._check(e.path, e, None), f"check of {entry.path}"
                )
            except Exception as exc:
                if not _s3_missing(exc):
                    raise
                problem = "missing"
            if problem:
                problems.append(f"{entry.path}: {problem}")
        return problems

    def download(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".partial")

        def fetch() -> None:
            try:
                self.client.download_file(
                    self.bucket, self.key(remote), str(partial), Config=self._transfer_config()
                )
            except Exception as exc:
                if _s3_missing(exc):
                    raise RemoteMissing(f"{self.location}/{remote} does not exist") from exc
                raise

        self._retry(fetch, f"download of {remote} from {self.location}")
        os.replace(partial, local)


def s3_client(settings: Settings, retry: RetryPolicy = DEFAULT_RETRY) -> Any:
    """A boto3 S3 client from the settings' credentials and endpoint (not from the process environment)."""
    import boto3
    from botocore.config import Config

    secret = settings.aws_secret_access_key
    token = settings.aws_session_token
    session = boto3.session.Session(
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        aws_session_token=token.get_secret_value() if token else None,
        region_name=settings.aws_region or "us-east-1",
    )
    config = Config(
        retries={"mode": "standard", "max_attempts": retry.sdk_attempts},
        # No default CRC32 on every request (stores that predate flexible checksums reject it); uploads
        # still ask for SHA256 explicitly, and drop it only where the store refuses it.
        request_checksum_calculation="when_required",
        connect_timeout=20,
        read_timeout=120,
    )
    return session.client("s3", endpoint_url=settings.aws_endpoint_url or None, config=config)


# --- the Hugging Face Hub -----------------------------------------------------------------------------


def hub_transient(exc: BaseException) -> bool:
    """Whether a Hub error is worth retrying: 429, 408, 5xx, dropped connections and timeouts."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(exc, _Mismatch | LocalEntryNotFoundError):  # the latter: a download that lost the network
        return True
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", 0)
        return status >= 500 or status in (408, 429)
    return isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError)


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


# --- choosing a destination ---------------------------------------------------------------------------


def parse_location(uri: str) -> tuple[str, str, str]:
    """('hf', 'owner/name', revision) | ('s3', bucket, prefix) | ('local', path, '')."""
    uri = uri.strip()
    if uri.startswith("hf://"):
        repo, _, revision = uri[5:].partition("@")
        repo = repo.strip("/")
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
            raise ValueError(f"{uri!r} is not hf://owner/name[@revision]")
        return "hf", repo, revision
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} has no bucket; use s3://bucket/prefix")
        return "s3", bucket, prefix.strip("/")
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        host = "" if parsed.netloc in ("", "localhost") else parsed.netloc
        return "local", unquote(host + parsed.path), ""
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri):
        raise ValueError(f"unknown scheme in {uri!r}; use hf://, s3://, file:// or a path")
    if not uri:
        raise ValueError("empty location; use hf://owner/name, s3://bucket/prefix or a path")
    return "local", uri, ""


def open_location(
    uri: str, settings: Settings, *, retry: RetryPolicy = DEFAULT_RETRY, hf_api: Any = None, s3: Any = None
) -> Destination:
    """The destination for `uri` (see `parse_location`), with the settings' credentials."""
    kind, a, b = parse_location(uri)
    secrets = secret_values(settings)
    if kind == "hf":
        if hf_api is None:
            from huggingface_hub import HfApi

            token = settings.hf_token.get_secret_value() if settings.hf_token else None
            hf_api = HfApi(token=token)
        return HubDestination(a, b or None, hf_api, private=settings.hf_private, retry=retry, secrets=secrets)
    if kind == "s3":
        client = s3 if s3 is not None else s3_client(settings, retry)
        return S3Destination(a, b, client, retry=retry, secrets=secrets)
    return LocalDestination(Path(a))


def destination_for(
    settings: Settings,
    run_id: str = "",
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    hf_api: Any = None,
    s3: Any = None,
) -> Destination:
    """The destination of `settings.output`; empty output: the directory runs/<run_id> under the cwd."""
    output = settings.output.strip()
    if not output:
        if not run_id:
            raise ValueError("R1FT_OUTPUT is empty, so the destination is runs/<run id>: pass the run id")
        output = str(Path("runs") / run_id)
    return open_location(output, settings, retry=retry, hf_api=hf_api, s3=s3)


# --- publishing a run ---------------------------------------------------------------------------------


def run_files(run_dir: Path) -> list[str]:
    """The run directory's files that are published (the layout's directories and files), sorted."""
    rels = []
    for name in LAYOUT_DIRS:
        d = run_dir / name
        if d.is_dir():
            rels += [p.relative_to(run_dir).as_posix() for p in d.rglob("*") if p.is_file()]
    rels += [name for name in LAYOUT_FILES if (run_dir / name).is_file()]
    return sorted(r for r in rels if not r.endswith(".partial"))


def manifest_data(
    entries: Iterable[FileEntry], *, fmt: str = MANIFEST_FORMAT, **extra: Any
) -> dict[str, Any]:
    """The manifest: every file with size and sha256, plus totals and who wrote it."""
    files = sorted(entries)
    return {
        "format": fmt,
        **extra,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": [e.as_json() for e in files],
        "total_files": len(files),
        "total_bytes": sum(e.size for e in files),
    }


def read_manifest(path: Path) -> list[FileEntry]:
    """The entries of a manifest file (paths checked to stay inside the destination)."""
    try:
        data = json.loads(path.read_text())
        return [FileEntry(_safe_relpath(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise PublishError(f"{path} is not a valid r1ft manifest ({e})") from e


def _failure(action: str, dest: Destination, exc: BaseException, secrets: list[str], after: str) -> str:
    cause = redact(f"{type(exc).__name__}: {exc}", secrets)
    return f"{action} {dest.location} failed: {cause}. {after}"


def publish_run(
    settings: Settings,
    run_dir: Path,
    run_id: str,
    *,
    dest: Destination | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> PublishResult:
    """Publish the run directory's layout, write manifest.json last, commit, verify.

    `dest` is the destination the merge step already streamed shards through (their entries are in
    `dest.staged` and go into the manifest); by default the one `settings.output` names.
    Raises PublishError (every output still in `run_dir`) when the transfer or the verification fails.
    """
    run_dir = Path(run_dir)
    if not run_files(run_dir):
        raise PublishError(
            f"{run_dir} holds no run outputs ({', '.join(LAYOUT_DIRS + LAYOUT_FILES)}): nothing to publish; "
            "check the --run-dir path"
        )
    secrets = secret_values(settings)
    dest = dest if dest is not None else destination_for(settings, run_id, retry=retry)
    keep = f"Every output is kept in {run_dir.resolve()}."
    streamed = [p for p in dest.staged if p.startswith("merged/") and not (run_dir / p).exists()]
    if streamed:
        keep += f" ({len(streamed)} streamed merged shard(s) were already sent and removed locally.)"
    command = f"r1ft publish --run-dir {run_dir}"
    try:
        if not dest.atomic:
            dest.delete([MANIFEST])  # an older publish's manifest must not vouch for files being replaced
        for rel in run_files(run_dir):
            dest.stage_file(run_dir / rel, rel)
        entries = [
            e for p, e in dest.staged.items() if p != MANIFEST and not p.startswith(f"{CHECKPOINT_DIR}/")
        ]
        manifest_path = run_dir / MANIFEST
        data = manifest_data(
            entries, run_id=run_id, base_model=settings.base_model, base_revision=settings.base_revision
        )
        manifest_path.write_text(json.dumps(data, indent=2) + "\n")
        manifest_entry = dest.stage_file(manifest_path, MANIFEST)  # last: its presence means complete
        total = sum(e.size for e in entries)
        dest.commit(f"r1ft: publish run {run_id} ({len(entries)} files, {human_bytes(total)})")
        problems = dest.verify([*entries, manifest_entry])
    except Exception as exc:
        after = f"{keep} Retry with: {command}"
        raise PublishError(_failure("publishing to", dest, exc, secrets, after)) from exc
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise PublishError(
            f"publishing to {dest.location} could not be verified: {shown}. {keep} Retry with: {command}"
        )
    message = (
        f"published {len(entries) + 1} files ({human_bytes(total)}) to {dest.location}; "
        f"verified against {MANIFEST}"
    )
    log.info("%s", message)
    return PublishResult(dest.location, True, len(entries) + 1, total + manifest_entry.size, message)


# --- the resumable checkpoint -------------------------------------------------------------------------


def push_checkpoint(
    settings: Settings,
    ckpt_dir: Path,
    *,
    run_id: str | None = None,
    dest: Destination | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> PublishResult:
    """Upload a Trainer checkpoint directory as last-checkpoint/ (replacing the previous one), its own
    manifest written last so a partial upload is detectable. `run_id` defaults to the run directory the
    checkpoint sits in ({work_dir}/runs/{run_id}/checkpoints/checkpoint-N)."""
    ckpt_dir = Path(ckpt_dir)
    run_id = run_id or ckpt_dir.resolve().parents[1].name
    secrets = secret_values(settings)
    dest = dest if dest is not None else destination_for(settings, run_id, retry=retry)
    manifest_remote = f"{CHECKPOINT_DIR}/{MANIFEST}"
    manifest_path = ckpt_dir.parent / f".{ckpt_dir.name}.{MANIFEST}"
    try:
        if not dest.atomic:
            dest.delete([manifest_remote])  # from here until the end, the old one reads as incomplete
        rels = sorted(p.relative_to(ckpt_dir).as_posix() for p in ckpt_dir.rglob("*") if p.is_file())
        entries = [dest.stage_file(ckpt_dir / rel, f"{CHECKPOINT_DIR}/{rel}") for rel in rels]
        wanted = {e.path for e in entries} | {manifest_remote}
        dest.delete([p for p in dest.list_files(f"{CHECKPOINT_DIR}/") if p not in wanted])
        relative = [FileEntry(e.path[len(CHECKPOINT_DIR) + 1 :], e.size, e.sha256) for e in entries]
        data = manifest_data(relative, fmt=CHECKPOINT_FORMAT, run_id=run_id, checkpoint=ckpt_dir.name)
        manifest_path.write_text(json.dumps(data, indent=2) + "\n")
        manifest_entry = dest.stage_file(manifest_path, manifest_remote)
        dest.commit(f"r1ft: {CHECKPOINT_DIR} = {ckpt_dir.name} of run {run_id}")
        problems = dest.verify([*entries, manifest_entry])
    except Exception as exc:
        after = f"The checkpoint is kept in {ckpt_dir.resolve()}; the next save pushes again."
        raise PublishError(_failure("pushing a checkpoint to", dest, exc, secrets, after)) from exc
    finally:
        manifest_path.unlink(missing_ok=True)
        for remote in [p for p in dest.staged if p.startswith(f"{CHECKPOINT_DIR}/")]:
            dest.staged.pop(remote)  # not part of the run's manifest
    if problems:
        raise PublishError(
            f"{CHECKPOINT_DIR}/ at {dest.location} could not be verified: {'; '.join(problems[:10])}"
        )
    total = sum(e.size for e in entries)
    where = f"{dest.location}/{CHECKPOINT_DIR}"
    message = f"pushed {ckpt_dir.name} ({len(entries)} files, {human_bytes(total)}) to {where}"
    log.info("%s", message)
    return PublishResult(where, True, len(entries), total, message)


def fetch_last_checkpoint(
    settings: Settings,
    dest_dir: Path,
    *,
    run_id: str | None = None,
    source: Destination | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> Path | None:
    """Download last-checkpoint/ from the destination into `dest_dir` and verify it against its manifest.

    None when there is none, or when it is incomplete or corrupt (logged). Raises PublishError when the
    destination cannot be reached after retries.
    """
    dest_dir = Path(dest_dir)
    src = source if source is not None else destination_for(settings, run_id or settings.run_id, retry=retry)
    partial = dest_dir.with_name(dest_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        problem = _download_checkpoint(src, partial)
    except PublishError:
        raise
    except Exception as exc:
        cause = redact(f"{type(exc).__name__}: {exc}", secret_values(settings))
        raise PublishError(f"fetching {CHECKPOINT_DIR}/ from {src.location} failed: {cause}") from exc
    if problem:
        log.warning("%s/ at %s: %s; not resuming from it", CHECKPOINT_DIR, src.location, problem)
        shutil.rmtree(partial, ignore_errors=True)
        return None
    (partial / MANIFEST).unlink()
    if dest_dir.exists():
        shutil.rmtree(dest_dir)
    os.replace(partial, dest_dir)
    log.info("fetched %s/ from %s into %s", CHECKPOINT_DIR, src.location, dest_dir)
    return dest_dir


def _download_checkpoint(src: Destination, into: Path) -> str:
    """Download last-checkpoint/ into `into`; '' when complete and verified, else why it is unusable."""
    try:
        src.download(f"{CHECKPOINT_DIR}/{MANIFEST}", into / MANIFEST)
    except RemoteMissing:
        return "absent"
    for entry in read_manifest(into / MANIFEST):
        try:
            src.download(f"{CHECKPOINT_DIR}/{entry.path}", into / entry.path)
        except RemoteMissing:
            return f"incomplete ({entry.path} is missing)"
        problem = _local_problem(into / entry.path, entry)
        if problem:
            return f"{entry.path}: {problem}"
    return ""


# --- collecting a published run -----------------------------------------------------------------------


def collect(
    src: str,
    dest: Path,
    settings: Settings,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    hf_api: Any = None,
    s3: Any = None,
) -> PublishResult:
    """Download a published run (Hub, S3 or a directory) into `dest` and verify it byte for byte against its
    manifest. Files already in `dest` with the right sha256 are kept. Raises PublishError on failure."""
    dest = Path(dest)
    secrets = secret_values(settings)
    source = open_location(src, settings, retry=retry, hf_api=hf_api, s3=s3)
    command = f"r1ft collect {src} {dest}"
    problems: list[str] = []
    try:
        try:
            source.download(MANIFEST, dest / MANIFEST)
        except RemoteMissing as exc:
            raise PublishError(
                f"{source.location} has no {MANIFEST}: nothing was published there, or its publish did not "
                f"finish. Re-publish the run (r1ft publish --run-dir DIR) and retry: {command}"
            ) from exc
        entries = read_manifest(dest / MANIFEST)
        for entry in entries:
            target = dest / entry.path
            if _local_problem(target, entry) == "":
                continue
            for _ in range(2):  # one more download when the first arrives damaged
                source.download(entry.path, target)
                problem = _local_problem(target, entry)
                if not problem:
                    break
            if problem:
                problems.append(f"{entry.path}: {problem}")
    except PublishError:
        raise
    except Exception as exc:
        after = f"What arrived is in {dest.resolve()}. Retry with: {command}"
        raise PublishError(_failure("collecting from", source, exc, secrets, after)) from exc
    if problems:
        raise PublishError(f"collected files differ from {source.location}'s manifest: {'; '.join(problems)}")
    total = sum(e.size for e in entries)
    message = (
        f"collected {len(entries)} files ({human_bytes(total)}) from {source.location} into {dest}; verified"
    )
    return PublishResult(str(dest.resolve()), True, len(entries), total, message)
