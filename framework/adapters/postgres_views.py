"""Read models in PostgreSQL: typed tables per projection version, positions and dead letters.

A batch is one transaction: the staged row changes are flushed in bulk
(executemany, pipelined by psycopg), the projection's position is advanced
with a guard (it only moves forward), and both commit together.
"""

from __future__ import annotations

import functools
import operator
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

import psycopg
from psycopg import Connection, sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from framework.adapters.pg_columns import column_definitions, to_parameters
from framework.errors import ConcurrencyConflict, StoreUnavailable, VersionSwitched
from framework.query import BY_KEY, Condition, Sort
from framework.readmodel import ReadModel
from framework.settings import PostgresSettings
from framework.staging import RowCache, StagedBatch, StagedViews
from framework.views import Batch, DeadLetter, ProjectionState, Views

__all__ = ["PostgresViewStore"]

R = TypeVar("R", bound=ReadModel)
Conn = Connection[dict[str, Any]]

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.eventfold_projection_active (
    name text PRIMARY KEY, version int NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.eventfold_projection_positions (
    name text NOT NULL, version int NOT NULL, position bigint NOT NULL DEFAULT 0,
    last_event_at timestamptz, state text NOT NULL DEFAULT 'stopped', error text,
    updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS {s}.eventfold_dead_letters (
    id bigserial PRIMARY KEY, projection text NOT NULL, version int NOT NULL,
    position bigint NOT NULL, event_name text NOT NULL, aggregate_id text NOT NULL,
    error text NOT NULL, failed_at timestamptz NOT NULL DEFAULT now(),
    retry_requested boolean NOT NULL DEFAULT false);
"""


class _Tables:
    """Names and statements of one projection version's tables."""

    def __init__(self, schema: str, name: str, version: int) -> None:
        self.schema, self.prefix = schema, f"rm_{name}_v{version}_"
        self._statements: dict[type[ReadModel], dict[str, Any]] = {}

    def ident(self, model: type[ReadModel]) -> sql.Composed:
        return sql.SQL("{}.{}").format(
            sql.Identifier(self.schema), sql.Identifier(self.prefix + model.table)
        )

    def statements(self, model: type[ReadModel]) -> dict[str, Any]:
        if model not in self._statements:
            self._statements[model] = self._build(model)
        return self._statements[model]

    def _build(self, model: type[ReadModel]) -> dict[str, Any]:
        """Row statements; bulk ones take one array per column (``unnest``), one statement a batch."""
        table = self.ident(model)
        definitions = column_definitions(model)
        columns = [name for name, _, _ in definitions]
        kinds = {name: kind for name, kind, _ in definitions}
        key_match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in model.key)
        updates = [c for c in columns if c not in model.key] or list(model.key)

        def upsert(arrays: sql.Composed) -> sql.Composed:
            return sql.SQL(
                "INSERT INTO {t} ({c}) SELECT * FROM unnest({arrays}) ON CONFLICT ({k}) DO UPDATE SET {u}"
            ).format(
                t=table,
                c=sql.SQL(", ").join(map(sql.Identifier, columns)),
                arrays=arrays,
                k=sql.SQL(", ").join(map(sql.Identifier, model.key)),
                u=sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in updates),
            )

        def delete(arrays: sql.Composed) -> sql.Composed:
            return sql.SQL("DELETE FROM {t} WHERE ({k}) IN (SELECT * FROM unnest({arrays}))").format(
                t=table, k=sql.SQL(", ").join(map(sql.Identifier, model.key)), arrays=arrays
            )

        jsonb = frozenset(n for n, kind in kinds.items() if kind == "jsonb")
        return {
            "select": sql.SQL("SELECT * FROM {} WHERE {}").format(table, key_match),
            "delete": delete(_arrays(model.key, kinds)),
            "upsert": upsert(_arrays(columns, kinds)),
            # The same with binary arrays (%b): less to format and parse; used when every column's
            # values are of one Python type (see _binary_ok), else the text form above.
            "delete_binary": delete(_binary_arrays(model.key, kinds)),
            "upsert_binary": upsert(_binary_arrays(columns, kinds)),
            "jsonb": jsonb,
            "values": None if jsonb else _values_getter(columns),
            "order": sql.SQL(", ").join(map(sql.Identifier, model.key)),
        }

    def create(self, model: type[ReadModel]) -> list[sql.Composed]:
        table = self.ident(model)
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}{}").format(
                sql.Identifier(name), sql.SQL(kind), sql.SQL("" if nullable else " NOT NULL")
            )
            for name, kind, nullable in column_definitions(model)
        )
        key = sql.SQL(", ").join(map(sql.Identifier, model.key))
        create = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))")
        statements = [create.format(table, columns, key)]
        for index in model.indexes:
            index_name = f"{self.prefix}{model.table}_{'_'.join(index)}_idx"[:63]
            statements.append(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    sql.Identifier(index_name), table, sql.SQL(", ").join(map(sql.Identifier, index))
                )
            )
        return statements


class _Source:
    def __init__(self, conn: Conn, tables: _Tables) -> None:
        self._conn, self._tables = conn, tables

    def load(self, model: type[R], key: tuple[Any, ...]) -> R | None:
        row = self._conn.execute(self._tables.statements(model)["select"], key, prepare=True).fetchone()
        return model.model_validate(row) if row else None

    def load_where(self, model: type[R], equal: dict[str, Any]) -> list[R]:
        return _load_where(self._conn, self._tables, model, equal)


class _PooledSource:
    """Reads committed rows on a pooled connection per call: for staged batches."""

    def __init__(self, store: PostgresViewStore, tables: _Tables) -> None:
        self._store, self._tables = store, tables

    def load(self, model: type[R], key: tuple[Any, ...]) -> R | None:
        with self._store._connection() as conn:
            return _Source(conn, self._tables).load(model, key)

    def load_where(self, model: type[R], equal: dict[str, Any]) -> list[R]:
        with self._store._connection() as conn:
            return _load_where(conn, self._tables, model, equal)


def _load_where(conn: Conn, tables: _Tables, model: type[R], equal: dict[str, Any]) -> list[R]:
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in equal)
    query = sql.SQL("SELECT * FROM {}{}{} ORDER BY {}").format(
        tables.ident(model),
        sql.SQL(" WHERE ") if equal else sql.SQL(""),
        where if equal else sql.SQL(""),
        tables.statements(model)["order"],
    )
    return [model.model_validate(r) for r in conn.execute(query, list(equal.values()))]


class _PostgresBatch(StagedBatch):
    def __init__(self, source: _Source | _PooledSource, tables: _Tables, cache: RowCache | None) -> None:
        super().__init__(source, cache)
        self.tables = tables

    def flush(self, conn: Conn) -> None:
        deletes: dict[type[ReadModel], list[tuple[Any, ...]]] = defaultdict(list)
        upserts: dict[type[ReadModel], list[ReadModel]] = defaultdict(list)
        for model, key, row in self.changes():
            if row is None:
                deletes[model].append(key)
            else:
                upserts[model].append(row)
        with conn.cursor() as cursor:
            for model, keys in deletes.items():
                statements = self.tables.statements(model)
                columns = _columns(keys)
                binary = _binary_ok(columns)
                cursor.execute(statements["delete_binary" if binary else "delete"], columns)
            for model, rows in upserts.items():
                statements = self.tables.statements(model)
                columns = _row_columns(rows, statements)
                binary = _binary_ok(columns)
                cursor.execute(statements["upsert_binary" if binary else "upsert"], columns)


class PostgresViewStore:
    def __init__(self, settings: PostgresSettings, *, cache_rows: int = 100_000) -> None:
        self._schema = settings.schema
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            kwargs={
                "host": settings.host, "port": settings.port, "dbname": settings.dbname,
                "user": settings.user, "password": settings.password, "row_factory": dict_row,
                "autocommit": True, "connect_timeout": max(1, round(settings.connect_timeout)),
            },
            min_size=1, max_size=max(2, settings.pool_size), timeout=settings.connect_timeout,
            open=False,
        )
        self._cache_rows = cache_rows
        self._caches: dict[tuple[str, int], RowCache] = {}
        self._active_cache: dict[str, tuple[int, float]] = {}
        self._s = sql.Identifier(self._schema)

    @contextmanager
    def _connection(self) -> Iterator[Conn]:
        try:
            self._pool.open(wait=False)
            with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise StoreUnavailable(f"the read-model database is unavailable ({first})") from e

    def _table(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(self._s, sql.Identifier(name))

    def create_schema(self) -> None:
        with self._connection() as conn:
            conn.execute(_SCHEMA.format(s=sql.Identifier(self._schema).as_string(conn)).encode())

    def ensure_tables(self, name: str, version: int, models: Sequence[type[ReadModel]]) -> None:
        tables = _Tables(self._schema, name, version)
        with self._connection() as conn, conn.transaction():
            for model in models:
                for statement in tables.create(model):
                    conn.execute(statement)
            conn.execute(
                sql.SQL("INSERT INTO {} (name, version) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
                    self._table("eventfold_projection_active")), (name, version))
            conn.execute(
                sql.SQL("INSERT INTO {} (name, version) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
                    self._table("eventfold_projection_positions")), (name, version))

    def drop_tables(self, name: str, version: int, models: Sequence[type[ReadModel]]) -> None:
        tables = _Tables(self._schema, name, version)
        with self._connection() as conn, conn.transaction():
            for model in models:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(tables.ident(model)))
            conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s AND version = %s").format(
                self._table("eventfold_projection_positions")), (name, version))
        self._caches.pop((name, version), None)

    def active_version(self, name: str) -> int:
        with self._connection() as conn:
            row = conn.execute(sql.SQL("SELECT version FROM {} WHERE name = %s").format(
                self._table("eventfold_projection_active")), (name,)).fetchone()
        return int(row["version"]) if row else 1

    def position(self, name: str, version: int) -> int:
        with self._connection() as conn:
            row = conn.execute(sql.SQL("SELECT position FROM {} WHERE name = %s AND version = %s").format(
                self._table("eventfold_projection_positions")), (name, version)).fetchone()
        return int(row["position"]) if row else 0

    @contextmanager
    def batch(self, name: str, version: int, *, follow_active: bool = True) -> Iterator[Batch]:
        with self._transaction(name, version, lock="SHARE") as (conn, batch, active):
            if follow_active and active != version:
                raise VersionSwitched(f"{name} now serves version {active}")
            yield batch
            self._commit(conn, name, version, batch)

    @contextmanager
    def switch(self, name: str, version: int) -> Iterator[Batch]:
        with self._transaction(name, version, lock="UPDATE") as (conn, batch, _):
            yield batch
            self._commit(conn, name, version, batch)
            conn.execute(sql.SQL("UPDATE {} SET version = %s WHERE name = %s").format(
                self._table("eventfold_projection_active")), (version, name))

    @contextmanager
    def _transaction(
        self, name: str, version: int, *, lock: str
    ) -> Iterator[tuple[Conn, _PostgresBatch, int]]:
        cache = self._caches.setdefault((name, version), RowCache(self._cache_rows))
        with self._connection() as conn:
            tables = _Tables(self._schema, name, version)
            batch = _PostgresBatch(_Source(conn, tables), tables, cache)
            try:
                with conn.transaction():
                    row = conn.execute(
                        sql.SQL("SELECT version FROM {} WHERE name = %s FOR " + lock).format(
                            self._table("eventfold_projection_active")), (name,)).fetchone()
                    yield conn, batch, int(row["version"]) if row else version
            except BaseException:
                cache.clear()  # rows read in a rolled-back batch may include its own changes
                raise
            batch.publish()

    def stage(self, name: str, version: int) -> Batch:
        cache = self._caches.setdefault((name, version), RowCache(self._cache_rows))
        tables = _Tables(self._schema, name, version)
        return _PostgresBatch(_PooledSource(self, tables), tables, cache)

    def commit_staged(self, name: str, version: int, batch: Batch, *, follow_active: bool = True) -> None:
        assert isinstance(batch, _PostgresBatch)
        with self._connection() as conn, conn.transaction():
            row = conn.execute(sql.SQL("SELECT version FROM {} WHERE name = %s FOR SHARE").format(
                self._table("eventfold_projection_active")), (name,)).fetchone()
            if follow_active and row and row["version"] != version:
                raise VersionSwitched(f"{name} now serves version {row['version']}")
            self._commit(conn, name, version, batch)

    def forget_cached(self, name: str, version: int) -> None:
        self._caches.pop((name, version), None)

    def cache_empty_tables(self, name: str, version: int, models: Sequence[type[ReadModel]]) -> None:
        """Start the version's row cache knowing which of its tables are empty (a rebuild's fresh
        tables): until the cache loses track of a model's rows, "no such row" needs no query."""
        tables = _Tables(self._schema, name, version)
        with self._connection() as conn:
            empty = [model for model in models if conn.execute(
                sql.SQL("SELECT NOT EXISTS (SELECT FROM {}) AS empty").format(tables.ident(model))
            ).fetchone()["empty"]]  # type: ignore[index]
        self._caches[(name, version)] = RowCache(self._cache_rows, complete=empty)

    def _commit(self, conn: Conn, name: str, version: int, batch: _PostgresBatch) -> None:
        batch.flush(conn)
        positions = self._table("eventfold_projection_positions")
        if batch.position is not None:
            advance = sql.SQL(
                "UPDATE {} SET position = %s, last_event_at = coalesce(%s, last_event_at),"
                " updated_at = now() WHERE name = %s AND version = %s AND position < %s"
            )
            moved = conn.execute(
                advance.format(positions),
                (batch.position, batch.event_time, name, version, batch.position),
            ).rowcount
            if moved != 1:
                raise ConcurrencyConflict(f"{name} v{version} was advanced by another worker")
        letters = self._table("eventfold_dead_letters")
        for letter in batch.letters:
            conn.execute(sql.SQL("INSERT INTO {} (projection, version, position, event_name, aggregate_id,"
                                 " error) VALUES (%s, %s, %s, %s, %s, %s)").format(letters),
                         (letter.projection, version, letter.position, letter.event_name,
                          letter.aggregate_id, letter.error))
        for letter_id in batch.settled:
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(letters), (letter_id,))

    def set_state(self, name: str, version: int, state: str, error: str | None = None) -> None:
        with self._connection() as conn:
            conn.execute(sql.SQL("UPDATE {} SET state = %s, error = %s, updated_at = now()"
                                 " WHERE name = %s AND version = %s").format(
                self._table("eventfold_projection_positions")), (state, error, name, version))

    def states(self) -> list[ProjectionState]:
        with self._connection() as conn:
            rows = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY name, version").format(
                self._table("eventfold_projection_positions"))).fetchall()
        return [ProjectionState(r["name"], r["version"], r["position"], r["state"], r["error"],
                                r["last_event_at"], r["updated_at"]) for r in rows]

    def dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        with self._connection() as conn:
            rows = conn.execute(sql.SQL("SELECT * FROM {} WHERE %s::text IS NULL OR projection = %s"
                                        " ORDER BY id").format(self._table("eventfold_dead_letters")),
                                (name, name)).fetchall()
        return [_letter(r) for r in rows]

    def discard_dead_letter(self, letter_id: int) -> bool:
        with self._connection() as conn:
            return conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(
                self._table("eventfold_dead_letters")), (letter_id,)).rowcount == 1

    def request_retry(self, letter_id: int) -> bool:
        with self._connection() as conn:
            return conn.execute(sql.SQL("UPDATE {} SET retry_requested = true WHERE id = %s").format(
                self._table("eventfold_dead_letters")), (letter_id,)).rowcount == 1

    def retry_requests(self, name: str) -> list[DeadLetter]:
        with self._connection() as conn:
            rows = conn.execute(sql.SQL("SELECT * FROM {} WHERE projection = %s AND retry_requested"
                                        " ORDER BY id").format(self._table("eventfold_dead_letters")),
                                (name,)).fetchall()
        return [_letter(r) for r in rows]

    def settle_dead_letter(self, batch: Batch, letter_id: int) -> None:
        assert isinstance(batch, _PostgresBatch)
        batch.settled.append(letter_id)

    @contextmanager
    def read(self, name: str) -> Iterator[Views]:
        version = self.active_version(name)
        with self._connection() as conn:
            yield StagedViews(_Source(conn, _Tables(self._schema, name, version)))

    def query(
        self,
        name: str,
        model: type[R],
        where: Sequence[Condition] = (),
        sort: Sort = BY_KEY,
        *,
        after: tuple[Any, ...] | None = None,
        limit: int | None = None,
    ) -> list[R]:
        version = self._active_version_cached(name)
        tables = _Tables(self._schema, name, version)
        statement, params = _select(tables, model, where, sort, after, limit)
        with self._connection() as conn:
            return [model.model_validate(r) for r in conn.execute(statement, params, prepare=True)]

    def get_many(self, name: str, model: type[R], keys: Sequence[tuple[Any, ...]]) -> list[R | None]:
        if not keys:
            return []
        statement = self._get_many_statement(name, self._active_version_cached(name), model)
        with self._connection() as conn:
            rows = [model.model_validate(r) for r in conn.execute(statement, _columns(keys), prepare=True)]
        by_key = {row.key_values(): row for row in rows}
        return [by_key.get(tuple(key)) for key in keys]

    def active_position(self, name: str) -> int:
        return self.position(name, self.active_version(name))

    @functools.lru_cache(maxsize=256)  # noqa: B019 - statements live as long as the store
    def _get_many_statement(self, name: str, version: int, model: type[ReadModel]) -> bytes:
        tables = _Tables(self._schema, name, version)
        kinds = {n: k for n, k, _ in column_definitions(model)}
        statement = sql.SQL("SELECT * FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))").format(
            tables.ident(model), sql.SQL(", ").join(map(sql.Identifier, model.key)),
            _arrays(model.key, kinds),
        )
        return statement.as_bytes(None)

    def _active_version_cached(self, name: str) -> int:
        """Queries look the active version up at most once a second: a switch shows within one."""
        now = time.monotonic()
        cached = self._active_cache.get(name)
        if cached is None or now - cached[1] > 1.0:
            cached = (self.active_version(name), now)
            self._active_cache[name] = cached
        return cached[0]

    def close(self) -> None:
        self._pool.close()


_OPERATORS = {"eq": "=", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def _select(
    tables: _Tables,
    model: type[ReadModel],
    where: Sequence[Condition],
    sort: Sort,
    after: tuple[Any, ...] | None,
    limit: int | None,
) -> tuple[sql.Composed, list[Any]]:
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    for condition in where:
        column = sql.Identifier(condition.column)
        if condition.operator == "in":
            clauses.append(sql.SQL("{} = ANY(%s)").format(column))
            params.append(list(condition.value))
        else:
            clauses.append(sql.SQL("{} {} %s").format(column, sql.SQL(_OPERATORS[condition.operator])))
            params.append(condition.value.value if isinstance(condition.value, Enum) else condition.value)
    columns = sort.columns(model)
    if after is not None:
        clauses.append(sql.SQL("({}) {} ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL("<" if sort.descending else ">"),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        ))
        params.extend(after)
    direction = sql.SQL(" DESC" if sort.descending else " ASC")
    statement = sql.SQL("SELECT * FROM {}{}{} ORDER BY {}").format(
        tables.ident(model),
        sql.SQL(" WHERE ") if clauses else sql.SQL(""),
        sql.SQL(" AND ").join(clauses),
        sql.SQL(", ").join(sql.Composed([sql.Identifier(c), direction]) for c in columns),
    )
    if limit is not None:
        statement += sql.SQL(" LIMIT %s")
        params.append(limit)
    return statement, params


def _arrays(columns: Sequence[str], kinds: dict[str, str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(kinds[c])) for c in columns)


def _binary_arrays(columns: Sequence[str], kinds: dict[str, str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("%b::{}[]").format(sql.SQL(kinds[c])) for c in columns)


def _values_getter(columns: Sequence[str]) -> Callable[[ReadModel], tuple[Any, ...]]:
    """A row's values in column order, as one tuple (one C call)."""
    if len(columns) == 1:
        column = operator.attrgetter(columns[0])
        return lambda row: (column(row),)
    return operator.attrgetter(*columns)


def _row_columns(rows: Sequence[ReadModel], statements: dict[str, Any]) -> list[list[Any]]:
    """Rows as one list per column, as ``to_parameters`` makes them. Rows without jsonb columns
    are read with one ``attrgetter``; a column holding enums converts them like ``to_parameters``."""
    getter = statements["values"]
    if getter is None:
        return _columns([to_parameters(row, statements["jsonb"]) for row in rows])
    columns = _columns(list(map(getter, rows)))
    for i, column in enumerate(columns):
        if any(issubclass(t, Enum) for t in set(map(type, column))):
            columns[i] = [v.value if isinstance(v, Enum) else v for v in column]
    return columns


def _binary_ok(columns: Sequence[Sequence[Any]]) -> bool:
    """Whether binary arrays can carry these columns: psycopg dumps a list with the dumper of
    one Python type, so every column's values (besides None) must be of one type; datetimes
    must also be all naive or all aware (text arrays accept a mix, binary ones do not)."""
    for column in columns:
        types = set(map(type, column))
        types.discard(type(None))
        if len(types) > 1:
            return False
        if types and issubclass(next(iter(types)), datetime) and len(
            {v.tzinfo is None for v in column if v is not None}
        ) > 1:
            return False
    return True


def _columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows to one list per column, the shape ``unnest`` takes."""
    return [list(column) for column in zip(*rows, strict=True)]


def _letter(row: dict[str, Any]) -> DeadLetter:
    return DeadLetter(row["projection"], row["position"], row["event_name"], row["aggregate_id"],
                      row["error"], row["id"], row["failed_at"])
