"""Statements on the host's request path, compiled once per database dialect and run on the
driver directly: the SQL and the column types' conversions are SQLAlchemy's own, but the work of
building each call's parameters and result rows through SQLAlchemy's general machinery is
skipped. For the few statements whose every microsecond the host's users wait for.

They run on the session's own driver connection, in its transaction. When anything watches the
engine's statements (a ``before_cursor_execute`` or ``after_cursor_execute`` listener, such as
tracing, or SQL logging), they go through SQLAlchemy's ``exec_driver_sql`` instead, so that it
sees them too. Driver errors come out as SQLAlchemy's exceptions either way."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Insert, Select

Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Compiled:
    """A statement compiled for one dialect."""

    sql: str
    #: Bind names in the driver's positional order, or None when it takes named parameters.
    positions: tuple[str, ...] | None
    #: Bind names whose values the statement itself holds, converted.
    constants: dict[str, Any]
    bind_processors: dict[str, Processor]
    #: One conversion (or None) per result column; empty when no column needs one.
    result_processors: tuple[Processor | None, ...]

    def convert(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` as the driver takes them."""
        processors = self.bind_processors
        return {
            key: processors[key](value) if key in processors else value
            for key, value in values.items()
        }

    def arguments(self, converted: Mapping[str, Any]) -> Any:
        """The driver's parameters for one call, from converted values."""
        merged = {**self.constants, **converted}
        if self.positions is None:
            return merged
        return tuple(merged[key] for key in self.positions)


class Prepared:
    """A Core INSERT or SELECT, compiled on first use for each dialect."""

    def __init__(
        self,
        statement: Insert | Select[*tuple[Any, ...]],
        *,
        column_keys: Sequence[str] = (),
    ) -> None:
        self._statement = statement
        self._column_keys = list(column_keys)
        self._compiled: dict[Dialect, Compiled] = {}

    def compiled(self, dialect: Dialect) -> Compiled:
        """The statement compiled for ``dialect`` (cached)."""
        compiled = self._compiled.get(dialect)
        if compiled is None:
            compiled = self._compile(dialect)
            self._compiled[dialect] = compiled
        return compiled

    def rows(self, connection: Connection, values: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        """Run the SELECT with ``values``; its rows, converted."""
        compiled = self.compiled(connection.dialect)
        rows: Sequence[Sequence[Any]] = _run(
            connection, compiled.sql, compiled.arguments(compiled.convert(values))
        )
        processors = compiled.result_processors
        if not processors:
            return rows
        return [
            tuple(
                value if processor is None or value is None else processor(value)
                for processor, value in zip(processors, row, strict=True)
            )
            for row in rows
        ]

    def insert_many(
        self,
        connection: Connection,
        shared: Mapping[str, Any],
        keys: tuple[str, ...],
        rows: Iterable[tuple[Any, ...]],
    ) -> None:
        """Run the INSERT once per row of ``rows`` (values of ``keys``), each with the values
        in ``shared`` too: one executemany."""
        compiled = self.compiled(connection.dialect)
        common = compiled.convert(shared)
        processors = [compiled.bind_processors.get(key) for key in keys]
        if any(processors):
            rows = (
                tuple(
                    value if processor is None else processor(value)
                    for processor, value in zip(processors, row, strict=True)
                )
                for row in rows
            )
        if compiled.positions is None:
            arguments: list[Any] = [
                {**compiled.constants, **common, **dict(zip(keys, row, strict=True))}
                for row in rows
            ]
        else:
            # Each row's tuple is (its own values..., the shared ones...), picked in the
            # driver's order.
            merged = {**compiled.constants, **common}
            tail = tuple(merged[key] for key in compiled.positions if key not in keys)
            order = [*keys, *(key for key in compiled.positions if key not in keys)]
            indices = [order.index(key) for key in compiled.positions]
            pick: Callable[[tuple[Any, ...]], tuple[Any, ...]] = (
                itemgetter(*indices)
                if len(indices) > 1
                else lambda values: (values[indices[0]],)  # itemgetter of one gives no tuple
            )
            arguments = [pick(row + tail) for row in rows]
        _run(connection, compiled.sql, arguments, many=True)

    def _compile(self, dialect: Dialect) -> Compiled:
        statement = self._statement
        compiled = statement.compile(dialect=dialect, column_keys=self._column_keys or None)
        bind_processors: dict[str, Processor] = {}
        constants: dict[str, Any] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                bind_processors[name] = processor
            if bind.value is not None and not bind.required:
                constants[name] = processor(bind.value) if processor else bind.value
        unfilled = set(compiled.binds) - set(self._column_keys) - set(constants)
        if isinstance(statement, Insert) and unfilled:
            # SQLAlchemy fills these from the columns' defaults as it executes; not done here.
            raise ValueError(f"an insert prepared here needs values for {sorted(unfilled)}")
        result_processors: tuple[Processor | None, ...] = ()
        if isinstance(statement, Select):
            result_processors = tuple(
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in statement.selected_columns
            )
            if not any(result_processors):
                result_processors = ()
        positions = tuple(compiled.positiontup or ()) if compiled.positional else None
        return Compiled(compiled.string, positions, constants, bind_processors, result_processors)


def _run(connection: Connection, sql: str, arguments: Any, *, many: bool = False) -> Any:
    """Execute ``sql`` on the connection's driver connection (its rows, if it returns any),
    or through ``exec_driver_sql`` when something watches the engine's statements."""
    dispatch = connection.dispatch
    watched = (
        bool(dispatch.before_cursor_execute)
        or bool(dispatch.after_cursor_execute)
        or connection.engine.logger.isEnabledFor(logging.INFO)
    )
    if watched:
        result = connection.exec_driver_sql(sql, arguments)
        return result.fetchall() if result.returns_rows else None
    dialect = connection.dialect
    cursor = connection.connection.cursor()
    try:
        if many:
            cursor.executemany(sql, arguments)
            return None
        cursor.execute(sql, arguments)
        return cursor.fetchall() if cursor.description is not None else None
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, arguments, exc, dialect.loaded_dbapi.Error) from exc
    finally:
        cursor.close()
