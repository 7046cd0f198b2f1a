"""Open the destination a location names, with the settings' credentials (the one factory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1ft.publish.destination import Destination
from r1ft.publish.hub import HubDestination
from r1ft.publish.local import LocalDestination
from r1ft.publish.location import Location, output_location, parse_location
from r1ft.publish.retry import DEFAULT_RETRY, RetryPolicy
from r1ft.publish.s3 import S3Destination, s3_client
from r1ft.secrets import secret_values
from r1ft.settings import Settings


def open_destination(
    location: Location | str,
    settings: Settings,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    hf_api: Any = None,
    s3: Any = None,
) -> Destination:
    """The destination at `location` (a Location or its URI), with the settings' credentials."""
    loc = parse_location(location) if isinstance(location, str) else location
    secrets = secret_values(settings)
    if loc.kind == "hf":
        if hf_api is None:
            from huggingface_hub import HfApi

            token = settings.hf_token.get_secret_value() if settings.hf_token else None
            hf_api = HfApi(token=token)
        return HubDestination(
            loc.repo, loc.revision or None, hf_api, private=settings.hf_private, retry=retry, secrets=secrets
        )
    if loc.kind == "s3":
        client = s3 if s3 is not None else s3_client(settings, retry)
        return S3Destination(loc.bucket, loc.prefix, client, retry=retry, secrets=secrets)
    assert loc.path is not None
    return LocalDestination(Path(loc.path))


def destination_for(
    settings: Settings,
    run_id: str = "",
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    hf_api: Any = None,
    s3: Any = None,
) -> Destination:
    """The destination of `settings.output`; empty output: the directory runs/<run_id> under the cwd."""
    return open_destination(
        output_location(settings.output, run_id), settings, retry=retry, hf_api=hf_api, s3=s3
    )
