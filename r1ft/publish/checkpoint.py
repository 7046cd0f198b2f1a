"""The resumable checkpoint at the destination: `last-checkpoint/`, replaced by each push, its own manifest
written last so that a partial upload is detectable; fetched and verified by a fresh instance, together
with the run's published logs and report (its history), so that the resumed run's loss curve and history
cover the whole run."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from r1ft.files import format_bytes
from r1ft.publish.connect import destination_for
from r1ft.publish.destination import (
    Destination,
    DestinationDenied,
    FileEntry,
    PublishError,
    PublishResult,
    RemoteMissing,
    local_problem,
)
from r1ft.publish.manifest import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    MANIFEST,
    REPORT,
    load_manifest,
    manifest_data,
    read_manifest,
)
from r1ft.publish.preflight import reach
from r1ft.publish.retry import DEFAULT_RETRY, REACH_RETRY, RetryPolicy
from r1ft.publish.run import failure_message
from r1ft.secrets import redact, secret_values
from r1ft.settings import Settings

log = logging.getLogger(__name__)


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
        raise PublishError(failure_message("pushing a checkpoint to", dest, exc, secrets, after)) from exc
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
    message = f"pushed {ckpt_dir.name} ({len(entries)} files, {format_bytes(total)}) to {where}"
    log.info("%s", message)
    return PublishResult(where, True, len(entries), total, message)


def fetch_last_checkpoint(
    settings: Settings,
    dest_dir: Path,
    *,
    run_id: str | None = None,
    source: Destination | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    first_contact: RetryPolicy = REACH_RETRY,
) -> Path | None:
    """Download last-checkpoint/ from the destination into `dest_dir` and verify it against its manifest.

    None when there is none, or when it is incomplete or corrupt (logged). "Could not look" is never None:
    DestinationDenied when the credentials or permissions are refused, another PublishError when the
    destination does not answer within `first_contact`'s bound, or fails after the retries.
    """
    dest_dir = Path(dest_dir)
    run_id = run_id or settings.run_id
    secrets = secret_values(settings)
    probe = source if source is not None else destination_for(settings, run_id, retry=first_contact)
    reach(probe, write=False, secrets=secrets, policy=first_contact)
    src = source if source is not None else destination_for(settings, run_id, retry=retry)
    partial = dest_dir.with_name(dest_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        problem = _download_checkpoint(src, partial)
    except PublishError:
        raise
    except Exception as exc:
        raise _lookup_error(f"fetching {CHECKPOINT_DIR}/ from", src, exc, secrets) from exc
    if problem:
        level = logging.INFO if problem == "absent" else logging.WARNING  # absent: there is nothing to resume
        log.log(level, "%s/ at %s: %s; not resuming from it", CHECKPOINT_DIR, src.location, problem)
        shutil.rmtree(partial, ignore_errors=True)
        return None
    (partial / MANIFEST).unlink()
    if dest_dir.exists():
        shutil.rmtree(dest_dir)
    os.replace(partial, dest_dir)
    log.info("fetched %s/ from %s into %s", CHECKPOINT_DIR, src.location, dest_dir)
    return dest_dir


def fetch_run_history(
    settings: Settings,
    run_dir: Path,
    run_id: str,
    *,
    source: Destination | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> list[str]:
    """The run's published TensorBoard files (logs/) and report.json, for a fresh instance that resumes from
    last-checkpoint/: what the run directory lacks is downloaded, verified against the published manifest
    of the same run (a partial publish at an interruption writes one). The paths fetched; none when nothing
    of this run is published. Errors as `fetch_last_checkpoint`'s."""
    src = source if source is not None else destination_for(settings, run_id, retry=retry)
    staging = run_dir / ".published"
    shutil.rmtree(staging, ignore_errors=True)
    fetched = []
    try:
        try:
            src.download(MANIFEST, staging / MANIFEST)
        except RemoteMissing:
            return []
        manifest = load_manifest(staging / MANIFEST)
        if manifest.run_id != run_id:
            log.warning("the run published at %s is %r, not %r: its logs are not fetched", src.location,
                        manifest.run_id, run_id)  # fmt: skip
            return []
        for entry in manifest.files:
            wanted = entry.path.startswith("logs/") or entry.path == REPORT
            if not wanted or (run_dir / entry.path).exists():
                continue
            src.download(entry.path, staging / entry.path)
            problem = local_problem(staging / entry.path, entry)
            if problem:
                raise PublishError(f"{src.location}/{entry.path}: {problem}")
            (run_dir / entry.path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / entry.path, run_dir / entry.path)
            fetched.append(entry.path)
    except PublishError:
        raise
    except Exception as exc:
        raise _lookup_error(
            "fetching the run's published logs from", src, exc, secret_values(settings)
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if fetched:
        log.info("fetched %d file(s) of the run's earlier part from %s: %s", len(fetched), src.location,
                 ", ".join(fetched))  # fmt: skip
    return fetched


def _lookup_error(action: str, src: Destination, exc: BaseException, secrets: list[str]) -> PublishError:
    """The error of a lookup that could not be done: DestinationDenied when it was refused."""
    cause = redact(f"{type(exc).__name__}: {exc}", secrets)
    fix = src.denial(exc)
    if fix:
        return DestinationDenied(f"{action} {src.location} was refused ({cause}): {fix}")
    return PublishError(f"{action} {src.location} failed: {cause}")


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
        problem = local_problem(into / entry.path, entry)
        if problem:
            return f"{entry.path}: {problem}"
    return ""
