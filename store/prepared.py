"""Statements compiled once per dialect and run on the session's own DBAPI cursor.

The request path writes a prediction and its roll-ups with a few fixed statements. Through
``Connection.execute`` each one pays for a compiled-cache lookup, an execution context and a
result object, which cost as much as SQLite's own work. A ``Prepared`` keeps what SQLAlchemy
would have looked up (the SQL text, the order of its parameters and each one's bind
processor, e.g. JSON and UTC datetime encoding) and runs it on the same connection, in the same
transaction, so ``session.commit()`` commits it with everything else. Driver errors come out
as SQLAlchemy's (``DBAPIError.instance``: ``OperationalError`` for an outage, which the views
answer with 503), and a dropped connection is invalidated as SQLAlchemy would.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, NoReturn

from sqlalchemy import Column, Connection, Table, bindparam, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.expression import Executable


class _Compiled(NamedTuple):
    sql: str
    #: Bind names in the order the driver takes them (positional) or as it names them.
    names: tuple[str, ...]
    #: Each bind's processor (None: the value goes to the driver as it is).
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool
    #: The class of the rows ``Prepared.rows`` gives back (its ``RETURNING`` or select list).
    row: type | None


class Prepared:
    """One Core statement with named bind parameters, compiled once per dialect."""

    def __init__(
        self, statement: Executable, defaults: Mapping[str, Callable[[], Any]] | None = None
    ) -> None:
        self.statement = statement
        #: Values for parameters the caller may leave out (Python-side column defaults).
        self.defaults = dict(defaults or {})
        self._compiled: dict[str, _Compiled] = {}

    def _for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _compile(self.statement, dialect)
        return compiled

    def run(self, connection: Connection, params: Mapping[str, Any]) -> None:
        """Execute once with ``params`` (every bind by name, or a default for it)."""
        self._execute(connection, params, fetch=False)

    def rows(self, connection: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Execute once and give back its rows (``RETURNING`` or a select), by column name."""
        return self._execute(connection, params, fetch=True)

    def _execute(self, connection: Connection, params: Mapping[str, Any], fetch: bool) -> Any:
        compiled = self._for(connection.dialect)
        values = [
            params[name] if name in params else self.defaults[name]() for name in compiled.names
        ]
        values = [
            value if process is None or value is None else process(value)
            for value, process in zip(values, compiled.processors, strict=True)
        ]
        driver_params: Any = (
            values if compiled.positional else dict(zip(compiled.names, values, strict=True))
        )
        dbapi_connection = connection.connection
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(compiled.sql, driver_params)
            if not fetch:
                return None
            row = compiled.row
            return [row(*values) for values in cursor.fetchall()] if row else []
        except connection.dialect.loaded_dbapi.Error as exc:
            _raise(connection, compiled.sql, driver_params, exc, cursor)
        finally:
            cursor.close()


def _raise(connection: Connection, sql: str, params: Any, exc: Exception, cursor: Any) -> NoReturn:
    """Raise the driver's error as SQLAlchemy would, invalidating a dropped connection."""
    dialect = connection.dialect
    dropped = dialect.is_disconnect(exc, connection.connection.dbapi_connection, cursor)
    if dropped:
        connection.invalidate(exc)
    raise DBAPIError.instance(
        sql,
        params,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=dropped,
        dialect=dialect,
    ) from exc


def _compile(statement: Executable, dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)
    processors = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    escaped = getattr(compiled, "escaped_bind_names", None) or {}
    if escaped:  # a bind name the driver's placeholder syntax cannot carry as it is
        raise ValueError(f"bind names need escaping: {sorted(escaped)}")
    columns = tuple(getattr(statement, "exported_columns", {}).keys())
    row = namedtuple("Row", columns) if columns else None  # noqa: PYI024 - built at run time
    return _Compiled(compiled.string, names, processors, compiled.positional, row)


def full_insert(table: Table) -> Prepared:
    """An INSERT of every column of ``table``; left-out ones take the column's Python default
    (or NULL), as an ORM or Core insert would give them."""
    statement = insert(table).values(
        {c.name: bindparam(c.name, type_=c.type) for c in table.columns}
    )
    return Prepared(statement, {c.name: _default(c) for c in table.columns})


def _default(column: Column[Any]) -> Callable[[], Any]:
    """What a left-out column gets: its Python default, or NULL (its server default would
    not apply: the INSERT names every column)."""
    default = column.default
    if default is None:
        if column.server_default is not None:
            raise ValueError(f"{column} has only a server default; give it a Python one")
        return _none
    if default.is_callable:
        return _callable(default.arg)
    if default.is_scalar:
        return _constant(default.arg)
    raise ValueError(f"{column}'s default is a SQL expression, which a Prepared cannot run")


def _none() -> None:
    return None


def _callable(arg: Callable[[Any], Any]) -> Callable[[], Any]:
    # SQLAlchemy wraps a column default's callable to take an execution context.
    return lambda: arg(None)


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value
