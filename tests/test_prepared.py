"""Statements compiled once and run on the driver (the host's request path): they write and
read what SQLAlchemy would, on every backend and driver."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Table,
    bindparam,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from flask_kaizen_webhooks import clock, get_state
from flask_kaizen_webhooks.storage.prepared import Prepared
from flask_kaizen_webhooks.storage.tables import Delivery
from tests.conftest import Host
from tests.test_storage import add


def test_prepared_statements_match_sqlalchemy_on_every_backend(host: Host) -> None:
    """The request path's driver-level statements write and read what SQLAlchemy would."""
    table = Delivery.__table__
    moment = datetime(2026, 11, 29, 7, 1, 2, 345678, tzinfo=UTC)
    keys = ("id", "registration_id", "owner", "payload")
    shared = {"topic": "profile_updated", "mode": "async", "status": "pending", "attempts": 0}
    shared |= {"retry_index": 0, "updated_at": moment}
    write = Prepared(insert(table), column_keys=(*keys, *shared, "created_at"))
    read = Prepared(
        select(table.c.id, table.c.created_at, table.c.attempts)
        .where(table.c.topic == bindparam("topic"), table.c.mode == "async")
        .order_by(table.c.id)
    )
    add(host)
    with host.app.app_context():
        session = get_state().database.session
        connection = session.connection()
        with pytest.raises(ValueError, match="needs values for"):
            Prepared(insert(table), column_keys=keys).compiled(connection.dialect)
        rows = [(f"d-{n}", "r-1", "org-1", "{}") for n in range(3)]
        write.insert_many(connection, {**shared, "created_at": moment}, keys, rows[:2])
        # Something watching the engine's statements (tracing, say) sees them.
        seen: list[str] = []

        def watch(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            seen.append(statement)

        event.listen(session.get_bind(), "before_cursor_execute", watch)
        try:
            write.insert_many(connection, {**shared, "created_at": moment}, keys, rows[2:])
        finally:
            event.remove(session.get_bind(), "before_cursor_execute", watch)
        assert len(seen) == 1 and seen[0].startswith("INSERT INTO kaizen_webhook_deliveries")
        session.commit()
        # A driver error is SQLAlchemy's exception, as from any other statement.
        with pytest.raises(IntegrityError):
            write.insert_many(session.connection(), {**shared, "created_at": moment}, keys, rows)
        session.rollback()
        fast = [tuple(row) for row in read.rows(session.connection(), {"topic": "profile_updated"})]
        usual = [
            tuple(row)
            for row in session.execute(
                select(table.c.id, table.c.created_at, table.c.attempts)
                .where(table.c.topic == "profile_updated")
                .order_by(table.c.id)
            )
        ]
        stored = session.scalars(select(Delivery).order_by(Delivery.id)).all()
    assert fast == usual and [row[0] for row in fast] == ["d-0", "d-1", "d-2"]
    assert {clock.as_utc(row[1]) for row in fast} == {moment}
    assert [(d.status, d.attempts, d.retry_index) for d in stored] == [("pending", 0, 0)] * 3


def test_a_prepared_insert_of_a_single_column_on_a_positional_driver() -> None:
    table = Table("single", MetaData(), Column("x", Integer))
    engine = create_engine("sqlite://")  # qmark: positional parameters
    table.metadata.create_all(engine)
    with engine.begin() as connection:
        Prepared(insert(table), column_keys=("x",)).insert_many(
            connection, {}, ("x",), [(1,), (2,)]
        )
        assert sorted(connection.execute(select(table.c.x)).scalars()) == [1, 2]
    engine.dispose()
