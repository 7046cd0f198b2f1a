"""Where a run starts from: the newest complete checkpoint in its own run directory (the run id is
derived from the settings that shape training and the data, or set with R1FT_RUN_ID, so a directory only
ever holds one run's checkpoints); else `last-checkpoint/` at the destination when it belongs to the same
run (a fresh instance after preemption), with the run's published logs and report (its history).

"There is no last-checkpoint/" starts the run from scratch; "could not look" (refused, or no answer within
the bounded retries) stops the job: a silent fresh start would redo, or fork, a run that exists.

Each checkpoint's completion marker carries the run's training identity (`training_identity`: the settings
that shape training, the recipe's base precision and optimizer, the data's fingerprint). A checkpoint whose
identity differs from this job's is never resumed (`identity_differences`): under one R1FT_RUN_ID, a changed
LoRA rank would fail to load and a changed learning rate would resume silently on the old schedule."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from r1ft.checkpoints import markers as checkpoints
from r1ft.exits import ExitCode, JobError
from r1ft.publish.checkpoint import fetch_last_checkpoint, fetch_run_history
from r1ft.publish.destination import DestinationDenied, PublishError
from r1ft.recipe import Recipe
from r1ft.settings import RUN_SHAPING_FIELDS, Settings, env_names

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class ResumePoint:
    checkpoint: Path | None = None
    source: str = ""  # "", "local", "destination"
    step: int = 0


# The settings compared at resume: those that shape training, less R1FT_QUANT, whose `auto` is compared as
# the recipe's resolved base precision instead.
IDENTITY_SETTINGS = sorted(RUN_SHAPING_FIELDS - {"quant"})
# The recipe's decisions that a checkpoint cannot be resumed across, and the setting that forces each.
IDENTITY_RECIPE = {"quant": "R1FT_QUANT", "optimizer": "R1FT_OPTIM"}


def training_identity(settings: Settings, recipe: Recipe, data_fingerprint: str) -> dict[str, Any]:
    """What makes a checkpoint this run's: written into every completion marker, compared at resume."""
    public = settings.public_dict()
    return {
        "settings": {name: public[name] for name in IDENTITY_SETTINGS},
        "recipe": {name: getattr(recipe, name) for name in IDENTITY_RECIPE},
        "data": data_fingerprint,
    }


def marker_identity(ckpt: Path) -> dict[str, Any] | None:
    """The training identity in a checkpoint's marker; None for a marker written before r1ft recorded it."""
    try:
        identity = json.loads((ckpt / checkpoints.MARKER).read_text()).get("identity")
    except (OSError, ValueError):
        return None
    return identity if isinstance(identity, dict) else None


def identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per difference between a checkpoint's identity and this job's, naming the setting."""
    names = {field: env for env, field in env_names().items() if env.startswith("R1FT_")}
    lines = []
    was, now = recorded.get("settings", {}), current["settings"]
    for field in sorted(set(was) | set(now)):
        if field in was and was.get(field) != now.get(field):
            env = names.get(field, field)
            lines.append(f"{env}: {_shown(was.get(field))} in the checkpoint, {_shown(now.get(field))} now")
    was_recipe = recorded.get("recipe", {})
    for field, env in IDENTITY_RECIPE.items():
        if field in was_recipe and was_recipe[field] != current["recipe"][field]:
            lines.append(
                f"the recipe's {field}: {was_recipe[field]} in the checkpoint, {current['recipe'][field]} on "
                f"this machine (set {env}={was_recipe[field]} to resume here)"
            )
    if recorded.get("data") and recorded["data"] != current["data"]:
        lines.append(
            f"the data: fingerprint {recorded['data']} in the checkpoint, {current['data']} now (a data file, a "
            "Hub revision or a setting that shapes the data changed)"
        )
    return lines


def _shown(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


def marker_run_id(ckpt: Path) -> str:
    try:
        return json.loads((ckpt / checkpoints.MARKER).read_text()).get("run_id", "")
    except (OSError, ValueError):
        return ""


def find_resume_point(settings: Settings, run_dir: Path, run_id: str | None = None) -> ResumePoint:
    """The newest complete local checkpoint, else the destination's `last-checkpoint/` of the same run."""
    run_id = run_id or run_dir.name
    local = checkpoints.newest_complete(run_dir / "checkpoints")
    if local is not None:
        point = ResumePoint(local, "local", checkpoints.step_of(local) or 0)
        log.info("resuming from local %s (step %d)", local.name, point.step)
        return point
    remote = _fetch_remote(settings, run_dir, run_id)
    if remote is not None:
        point = ResumePoint(remote, "destination", checkpoints.step_of(remote) or 0)
        log.info("resuming from the destination's last-checkpoint/ (step %d)", point.step)
        return point
    log.info("starting from scratch: no complete checkpoint of run %s here or at the destination", run_id)
    return ResumePoint()


def _fetch_remote(settings: Settings, run_dir: Path, run_id: str) -> Path | None:
    staging = run_dir / "checkpoints" / ".remote"
    got = _looked_up("last-checkpoint/", lambda: fetch_last_checkpoint(settings, staging, run_id=run_id))
    if got is None:
        return None
    if checkpoints.check_complete(got) or marker_run_id(got) != run_id:
        log.warning("the destination's last-checkpoint/ belongs to another run or is incomplete; ignoring it")
        shutil.rmtree(staging, ignore_errors=True)
        return None
    _looked_up("the run's published logs", lambda: fetch_run_history(settings, run_dir, run_id))
    step = json.loads((got / checkpoints.MARKER).read_text()).get("global_step", 0)
    final = run_dir / "checkpoints" / f"checkpoint-{step}"
    shutil.rmtree(final, ignore_errors=True)
    got.replace(final)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def _looked_up(what: str, lookup: Callable[[], T]) -> T:
    """`lookup()`; a destination that could not be asked stops the job (exit 2 when it refused the
    credentials or permissions, 3 when it did not answer within the bounded retries)."""
    try:
        return lookup()
    except DestinationDenied as e:
        raise JobError(f"could not look for {what} at the destination: {e}", ExitCode.SETTINGS) from e
    except PublishError as e:
        raise JobError(
            f"could not look for {what} at the destination: {e}. Not starting from scratch, which "
            "could redo or fork this run: rerun once the destination answers (the run resumes from it)",
            ExitCode.PUBLISH,
        ) from e
