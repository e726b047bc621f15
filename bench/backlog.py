"""``backlog_drain_per_s``: a backlog of pending deliveries for one registration, drained by the
engine to a receiver answering in 20 ms; with adaptive concurrency (the defaults) and beside it
with adaptation off at the former fixed cap of two attempts at once."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from flask_kaizen_webhooks import get_state
from flask_kaizen_webhooks.storage.tables import Delivery, DeliveryStatus, Registration

#: Seconds the receiver takes to answer each delivery.
ANSWER_IN = 0.02


def backlog_drain(url: str, database_uri: str, count: int, **config: Any) -> float:
    """Deliveries a second to drain ``count`` pending deliveries of one registration, from
    the engine's start to the last success recorded."""
    from bench.__main__ import PAYLOAD, add_registrations, host_app, succeeded

    app, webhooks = host_app(database_uri, **config)
    add_registrations(app, url, 1, "profile_updated", query=f"?delay={ANSWER_IN}")
    with app.app_context():
        state = get_state()
        registration_id = state.database.session.scalars(select(Registration.id)).one()
        now = datetime.now(UTC) - timedelta(seconds=1)
        rows = [
            {
                "id": str(uuid.uuid4()),
                "registration_id": registration_id,
                "owner": "bench",
                "topic": "profile_updated",
                "mode": "async",
                "payload": json.dumps({**PAYLOAD, "n": n}),
                "status": DeliveryStatus.PENDING,
                "attempts": 0,
                "retry_index": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for n in range(count)
        ]
        with state.database.writing() as session:
            session.execute(insert(Delivery), rows)
    started = time.perf_counter()
    webhooks.start(app)
    deadline = started + 600
    while succeeded(app) < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the backlog of {count} did not drain in 10 minutes")
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    webhooks.shutdown(app)
    return count / elapsed


def backlog_figures(url: str, database_uri: str, count: int) -> dict[str, float]:
    """The drain rate adapting, beside adaptation off at the fixed cap of two."""
    adaptive = backlog_drain(url, database_uri, count)
    fixed = backlog_drain(
        url,
        database_uri,
        count,
        KAIZEN_WEBHOOKS_ADAPTIVE_CONCURRENCY=False,
        KAIZEN_WEBHOOKS_MAX_IN_FLIGHT_PER_REGISTRATION=2,
    )
    return {
        "backlog_drain_per_s": adaptive,
        "backlog_drain_fixed_cap_2_per_s": fixed,
        "backlog_drain_to_fixed_cap_2": adaptive / fixed,
    }
