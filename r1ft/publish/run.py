"""Publishing a run: stage every file of the run directory's layout, then report.json and README.md (which
carry this publish's own state, written by the caller's `record` just before they are sent), write
manifest.json LAST, commit (one Hub commit; S3 and directories are written file by file) and verify the
destination against the manifest before anything is reported as published. When the verification fails the
manifest is withdrawn, so nothing at the destination vouches for what it holds. A failure raises
`PublishError`, whose message says where the outputs are and the exact command to retry. The merge step can
stream shards through the same destination (`stage_file(..., delete_after=True)`) so a merged model never
sits whole on disk."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from r1ft.files import format_bytes
from r1ft.publish.connect import destination_for
from r1ft.publish.destination import Destination, PublishError, PublishResult
from r1ft.publish.manifest import (
    CHECKPOINT_DIR,
    LAYOUT_DIRS,
    LAYOUT_FILES,
    MANIFEST,
    manifest_data,
    run_files,
)
from r1ft.publish.retry import DEFAULT_RETRY, RetryPolicy
from r1ft.secrets import redact, secret_values
from r1ft.settings import Settings

log = logging.getLogger(__name__)


def failure_message(
    action: str, dest: Destination, exc: BaseException, secrets: list[str], after: str
) -> str:
    cause = redact(f"{type(exc).__name__}: {exc}", secrets)
    return f"{action} {dest.location} failed: {cause}. {after}"


def publish_run(
    settings: Settings,
    run_dir: Path,
    run_id: str,
    *,
    dest: Destination | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    record: Callable[[PublishResult], None] | None = None,
    stop_check: Callable[[], None] | None = None,
) -> PublishResult:
    """Publish the run directory's layout, write manifest.json last, commit, verify.

    `dest` is the destination the merge step already streamed shards through (their entries are in
    `dest.staged` and go into the manifest); by default the one `settings.output` names. `record` is called
    once every other file is staged, with the result this publish achieves if it verifies: it writes
    report.json and README.md (sent next) so that the published copies tell the truth about the publish.
    Raises PublishError (every output still in `run_dir`) when the transfer or the verification fails.
    `stop_check` is called before each file: the stop it raises (`r1ft.machine.signals.Stopped`) leaves the
    destination without a manifest, i.e. visibly incomplete, until a later publish completes it.
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
            if stop_check is not None:
                stop_check()
            if rel not in LAYOUT_FILES:
                dest.stage_file(run_dir / rel, rel)
        if record is not None:
            _record(record, dest, run_dir)
        for rel in LAYOUT_FILES:
            if (run_dir / rel).is_file():
                dest.stage_file(run_dir / rel, rel)
        entries = _run_entries(dest)
        manifest_path = run_dir / MANIFEST
        data = manifest_data(
            entries, run_id=run_id, base_model=settings.base_model, base_revision=settings.base_revision
        )
        manifest_path.write_text(json.dumps(data, indent=2) + "\n")
        manifest_entry = dest.stage_file(manifest_path, MANIFEST)  # last: its presence means complete
        total = sum(e.size for e in entries)
        dest.commit(f"r1ft: publish run {run_id} ({len(entries)} files, {format_bytes(total)})")
        problems = dest.verify([*entries, manifest_entry])
    except Exception as exc:
        after = f"{keep} Retry with: {command}"
        raise PublishError(failure_message("publishing to", dest, exc, secrets, after)) from exc
    if problems:
        _withdraw_manifest(dest)
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise PublishError(
            f"publishing to {dest.location} could not be verified: {shown}. {keep} Retry with: {command}"
        )
    message = published_message(dest.location, len(entries) + 1, total)
    log.info("%s", message)
    return PublishResult(dest.location, True, len(entries) + 1, total + manifest_entry.size, message)


def published_message(location: str, files: int, total: int) -> str:
    return f"published {files} files ({format_bytes(total)}) to {location}; verified against {MANIFEST}"


def _run_entries(dest: Destination) -> list:
    """The run's files staged through `dest` (streamed shards included; checkpoint files are not the run's)."""
    return [e for p, e in dest.staged.items() if p != MANIFEST and not p.startswith(f"{CHECKPOINT_DIR}/")]


def _record(record: Callable[[PublishResult], None], dest: Destination, run_dir: Path) -> None:
    """Let the caller write report.json and README.md with the result this publish is about to achieve. The
    totals count both files, whose sizes depend on the totals they state: written until they agree."""
    payload = [e for e in _run_entries(dest) if e.path not in LAYOUT_FILES]
    files = len(payload) + len(LAYOUT_FILES) + 1  # the two files written here, and the manifest
    total = sum(e.size for e in payload)
    for _ in range(5):
        record(
            PublishResult(dest.location, True, files, total, published_message(dest.location, files, total))
        )
        written = sum(e.size for e in payload) + sum(
            (run_dir / rel).stat().st_size for rel in LAYOUT_FILES if (run_dir / rel).is_file()
        )
        if written == total:
            return
        total = written


def _withdraw_manifest(dest: Destination) -> None:
    """After a failed verification: remove the manifest, so the destination reads as an unfinished publish."""
    try:
        dest.delete([MANIFEST])
        dest.commit(f"r1ft: withdraw {MANIFEST} (verification failed)")
    except Exception as e:  # the failure is reported anyway; collect also checks every file
        log.warning("could not withdraw %s at %s: %s", MANIFEST, dest.location, e)
