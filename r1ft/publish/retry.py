"""Retries of transient errors (HTTP 429/5xx, dropped connections, a mismatch right after an upload):
exponential backoff that honours the server's Retry-After, through tenacity; secrets masked in the log."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from r1ft.secrets import redact

log = logging.getLogger(__name__)


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
