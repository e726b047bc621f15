"""What an attempt's answer means: success or why not, the excerpt kept of it, the JSON handed
to the host, and what follows (a retry when, failure for good, or gone)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..storage.rows import Outcome
from .client import SendResult

EXCERPT_CHARS = 2048
#: The deepest nesting of a receiver's JSON answer handed to the host; deeper answers are
#: treated as not JSON (they could exhaust the host's stack when encoded again).
MAX_JSON_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Step:
    """What follows an attempt, and when the next one is due for a retry."""

    kind: Outcome
    retry_at: datetime | None = None


def describe_failure(result: SendResult) -> str | None:
    """Why ``result`` is not a success, in a few words; None when it is one."""
    if result.ok:
        return None
    if result.error is not None:
        return storable(result.error)
    assert result.status_code is not None
    if 300 <= result.status_code < 400:
        return f"HTTP {result.status_code}: redirects are not followed"
    return f"HTTP {result.status_code}"


def outcome_of(result: SendResult) -> str:
    """What an attempt came to, in one word of a small set (for logs and metrics): success,
    4xx, 5xx, redirect, timeout, refused (by the address guard), too_large (the answer) or
    connection_error (anything else without an answer, a name that does not resolve too)."""
    if result.ok:
        return "success"
    if result.timed_out:
        return "timeout"
    error = result.error or ""
    if error.startswith("forbidden destination"):
        return "refused"
    if error.startswith("answer too large"):
        return "too_large"
    code = result.status_code
    if result.error is not None or code is None:
        return "connection_error"
    if code >= 500:
        return "5xx"
    if code >= 400:
        return "4xx"
    return "redirect"


def excerpt(body: bytes) -> str | None:
    """The start of a response body, as text, for the delivery log."""
    if not body:
        return None
    return storable(body[: EXCERPT_CHARS * 4].decode("utf-8", "replace")[:EXCERPT_CHARS])


def storable(text: str) -> str:
    """``text`` as every supported database stores it: NUL characters (which PostgreSQL
    refuses) and lone surrogates (which are not UTF-8) replaced by U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
    return text


def response_json(result: SendResult) -> Any:
    """The response's JSON document, if it sent one (within the read cap) and it is plain
    JSON nested at most :data:`MAX_JSON_DEPTH` deep; None otherwise. A receiver's answer is
    untrusted: nothing in it may raise."""
    if not result.body or "json" not in (result.content_type or "").lower():
        return None
    try:
        document = json.loads(result.body, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError):
        return None
    return document if _nested_within(document, MAX_JSON_DEPTH) else None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999: JSON the host could not encode again
        raise ValueError(f"{text[:20]} is out of range")
    return number


def _nested_within(document: Any, limit: int) -> bool:
    """True if no array or object in ``document`` lies deeper than ``limit`` levels."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if not isinstance(value, list):
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in value)
    return True


def next_step(
    result: SendResult,
    *,
    retry_index: int,
    schedule: tuple[float, ...],
    jitter: float,
    max_retry_after: float,
    now: datetime,
    rng: random.Random,
) -> Step:
    """Success, a retry later (backoff with jitter, or the receiver's ``Retry-After`` on
    429/503), failure for good once the schedule is used up, or ``gone`` on 410."""
    if result.ok:
        return Step(Outcome.SUCCEEDED)
    if result.status_code == 410:
        return Step(Outcome.GONE)
    if retry_index >= len(schedule):
        return Step(Outcome.FAILED)
    delay = schedule[retry_index] * (1 + rng.uniform(-jitter, jitter))
    if result.status_code in (429, 503) and result.retry_after is not None:
        delay = min(result.retry_after, max_retry_after)
    return Step(Outcome.RETRY, retry_at=now + timedelta(seconds=delay))
