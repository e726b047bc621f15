"""``GET <prefix>/health``, for load balancers and operators: how long the oldest due work has
waited and the state of this process's engine; ``503`` when delivery has fallen behind
``KAIZEN_WEBHOOKS_HEALTH_MAX_DELAY`` or this process's engine is not running with work due. It
tells nothing of any owner, registration or secret."""

from __future__ import annotations

import logging

from flask import Response, jsonify

from ..storage import admin
from .blueprint import current_state

logger = logging.getLogger("flask_kaizen_webhooks")


def health() -> tuple[Response, int]:
    state = current_state()
    now = state.clock.now()
    engine = state.executor.state()
    problems: list[str] = []
    waited = 0.0
    try:
        with state.database.independent_session() as session:
            oldest = admin.oldest_due(
                session,
                now=now,
                every_registration_paced=state.settings.every_registration_paced,
            )
    except Exception as exc:
        logger.warning("Health check: the database could not be read (%s)", type(exc).__name__)
        problems.append("database_unreachable")
    else:
        if oldest is not None:
            waited = max(0.0, (now - oldest).total_seconds())
            if waited > state.settings.health_max_delay:
                problems.append("behind")
            if engine == "stopped":
                problems.append("engine_stopped")
    if engine == "died":
        problems.append("engine_died")
    body = {
        "status": "unhealthy" if problems else "ok",
        "problems": problems,
        "oldest_due_seconds": round(waited, 3),
        "max_delay_seconds": state.settings.health_max_delay,
        "engine": engine,
    }
    return jsonify(body), 503 if problems else 200
