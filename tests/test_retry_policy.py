"""The retry decision on its own: backoff, jitter, Retry-After, success, 410."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from flask_kaizen_webhooks.delivery.client import SendResult
from flask_kaizen_webhooks.delivery.outcomes import next_step

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SCHEDULE = (5.0, 300.0, 1800.0)


def result(
    status: int | None, retry_after: float | None = None, error: str | None = None
) -> SendResult:
    return SendResult(status, 0.01, b"", None, retry_after, error)


def step(res: SendResult, retry_index: int = 0, jitter: float = 0.2, seed: int = 1) -> object:
    return next_step(
        res,
        retry_index=retry_index,
        schedule=SCHEDULE,
        jitter=jitter,
        max_retry_after=3600,
        now=NOW,
        rng=random.Random(seed),
    )


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_succeeds(status: int) -> None:
    assert step(result(status)).kind == "succeeded"  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [301, 302, 400, 404, 500, 503])
def test_everything_else_retries_on_schedule_with_jitter(status: int) -> None:
    for index, delay in enumerate(SCHEDULE):
        delays = set()
        for seed in range(50):
            decided = step(result(status), retry_index=index, seed=seed)
            assert decided.kind == "retry"  # type: ignore[attr-defined]
            seconds = (decided.retry_at - NOW).total_seconds()  # type: ignore[attr-defined]
            assert delay * 0.8 <= seconds <= delay * 1.2
            delays.add(seconds)
        assert len(delays) > 40  # jitter spreads them


def test_network_errors_retry_and_the_schedule_ends_in_failure() -> None:
    assert step(result(None, error="connection failed")).kind == "retry"  # type: ignore[attr-defined]
    assert step(result(500), retry_index=len(SCHEDULE)).kind == "failed"  # type: ignore[attr-defined]


def test_410_is_gone_at_once() -> None:
    assert step(result(410)).kind == "gone"  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_replaces_the_delay_up_to_the_cap(status: int) -> None:
    decided = step(result(status, retry_after=42), jitter=0.0)
    assert decided.retry_at == NOW + timedelta(seconds=42)  # type: ignore[attr-defined]
    capped = step(result(status, retry_after=10**7), jitter=0.0)
    assert capped.retry_at == NOW + timedelta(seconds=3600)  # type: ignore[attr-defined]
    # Other statuses' Retry-After is not a promise to honour.
    ignored = step(result(500, retry_after=42), jitter=0.0)
    assert ignored.retry_at == NOW + timedelta(seconds=5)  # type: ignore[attr-defined]
