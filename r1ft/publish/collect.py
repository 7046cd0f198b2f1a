"""Collecting a published run: download it (Hub, S3 or a directory) and verify it byte for byte against
its manifest. The first contact is bounded (`REACH_RETRY` under a deadline: a source that cannot be
reached fails in seconds, not minutes); the downloads after it get the full retries. A manifest whose
entries disagree with its own totals is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1ft.files import format_bytes
from r1ft.publish.connect import open_destination
from r1ft.publish.destination import PublishError, PublishResult, RemoteMissing, local_problem
from r1ft.publish.location import LocationError
from r1ft.publish.manifest import MANIFEST, read_manifest
from r1ft.publish.preflight import reach
from r1ft.publish.retry import DEFAULT_RETRY, REACH_RETRY, RetryPolicy
from r1ft.publish.run import failure_message
from r1ft.secrets import secret_values
from r1ft.settings import Settings


def collect(
    src: str,
    dest: Path,
    settings: Settings,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    first_contact: RetryPolicy = REACH_RETRY,
    hf_api: Any = None,
    s3: Any = None,
) -> PublishResult:
    """Download a published run (Hub, S3 or a directory) into `dest` and verify it byte for byte against its
    manifest. Files already in `dest` with the right sha256 are kept. Raises PublishError on failure
    (DestinationDenied when the credentials or permissions are refused)."""
    dest = Path(dest)
    _check_dest(dest)
    secrets = secret_values(settings)
    probe = open_destination(src, settings, retry=first_contact, hf_api=hf_api, s3=s3)
    reach(probe, write=False, secrets=secrets, policy=first_contact)
    source = open_destination(src, settings, retry=retry, hf_api=hf_api, s3=s3)
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
            if local_problem(target, entry) == "":
                continue
            for _ in range(2):  # one more download when the first arrives damaged
                source.download(entry.path, target)
                problem = local_problem(target, entry)
                if not problem:
                    break
            if problem:
                problems.append(f"{entry.path}: {problem}")
    except PublishError:
        raise
    except Exception as exc:
        after = f"What arrived is in {dest.resolve()}. Retry with: {command}"
        raise PublishError(failure_message("collecting from", source, exc, secrets, after)) from exc
    if problems:
        raise PublishError(f"collected files differ from {source.location}'s manifest: {'; '.join(problems)}")
    total = sum(e.size for e in entries)
    message = (
        f"collected {len(entries)} files ({format_bytes(total)}) from {source.location} into {dest}; verified"
    )
    return PublishResult(str(dest.resolve()), True, len(entries), total, message)


def _check_dest(dest: Path) -> None:
    """`dest` must be a directory or creatable as one: a file there (or above it) is a LocationError (exit 2)
    before the source is asked, since a retry cannot help."""
    for path in (dest, *dest.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == dest else f"is under {path}, which is a file"
                raise LocationError(f"{dest} {what}: collect into a directory (new, or an earlier collect's)")
            return
