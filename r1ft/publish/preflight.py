"""Before a job spends anything: its destination is parsed, checked and proved writable now (S3: a small
object put, read back and deleted under the run's prefix; the Hub: the token is valid and may write the
repo, created if needed; a directory: writable, not a file, not inside the run directory), so that a run
that could not be delivered never trains. `reach` is the same first contact for reading (collect, the
resume lookup). Every contact is bounded: a few tries (`REACH_RETRY`) under a wall-clock deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from r1ft.publish.connect import open_destination
from r1ft.publish.destination import Destination, DestinationDenied, DestinationUnreachable
from r1ft.publish.location import Location, LocationError, output_location
from r1ft.publish.manifest import CHECKPOINT_DIR, LAYOUT_DIRS, LAYOUT_FILES, MANIFEST
from r1ft.publish.retry import REACH_DEADLINE_S, REACH_RETRY, NoAnswer, RetryPolicy, with_deadline
from r1ft.secrets import redact, secret_values
from r1ft.settings import Settings

log = logging.getLogger(__name__)


def bound(policy: RetryPolicy, deadline_s: float) -> str:
    """How long a first contact may take, in words."""
    return f"at most {policy.attempts} tries within {deadline_s:.0f} s"


def reach(
    dest: Destination,
    *,
    write: bool,
    secrets: Iterable[str] = (),
    policy: RetryPolicy = REACH_RETRY,
    deadline_s: float = REACH_DEADLINE_S,
) -> float:
    """`dest.probe(write)` within `deadline_s`; the seconds it took. DestinationDenied (the message says what
    to fix) when the credentials or permissions are refused; DestinationUnreachable when it does not answer
    or keeps failing. `policy` is the one `dest` was opened with (for the message)."""
    what = "write to" if write else "read"
    t0 = time.monotonic()
    try:
        with_deadline(lambda: dest.probe(write), deadline_s, f"{dest.location}")
    except NoAnswer as exc:
        raise DestinationUnreachable(
            f"could not {what} {dest.location}: no answer within {deadline_s:.0f} s; check the network and "
            "the endpoint"
        ) from exc
    except Exception as exc:
        cause = redact(f"{type(exc).__name__}: {exc}", secrets)
        fix = dest.denial(exc)
        if fix:
            raise DestinationDenied(
                f"{dest.location} refused to let this job {what} it ({cause}): {fix}"
            ) from exc
        elapsed = time.monotonic() - t0
        raise DestinationUnreachable(
            f"could not {what} {dest.location}: {cause} (gave up after {elapsed:.0f} s: "
            f"{bound(policy, deadline_s)}); check the network and the endpoint"
        ) from exc
    return time.monotonic() - t0


def check_destination(
    settings: Settings,
    run_dir: Path,
    run_id: str,
    *,
    policy: RetryPolicy = REACH_RETRY,
    deadline_s: float = REACH_DEADLINE_S,
    hf_api: Any = None,
    s3: Any = None,
) -> str:
    """Prove that the run's destination can be written now; its location. DestinationDenied when it cannot
    be used as set (a settings problem), DestinationUnreachable when it does not answer within the bound."""
    try:
        loc = output_location(settings.output, run_id)
    except LocationError as e:
        raise DestinationDenied(f"R1FT_OUTPUT: {e}") from e
    if loc.kind == "local":
        _outside_run_dir(loc, run_dir, explicit=bool(settings.output.strip()))
    dest = open_destination(loc, settings, retry=policy, hf_api=hf_api, s3=s3)
    seconds = reach(dest, write=True, secrets=secret_values(settings), policy=policy, deadline_s=deadline_s)
    log.info("destination %s: writable (checked in %.1f s)", dest.location, seconds)
    return dest.location


def _outside_run_dir(loc: Location, run_dir: Path, explicit: bool) -> None:
    """A directory destination must not hold the run directory's published files inside the run directory
    (publishing would copy the run into itself, then rewrite the report it just published), nor lie where
    publishing replaces files around the run directory. The default, runs/<run id> under a working directory
    that is the work dir (the image), IS the run directory: it is published in place."""
    assert loc.path is not None
    root, run = Path(loc.path).expanduser().resolve(), run_dir.resolve()
    if root == run and not explicit:
        return
    if root.is_relative_to(run):
        raise DestinationDenied(
            f"R1FT_OUTPUT={loc.uri} is inside the run directory {run}: publishing would copy the run into "
            f"itself and rewrite what it published; point R1FT_OUTPUT outside {run} (or leave it empty)"
        )
    for name in (*LAYOUT_DIRS, *LAYOUT_FILES, MANIFEST, CHECKPOINT_DIR):
        if run.is_relative_to(root / name):
            raise DestinationDenied(
                f"the run directory {run} lies inside {root / name}, which publishing to R1FT_OUTPUT={loc.uri} "
                "replaces; point R1FT_OUTPUT (or R1FT_WORK_DIR) elsewhere"
            )
