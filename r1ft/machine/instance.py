"""Stopping the Vast.ai instance the job runs on, once the outputs are safe (a forgotten one bills by the hour).

Inside a Vast container, `CONTAINER_ID` and `CONTAINER_API_KEY` (a key that can only start, stop or
destroy that one instance) are set. R1FT_STOP_INSTANCE decides what happens after publishing:
destroy (billing ends, disk deleted), stop (GPU billing ends, disk kept for rescue) or none; auto =
destroy after a verified publish, stop after a failed one. A destroy never follows a publish that failed
or was not verified: the disk holds the only copy of the outputs, so it is stopped instead.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from r1ft.secrets import redact, secret_values

if TYPE_CHECKING:
    from r1ft.settings import Settings

log = logging.getLogger(__name__)

VAST_CONSOLE = "https://console.vast.ai"


def decide_action(mode: str, published_ok: bool) -> str:
    """'destroy' | 'stop' | 'none' for R1FT_STOP_INSTANCE `mode` after a publish that did or did not verify."""
    if mode == "none":
        return "none"
    if mode == "stop" or not published_ok:
        return "stop"  # also for destroy/auto after a failed publish: the disk keeps the only copy
    return "destroy"


def vast_client(settings: Settings) -> Any:
    """The vastai SDK client with the container's own key and the settings' VAST_URL (passed explicitly:
    the SDK would otherwise read VAST_URL from the environment once, at import)."""
    from vastai import VastAI

    key = settings.container_api_key.get_secret_value() if settings.container_api_key else None
    return VastAI(api_key=key, server_url=(settings.vast_url or VAST_CONSOLE).rstrip("/"), retry=5)


def stop_instance(settings: Settings, published_ok: bool) -> str:
    """Destroy, stop or leave the Vast instance per R1FT_STOP_INSTANCE; returns the line for the log.

    Outside Vast (CONTAINER_ID or CONTAINER_API_KEY unset) does nothing and says so. Never raises: a failed
    call is reported with the command to run by hand.
    """
    instance = settings.container_id
    if not instance or settings.container_api_key is None:
        return "instance: not on Vast.ai (CONTAINER_ID / CONTAINER_API_KEY not set); nothing stopped"
    action = decide_action(settings.stop_instance, published_ok)
    why = "publish verified" if published_ok else "publish failed or not verified: disk kept for rescue"
    if action == "none":
        return (
            f"instance: R1FT_STOP_INSTANCE=none; instance {instance} left running and billing "
            f"(end it with: vastai destroy instance {instance} -y)"
        )
    if action == "stop" and settings.stop_instance == "destroy":
        why += "; R1FT_STOP_INSTANCE=destroy overridden"
    ident: int | str = int(instance) if instance.isdigit() else instance
    # Said before the call: the call may end this container before the line after it is written.
    log.info(
        "instance: %s instance %s now (%s)",
        "destroying" if action == "destroy" else "stopping",
        instance,
        why,
    )
    try:
        client = vast_client(settings)
        if action == "destroy":
            client.destroy_instance(ident)
        else:
            client.stop_instance(ident)
    except Exception as exc:
        cause = redact(f"{type(exc).__name__}: {exc}", secret_values(settings))
        by_hand = (
            f"vastai destroy instance {instance} -y"
            if action == "destroy"
            else f"vastai stop instance {instance}"
        )
        return (
            f"instance: could not {action} instance {instance} ({cause}); it is still billing: run {by_hand}"
        )
    done = "destroyed" if action == "destroy" else "stopped"
    return f"instance: {done} instance {instance} ({why})"
