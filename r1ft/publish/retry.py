"""Retries of transient errors (HTTP 429/5xx, dropped connections, a mismatch right after an upload):
exponential backoff that honours the server's Retry-After, through tenacity; secrets masked in the log.
A first contact (the job's preflight, the resume lookup, collect) uses `REACH_RETRY`, a few tries within a
bounded time, under a wall-clock deadline that also bounds a request that never answers."""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

from r1ft.secrets import redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How transient errors are retried. Tests pass tiny waits and a recording `sleep`."""

    attempts: int = 6
    initial_s: float = 2.0
    max_s: float = 120.0
    retry_after_max_s: float = 900.0  # the Hub's commit rate limit can ask for minutes
    sdk_attempts: int = 5  # botocore's own retries per S3 request (standard mode), after the first attempt
    sleep: Callable[[float], None] = time.sleep
    deadline_s: float | None = None  # no new try starts once this long has passed since the first


DEFAULT_RETRY = RetryPolicy()
# Whether a destination answers at all: 4 tries, 2-8 s apart, none started after 45 s. Run under
# `with_deadline(..., REACH_DEADLINE_S)`, so even a request that never answers ends it within a minute.
REACH_RETRY = RetryPolicy(attempts=4, initial_s=2.0, max_s=8.0, sdk_attempts=2, deadline_s=45.0)
REACH_DEADLINE_S = 60.0


class NoAnswer(TimeoutError):
    """Nothing came back within the deadline (a destination that accepts connections but never answers)."""


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

    stop = stop_after_attempt(policy.attempts)
    if policy.deadline_s is not None:
        stop = stop | stop_after_delay(policy.deadline_s)
    retrying = Retrying(
        stop=stop,
        wait=_wait(policy),
        retry=retry_if_exception(transient),
        sleep=policy.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


def with_deadline(fn: Callable[[], Any], seconds: float, what: str) -> Any:
    """`fn()`, or `NoAnswer` once `seconds` have passed. The libraries' HTTP clients may wait forever for
    an answer (huggingface_hub's API calls have no timeout), so the call runs in a daemon thread, which a
    process that gives up can leave behind."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="r1ft-deadline", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise NoAnswer(f"{what}: no answer within {seconds:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
