"""Synchronous fan-out: every registration of a topic at once, under one deadline, while the
caller waits; the outcome of each is recorded in the delivery log afterwards.

Each kind of caller sends on a :class:`Lane` of its own (threads and connections), so that the
test endpoint can never take the capacity the host's logins wait on; within a fan-out, the
owners take turns, so that one integrator's many hooks do not queue ahead of everyone else's.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask

from .. import store
from ..signing import encode_payload, with_request_ids
from ..transport import SendResult, Transport
from .attempt import announce, describe_failure, excerpt, response_json, send

if TYPE_CHECKING:
    from ..extension import WebhooksState

logger = logging.getLogger("flask_kaizen_webhooks")


class Lane:
    """The threads (started on first use) and connections one kind of synchronous sending
    uses, apart from the others'."""

    def __init__(self, name: str, workers: int, transport: Transport) -> None:
        self.name = name
        self.workers = workers
        self.transport = transport
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The lane's threads."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.workers, thread_name_prefix=f"kaizen-webhooks-{self.name}"
                )
            return self._pool

    def after_fork(self) -> None:
        """In a forked child: the parent's threads and connections are not this process's."""
        self._lock = threading.Lock()
        self._pool = None
        self.transport.after_fork()

    def shutdown(self) -> None:
        """Stop the threads, cancelling what waits (they start again on next use)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


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

    @classmethod
    def failed(cls, target: store.Target, error: str) -> DeliveryResult:
        """The result of a delivery to ``target`` that could not be made at all."""
        return cls(str(uuid.uuid4()), target.registration_id, False, None, 0.0, None, error, False)

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
        }


def fan_out(
    app: Flask,
    state: WebhooksState,
    *,
    topic: str,
    document: Mapping[str, Any],
    targets: Sequence[store.Target],
    mode: str,
    timeout: float,
    lane: Lane,
) -> list[DeliveryResult]:
    """POST ``document`` to every target in parallel on ``lane``; return when all answered or
    at the deadline, stragglers marked timed out. Never raises for a receiver's failure."""
    started_at = state.clock.now()
    started = time.monotonic()
    deadline = started + timeout
    ids = [str(uuid.uuid4()) for _ in targets]
    payloads = [text.encode() for text in with_request_ids(encode_payload(document).decode(), ids)]
    futures: dict[int, Future[SendResult]] = {}
    for index in owners_in_turn(targets):
        futures[index] = lane.pool.submit(
            _send_before,
            deadline,
            state,
            lane.transport,
            targets[index],
            payloads[index],
            topic,
            ids[index],
        )
    jobs = [
        (target, ids[index], payloads[index], futures[index])
        for index, target in enumerate(targets)
    ]
    wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))

    results = []
    sent = []
    for target, delivery_id, _payload, future in jobs:
        if future.done() and not future.cancelled() and future.exception() is None:
            result = future.result()
        else:
            future.cancel()
            result = SendResult(
                None,
                time.monotonic() - started,
                b"",
                None,
                None,
                f"timed out: no answer within {timeout:g} s",
                timed_out=True,
            )
        sent.append(result)
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
    _record(state, topic, mode, started_at, jobs, sent)
    _announce(app, topic, results)
    return results


def owners_in_turn(targets: Sequence[store.Target]) -> list[int]:
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


def _send_before(
    deadline: float,
    state: WebhooksState,
    transport: Transport,
    target: store.Target,
    payload: bytes,
    topic: str,
    delivery_id: str,
) -> SendResult:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return SendResult(None, 0.0, b"", None, None, "timed out before sending", timed_out=True)
    return send(
        state,
        transport,
        target=target,
        payload=payload,
        topic=topic,
        delivery_id=delivery_id,
        attempt_number=1,
        timeout=remaining,
    )


def _record(
    state: WebhooksState,
    topic: str,
    mode: str,
    started_at: Any,
    jobs: list[tuple[store.Target, str, bytes, Future[SendResult]]],
    sent: list[SendResult],
) -> None:
    """Write the delivery log of a fan-out in one short transaction of its own."""
    now = state.clock.now()
    try:
        with state.database.writing() as session:
            for (target, delivery_id, payload, _future), result in zip(jobs, sent, strict=True):
                store.log_finished(
                    session,
                    delivery_id=delivery_id,
                    target=target,
                    topic=topic,
                    mode=mode,
                    payload=payload.decode(),
                    succeeded=result.ok,
                    status_code=result.status_code,
                    error=describe_failure(result),
                    response_excerpt=excerpt(result.body),
                    elapsed=result.elapsed,
                    started_at=started_at,
                    now=now,
                )
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
