"""s3://bucket/prefix (AWS S3 or any S3-compatible store) through boto3's transfer manager: multipart
uploads, each object verified by its checksum (or ETag) and size after upload."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from r1ft.files import HASH_CHUNK
from r1ft.publish.destination import FileEntry, Mismatch, RemoteMissing
from r1ft.publish.retry import DEFAULT_RETRY, RetryPolicy, with_retry
from r1ft.settings import Settings

log = logging.getLogger(__name__)

S3_PART_SIZE = 64 * 1024 * 1024  # multipart threshold and part size (s3transfer adjusts it past 10,000 parts)


def s3_transient(exc: BaseException) -> bool:
    """Whether an S3 error is worth retrying (5xx, 429, throttling, dropped connections, a mismatch)."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, Mismatch | RetriesExceededError):
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


# Refusals of the credentials or permissions (never worth a retry), by the store's error code.
_KEY_FIX = (
    "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for R2, MinIO, Backblaze...)"
)
_ACCESS_FIX = (
    "grant these credentials s3:ListBucket on the bucket and s3:PutObject, s3:GetObject and s3:DeleteObject "
    "under the prefix, or use credentials that have them"
)
_DENIALS = {
    "NoSuchBucket": "the bucket does not exist: create it, or fix the bucket name in R1FT_OUTPUT",
    "InvalidAccessKeyId": f"the store does not know this access key id: {_KEY_FIX}",
    "SignatureDoesNotMatch": f"AWS_SECRET_ACCESS_KEY is not the secret of AWS_ACCESS_KEY_ID: {_KEY_FIX}",
    "InvalidToken": "AWS_SESSION_TOKEN is not valid: renew the temporary credentials (or unset it)",
    "ExpiredToken": "AWS_SESSION_TOKEN has expired: renew the temporary credentials",
    "TokenRefreshRequired": "AWS_SESSION_TOKEN has expired: renew the temporary credentials",
    "AuthorizationHeaderMalformed": "the bucket lives in another region: set AWS_DEFAULT_REGION to it",
    "PermanentRedirect": "the bucket lives in another region or endpoint: set AWS_DEFAULT_REGION (or "
    "AWS_ENDPOINT_URL) to it",
    "AccessDenied": _ACCESS_FIX,
    "AllAccessDisabled": _ACCESS_FIX,
    "AccountProblem": "the store refuses this account: check it with the provider",
}


def s3_denial(exc: BaseException) -> str:
    """What to fix when an S3 error refuses the credentials or permissions, else ''."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return f"no usable credentials: {_KEY_FIX}"
    if isinstance(exc, S3UploadFailedError):
        exc = exc.__cause__ or exc.__context__ or exc
    if not isinstance(exc, ClientError):
        return ""
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in _DENIALS:
        return _DENIALS[code]
    if status in (401, 403):  # a HEAD request carries no error code
        return f"the store refused the request (HTTP {status}): {_KEY_FIX}; and {_ACCESS_FIX}"
    return ""


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
                raise Mismatch(f"{self.location}/{remote}: {problem}")
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

    def probe(self, write: bool) -> None:
        """List the prefix; with `write`, also put a small object under it, read it back and delete it.
        Reading needs no s3:ListBucket (collect downloads named objects): an AccessDenied on the listing is
        an answer then, and the downloads say what is missing."""
        from botocore.exceptions import ClientError

        try:
            self._retry(
                lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.key(""), MaxKeys=1),
                f"listing of {self.location}",
            )
        except ClientError as exc:
            if write or exc.response.get("Error", {}).get("Code") != "AccessDenied":
                raise
        if not write:
            return
        key = self.key(f".r1ft-preflight-{uuid.uuid4().hex[:12]}")
        body = f"r1ft preflight {key}\n".encode()

        def round_trip() -> None:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
            got = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            if got != body:
                raise Mismatch(f"s3://{self.bucket}/{key} read back differs from what was written")
            self.client.delete_object(Bucket=self.bucket, Key=key)

        self._retry(round_trip, f"test write under {self.location}")

    def denial(self, exc: BaseException) -> str:
        return s3_denial(exc)

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
