"""Synchronous fan-out: every registration of a topic at once, under one deadline, while the
caller waits; the outcome of each is recorded in the delivery log afterwards.

Every request of a fan-out goes to one HTTP client at once (no thread per hook): the sync
topics' own, so that nothing an integrator sets off (a test, a redelivery) delays the host's
logins, or the tests' client. Within a fan-out the owners take turns, so that one integrator's
many hooks do not queue ahead of everyone else's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Flask

from ..signing import encode_payload, with_request_ids
from ..storage import delivery_log
from ..storage.delivery_log import Stored
from ..storage.rows import Finished, Target
from ..storage.tables import TEST_MODE
from ..tracing import CURRENT
from .attempt import announce, log_line
from .client import Client, SendResult
from .context import DeliveryContext
from .outcomes import describe_failure, excerpt, outcome_of, response_json
from .recorder import Recorder
from .requests import Request, signed_request

logger = logging.getLogger("flask_kaizen_webhooks")

#: Delivery logs of synchronous calls waiting to be written, at most; past it (the database away
#: for long) a call's log is dropped, with an error logged, rather than memory growing.
MAX_QUEUED_LOGS = 10_000


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The answer of one registration to a synchronous webhook."""

    delivery_id: str
    registration_id: str
    ok: bool
    status_code: int | None
    elapsed: float
    response_json: Any
    error: str | None
    timed_out: bool
    #: A test of a pull-only registration: stored for its feed, not sent.
    stored: bool = False

    @classmethod
    def failed(cls, target: Target, error: str) -> DeliveryResult:
        """The result of a delivery to ``target`` that could not be made at all."""
        return cls(str(uuid.uuid4()), target.registration_id, False, None, 0.0, None, error, False)

    @classmethod
    def kept(cls, delivery_id: str, target: Target) -> DeliveryResult:
        """The result of a test of a pull-only ``target``, stored for its feed."""
        return cls(delivery_id, target.registration_id, True, None, 0.0, None, None, False, True)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return {
            "delivery_id": self.delivery_id,
            "registration_id": self.registration_id,
            "ok": self.ok,
            "status_code": self.status_code,
            "elapsed_ms": round(self.elapsed * 1000, 1),
            "response": self.response_json,
            "error": self.error,
            "timed_out": self.timed_out,
            "stored": self.stored,
        }


def fan_out(
    app: Flask,
    context: DeliveryContext,
    *,
    topic: str,
    document: Mapping[str, Any],
    targets: Sequence[Target],
    mode: str,
    timeout: float,
    client: Client,
    log: Recorder[FanOutLog],
) -> list[DeliveryResult]:
    """POST ``document`` to every target at once with ``client``; return when all answered or
    at the deadline, stragglers marked timed out. Never raises for a receiver's failure.

    A pull-only target's delivery is stored for its feed, never sent: a test's comes back as a
    ``stored`` result; a synchronous topic's does not (its caller hears of the hooks it waits
    for only). The delivery log is written by ``log``'s thread, or at once for a test (``mode``
    ``"test"``), whose caller may look its deliveries up straight away."""
    started_at = context.clock.now()
    started = time.monotonic()
    ids = [str(uuid.uuid4()) for _ in targets]
    payloads = [text.encode() for text in with_request_ids(encode_payload(document).decode(), ids)]
    sent: list[SendResult | None] = [None] * len(targets)
    requests: list[tuple[int, Request]] = []
    for index in owners_in_turn(targets):
        if targets[index].url is None:
            continue  # pull-only: stored below, with no result to wait for
        request = signed_request(
            context,
            target=targets[index],
            payload=payloads[index],
            topic=topic,
            delivery_id=ids[index],
            number=1,
            trace_parent=CURRENT,
        )
        if isinstance(request, Request):
            requests.append((index, request))
        else:
            sent[index] = request  # it could not be signed: its own result
    remaining = max(0.0, timeout - (time.monotonic() - started))
    for _index, request in requests:
        request.span.start()  # children of the caller's span
    answers = client.post_all(
        [(request.url, request.body, request.headers) for _index, request in requests],
        timeout=remaining,
    )
    for (index, request), answer in zip(requests, answers, strict=True):
        sent[index] = answer
        request.span.end(outcome_of(answer), answer.status_code, answer.elapsed)
    results: list[DeliveryResult] = []
    finished: list[Finished] = []
    stored: list[Stored] = []
    for target, delivery_id, payload, result in zip(targets, ids, payloads, sent, strict=True):
        if result is None:
            stored.append(
                Stored(delivery_id, target.registration_id, target.owner, payload.decode())
            )
            if mode == TEST_MODE:
                results.append(DeliveryResult.kept(delivery_id, target))
            continue
        outcome = outcome_of(result)
        if mode != TEST_MODE:
            context.metrics.attempted(topic, outcome, result.elapsed, target.registration_id)
        follows = "delivered" if result.ok else "failed, not retried"
        log_line(
            1,
            delivery_id,
            target.registration_id,
            topic,
            outcome,
            result.status_code,
            result.elapsed,
            f"{follows} ({'a test' if mode == TEST_MODE else 'synchronous'})",
        )
        results.append(
            DeliveryResult(
                delivery_id=delivery_id,
                registration_id=target.registration_id,
                ok=result.ok,
                status_code=result.status_code,
                elapsed=result.elapsed,
                response_json=response_json(result),
                error=describe_failure(result),
                timed_out=result.timed_out,
            )
        )
        finished.append(
            Finished(
                delivery_id=delivery_id,
                target=target,
                payload=payload.decode(),
                succeeded=result.ok,
                status_code=result.status_code,
                error=describe_failure(result),
                response_excerpt=excerpt(result.body),
                elapsed=result.elapsed,
            )
        )
    _record(app, context, log, FanOutLog(topic, mode, started_at, finished, stored))
    _announce(app, topic, [result for result in results if not result.stored])
    return results


def owners_in_turn(targets: Sequence[Target]) -> list[int]:
    """The indexes of ``targets``, the owners taking turns: each owner's first, then each
    owner's second, and so on (owners in order of their first target)."""
    by_owner: dict[str, list[int]] = defaultdict(list)
    for index, target in enumerate(targets):
        by_owner[target.owner].append(index)
    rounds = max((len(indexes) for indexes in by_owner.values()), default=0)
    return [
        indexes[turn]
        for turn in range(rounds)
        for indexes in by_owner.values()
        if turn < len(indexes)
    ]


@dataclass(frozen=True, slots=True)
class FanOutLog:
    """The delivery log of one fan-out, to be written."""

    topic: str
    mode: str
    started_at: datetime
    finished: list[Finished]
    #: Deliveries of pull-only registrations, stored for their feeds.
    stored: list[Stored] = field(default_factory=list)


def write_logs(app: Flask, context: DeliveryContext, logs: Sequence[FanOutLog]) -> None:
    """Write the delivery logs of fan-outs in one short transaction (on the log's thread)."""
    now = context.clock.now()
    with app.app_context(), context.database.writing() as session:
        for log in logs:
            delivery_log.log_finished(
                session,
                log.finished,
                topic=log.topic,
                mode=log.mode,
                started_at=log.started_at,
                now=now,
            )
            delivery_log.log_stored(
                session,
                log.stored,
                topic=log.topic,
                mode=log.mode,
                started_at=log.started_at,
                now=now,
            )


def _record(
    app: Flask, context: DeliveryContext, sync_log: Recorder[FanOutLog], log: FanOutLog
) -> None:
    """Write the delivery log of a fan-out: a test's at once, a synchronous topic's on the
    log's thread, moments after the caller has its results (never on the host's request
    path)."""
    topic = log.topic
    try:
        if log.stored and log.mode != TEST_MODE:
            # A pull-only registration's only copy of the event: written before the caller
            # goes on, never queued (nor dropped) with the log of the hooks sent.
            write_logs(app, context, [dataclasses.replace(log, finished=[])])
            log = dataclasses.replace(log, stored=[])
            if not log.finished:
                return
        if log.mode == TEST_MODE:
            write_logs(app, context, [log])
        elif sync_log.queued >= MAX_QUEUED_LOGS:  # the database has been away long
            logger.error(
                "The delivery log of a %s call is dropped: %d wait", topic, MAX_QUEUED_LOGS
            )
        else:
            sync_log.put(log)
    except Exception:
        logger.exception("Could not record the delivery log of a %s fan-out", topic)


def _announce(app: Flask, topic: str, results: list[DeliveryResult]) -> None:
    for result in results:
        announce(
            app,
            delivery_id=result.delivery_id,
            registration_id=result.registration_id,
            topic=topic,
            succeeded=result.ok,
            status_code=result.status_code,
            error=result.error,
            attempts=1,
        )
