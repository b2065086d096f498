"""Read models in PostgreSQL: typed tables per projection version, positions and dead letters.

A batch is one transaction: the staged row changes are flushed in bulk
(executemany, pipelined by psycopg), the projection's position is advanced
with a guard (it only moves forward), and both commit together.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import operator
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import date, datetime
from enum import Enum
from typing import Any, TypeVar, cast

import psycopg
from psycopg import AsyncConnection, Connection, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from framework.adapters.pg_arrays import packed
from framework.adapters.pg_columns import column_definitions, sql_type, to_parameters, unwrap
from framework.adapters.pg_pool import PgPool, went_away_async
from framework.errors import ConcurrencyConflict, ConfigurationError, RowRejected, StoreUnavailable, VersionSwitched
from framework.positions import PositionChange, RowValues, Touched, described
from framework.query import BY_KEY, Condition, Sort, check_conditions
from framework.readmodel import ReadModel
from framework.settings import PostgresSettings
from framework.staging import RowCache, StagedBatch, StagedViews
from framework.views import (
    Batch,
    DeadLetter,
    Deadline,
    LeaseState,
    OutboxEntry,
    OutboxStats,
    PartitionState,
    ProjectionState,
    Views,
)

__all__ = ["PostgresViewStore", "parse_notice", "position_channel", "position_notice"]

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
ALTER TABLE {s}.eventfold_dead_letters ADD COLUMN IF NOT EXISTS command jsonb;
CREATE TABLE IF NOT EXISTS {s}.eventfold_outbox (
    id bigserial PRIMARY KEY, projection text NOT NULL, key text NOT NULL UNIQUE, command_name text NOT NULL,
    payload jsonb NOT NULL, ordering_key text NOT NULL, position bigint NOT NULL, context jsonb NOT NULL,
    attempts int NOT NULL DEFAULT 0, next_attempt_at timestamptz, last_error text,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS eventfold_outbox_projection_idx ON {s}.eventfold_outbox (projection, id);
CREATE TABLE IF NOT EXISTS {s}.eventfold_deadlines (
    id bigserial PRIMARY KEY, projection text NOT NULL, key text NOT NULL, name text NOT NULL,
    due_at timestamptz NOT NULL, position bigint NOT NULL, data jsonb NOT NULL,
    attempts int NOT NULL DEFAULT 0, UNIQUE (projection, key));
CREATE TABLE IF NOT EXISTS {s}.eventfold_projection_leases (
    name text PRIMARY KEY, owner text NOT NULL, expires_at timestamptz NOT NULL, progress_at timestamptz);
CREATE TABLE IF NOT EXISTS {s}.eventfold_partition_positions (
    name text NOT NULL, version int NOT NULL, partition int NOT NULL, partitions int NOT NULL,
    position bigint NOT NULL DEFAULT 0, last_event_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (name, version, partition));
"""

# A version's position: the lowest of its partitions' when it is partitioned, else its own row's.
_POSITION = """
SELECT coalesce((SELECT min(position) FROM {pp} WHERE name = %(name)s AND version = %(version)s),
                (SELECT position FROM {p} WHERE name = %(name)s AND version = %(version)s), 0) AS position
"""

def position_channel(schema: str) -> str:
    """The NOTIFY channel of a schema's projection positions: one per schema, so that stores (and
    parallel test runs) in one database do not hear each other. At most 63 bytes, PostgreSQL's limit."""
    channel = f"eventfold_positions.{schema}"
    if len(channel.encode()) <= 63:
        return channel
    return f"eventfold_positions.{hashlib.sha256(schema.encode()).hexdigest()[:40]}"


_MAX_NOTICE = 7_900  # PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more


def position_notice(name: str, version: int, position: int, *, switched: bool = False,
                    touched: Touched | None = None, rows: RowValues | None = None) -> str:
    """The payload announcing a committed position: ``version position flag name``, then on a second
    line the keys of the rows the batch changed, as JSON by table, when they fit (else: not known), and
    on a third the new values of those rows (``rows``), when they fit too: by table, the columns' names
    then each row's values (null: deleted), in the order of the keys."""
    head = f"{version} {position} {'s' if switched else '-'} {name}"
    if touched is None:
        return head  # (a batch that changed no row says so with "{}": listeners keep what they hold)
    ordered = {table: sorted(found) for table, found in touched.items()}
    keys = json.dumps({table: list(map(list, found)) for table, found in ordered.items()},
                      separators=(",", ":"), ensure_ascii=False)
    if len(head.encode()) + len(keys.encode()) + 1 > _MAX_NOTICE:
        return head
    values = _values_line(ordered, rows)
    if values is not None and len(head.encode()) + len(keys.encode()) + len(values.encode()) + 2 <= _MAX_NOTICE:
        return f"{head}\n{keys}\n{values}"
    return f"{head}\n{keys}"


def _values_line(ordered: Mapping[str, list[tuple[str, ...]]], rows: RowValues | None) -> str | None:
    if rows is None or any(key not in rows.get(table, {}) for table, found in ordered.items() for key in found):
        return None
    by_table: dict[str, list[Any]] = {}
    for table, found in ordered.items():
        changed = [rows[table][key] for key in found]
        columns = next((list(row) for row in changed if row is not None), [])
        by_table[table] = [columns, *(None if row is None else [row.get(c) for c in columns] for row in changed)]
    return json.dumps(by_table, separators=(",", ":"), ensure_ascii=False)


def parse_notice(payload: str) -> PositionChange | None:
    """The change a payload announces; None for one this version cannot read."""
    head, _, rest = payload.partition("\n")
    keys, _, values = rest.partition("\n")
    parts = head.split(" ", 3)
    if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    touched = _parse_touched(keys) if keys else None
    return PositionChange(parts[3], int(parts[0]), int(parts[1]), switched=parts[2] == "s", touched=touched,
                          rows=_parse_values(keys, values) if values and touched is not None else None)


def _parse_touched(text: str) -> Touched | None:
    try:
        found = json.loads(text)
        return {str(table): frozenset(tuple(str(v) for v in key) for key in keys) for table, keys in found.items()}
    except (ValueError, TypeError, AttributeError):
        return None


def _row(columns: list[str], values: list[Any] | None) -> dict[str, Any] | None:
    return None if values is None else dict(zip(columns, values, strict=True))


def _parse_values(keys_text: str, values_text: str) -> RowValues | None:
    """The third line, by table and key (None when it does not match the keys: nothing is known)."""
    try:
        keys, values = json.loads(keys_text), json.loads(values_text)
        parsed: dict[str, dict[tuple[str, ...], dict[str, Any] | None]] = {}
        for table, found in keys.items():
            columns, *changed = values[table]
            if len(changed) != len(found):
                return None
            parsed[str(table)] = {tuple(str(v) for v in key): _row(columns, row)
                                  for key, row in zip(found, changed, strict=True)}
        return parsed
    except (ValueError, TypeError, AttributeError, KeyError):
        return None


# Take the lease if it is free, expired or ours; renew it if ours. No row back: another owner holds it.
_ACQUIRE = """
INSERT INTO {t} AS l (name, owner, expires_at, progress_at)
VALUES (%(name)s, %(owner)s, clock_timestamp() + %(ttl)s * interval '1 second', clock_timestamp())
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at,
    progress_at = CASE WHEN l.owner = excluded.owner AND NOT %(progressed)s THEN l.progress_at
                       ELSE excluded.progress_at END
WHERE l.owner = excluded.owner OR l.expires_at < clock_timestamp()
RETURNING owner
"""

# A new state is news; a new error message in the same state (another failed retry) is not progress.
_SET_STATE = ("state = %(state)s, error = %(error)s,"
              " updated_at = CASE WHEN state = %(state)s THEN updated_at ELSE now() END")


class _Tables:
    """Names and statements of one projection version's tables."""

    def __init__(self, schema: str, name: str, version: int) -> None:
        self.schema, self.prefix = schema, f"rm_{name}_v{version}_"
        self._statements: dict[type[ReadModel], dict[str, Any]] = {}
        self._where: dict[tuple[type[ReadModel], tuple[str, ...]], bytes] = {}

    def ident(self, model: type[ReadModel]) -> sql.Composed:
        return sql.SQL("{}.{}").format(
            sql.Identifier(self.schema), sql.Identifier(self.prefix + model.table)
        )

    def statements(self, model: type[ReadModel]) -> dict[str, Any]:
        if model not in self._statements:
            self._statements[model] = self._build(model)
        return self._statements[model]

    def where(self, model: type[ReadModel], columns: tuple[str, ...]) -> bytes:
        """The rows whose ``columns`` equal as many parameters, in key order; composed once per shape."""
        found = self._where.get((model, columns))
        if found is None:
            match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in columns)
            found = self._where[(model, columns)] = sql.SQL("SELECT * FROM {}{}{} ORDER BY {}").format(
                self.ident(model), sql.SQL(" WHERE " if columns else ""), match if columns else sql.SQL(""),
                self.statements(model)["order"]).as_bytes(None)
        return found

    def _build(self, model: type[ReadModel]) -> dict[str, Any]:
        """Row statements, composed once (as bytes: composing costs more than a short statement); bulk ones
        take one array per column (``unnest``), one statement a batch."""
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

        def insert(arrays: sql.Composed) -> sql.Composed:
            return sql.SQL("INSERT INTO {t} ({c}) SELECT * FROM unnest({arrays})").format(
                t=table, c=sql.SQL(", ").join(map(sql.Identifier, columns)), arrays=arrays)

        def delete(arrays: sql.Composed) -> sql.Composed:
            return sql.SQL("DELETE FROM {t} WHERE ({k}) IN (SELECT * FROM unnest({arrays}))").format(
                t=table, k=sql.SQL(", ").join(map(sql.Identifier, model.key)), arrays=arrays
            )

        jsonb = frozenset(n for n, kind in kinds.items() if kind == "jsonb")
        return {
            "select": sql.SQL("SELECT * FROM {} WHERE {}").format(table, key_match).as_bytes(None),
            "delete": delete(_arrays(model.key, kinds)).as_bytes(None),
            "upsert": upsert(_arrays(columns, kinds)).as_bytes(None),
            "insert": insert(_arrays(columns, kinds)).as_bytes(None),
            # The same with binary arrays (%b): less to format and parse; used when every column's
            # values are of one Python type (see _binary_ok), else the text form above.
            "delete_binary": delete(_binary_arrays(model.key, kinds)).as_bytes(None),
            "upsert_binary": upsert(_binary_arrays(columns, kinds)).as_bytes(None),
            "insert_binary": insert(_binary_arrays(columns, kinds)).as_bytes(None),
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
        create = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({})){}")
        storage = sql.SQL("") if model.fillfactor is None else sql.SQL(" WITH (fillfactor = {})").format(
            sql.Literal(model.fillfactor))
        statements = [create.format(table, columns, key, storage)]
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
        row = self._conn.execute(self._tables.statements(model)["select"], [_param(v) for v in key],
                                 prepare=True).fetchone()
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
    query = tables.where(model, tuple(equal))
    return [model.model_validate(r) for r in conn.execute(query, [_param(v) for v in equal.values()])]


class _PostgresBatch(StagedBatch):
    def __init__(self, source: _Source | _PooledSource, tables: _Tables, cache: RowCache | None,
                 updating: set[type[ReadModel]] | None = None) -> None:
        super().__init__(source, cache)
        self.tables = tables
        self.partition: int | None = None  # whose position ``advance`` moves (None: the version's own)
        # The version's models whose puts have met rows already stored (shared by its batches): upserted.
        # The others' rows are inserted first, upserted only if one is there (see ``_inserted``).
        self.updating = updating if updating is not None else set()

    def flush(self, conn: Conn) -> None:
        deletes, upserts = self.grouped_changes()
        pack = _packer(conn)
        with conn.cursor() as cursor:
            for model, keys in deletes.items():
                columns = _columns([[_param(v) for v in key] for key in keys])  # enum members as stored
                _execute_bulk(cursor, self.tables.statements(model), "delete", columns, pack)
            for model, rows in upserts.items():
                statements = self.tables.statements(model)
                columns = _row_columns(rows, statements)
                if model in self.updating:
                    _execute_bulk(cursor, statements, "upsert", columns, pack)
                elif not _inserted(conn, cursor, statements, columns, pack):
                    self.updating.add(model)
                    _execute_bulk(cursor, statements, "upsert", columns, pack)


def _inserted(conn: Conn, cursor: psycopg.Cursor[Any], statements: dict[str, Any], columns: list[list[Any]],
              pack: Callable[[list[list[Any]]], list[Any]]) -> bool:
    """Rows inserted as new, or False (nothing written) when a key is already stored. Why: a plain INSERT
    costs PostgreSQL about a quarter less per row than ``ON CONFLICT DO UPDATE`` (no conflict probe, no
    speculative insertion), and rows of a fresh version's tables (a replay) or of a history are all new.
    A savepoint undoes the attempt alone; any other error is the row's, raised as the upsert raises it."""
    try:
        with conn.transaction():
            _execute_bulk(cursor, statements, "insert", columns, pack)
    except psycopg.errors.UniqueViolation:
        return False
    return True


def _execute_bulk(cursor: psycopg.Cursor[Any], statements: dict[str, Any], kind: str, columns: list[list[Any]],
                  pack: Callable[[list[list[Any]]], list[Any]]) -> None:
    """One statement for a model's deletes or upserts: binary arrays when every column's values share
    one type (see _binary_ok), else the text form."""
    if _binary_ok(columns):
        cursor.execute(statements[f"{kind}_binary"], pack(columns))
    else:
        cursor.execute(statements[kind], columns)


class PostgresViewStore:
    def __init__(self, settings: PostgresSettings, *, cache_rows: int = 100_000) -> None:
        self._schema = settings.schema
        self._pool = PgPool(settings, name="eventfold-views", min_size=1, max_size=max(2, settings.pool_size))
        self._cache_rows = cache_rows
        self._code_point_order: bool | None = None
        self._caches: dict[tuple[str, int], RowCache] = {}
        self._updating: dict[tuple[str, int], set[type[ReadModel]]] = {}  # see _PostgresBatch.updating
        self._active_cache: dict[str, tuple[int, float]] = {}
        self._s = sql.Identifier(self._schema)
        self.channel = position_channel(self._schema)
        self._settings = settings
        self._async: AsyncConnection[Any] | None = None  # active_positions_async's own connection
        self._rows_async = _AsyncConnections(  # get_many_async's and query_async's
            self._connect_async, max(2, settings.pool_size), settings.connect_timeout)
        self._async_lock: asyncio.Lock | None = None

    @contextmanager
    def _connection(self) -> Iterator[Conn]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise StoreUnavailable(f"the read-model database is unavailable ({first})") from e

    def _table(self, name: str) -> sql.Composed:
        return sql.SQL("{}.{}").format(self._s, sql.Identifier(name))

    @functools.lru_cache(maxsize=256)  # noqa: B019 - statements live as long as the store
    def _sql(self, text: str, *tables: str) -> bytes:
        """``text`` with its ``{}`` filled by this schema's ``tables``, composed once: a worker commits many
        small batches, and composing a statement costs more than running a short one."""
        return sql.SQL(text).format(*map(self._table, tables)).as_bytes(None)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - as long as the store: each version's statements built once
    def _tables(self, name: str, version: int) -> _Tables:
        return _Tables(self._schema, name, version)

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
            for table in ("eventfold_projection_positions", "eventfold_partition_positions"):
                conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s AND version = %s").format(
                    self._table(table)), (name, version))
        self._caches.pop((name, version), None)
        self._updating.pop((name, version), None)

    def copy_version(self, name: str, source: int, target: int, models: Sequence[type[ReadModel]]) -> int:
        """In the database (no row passes through Python), in one REPEATABLE READ transaction: the rows
        and the position it copies are one snapshot, and it blocks no worker."""
        old, new = _Tables(self._schema, name, source), _Tables(self._schema, name, target)
        with self._connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for model in models:
                columns = sql.SQL(", ").join(sql.Identifier(c) for c, _, _ in column_definitions(model))
                conn.execute(sql.SQL("DELETE FROM {}").format(new.ident(model)))
                conn.execute(sql.SQL("INSERT INTO {} ({c}) SELECT {c} FROM {}").format(
                    new.ident(model), old.ident(model), c=columns))
            row = conn.execute(sql.SQL(
                "UPDATE {p} AS t SET position = s.position, last_event_at = s.last_event_at, updated_at = now()"
                " FROM {p} AS s WHERE t.name = %(name)s AND t.version = %(target)s"
                " AND s.name = %(name)s AND s.version = %(source)s RETURNING t.position").format(
                    p=self._table("eventfold_projection_positions")),
                {"name": name, "source": source, "target": target}).fetchone()
            self._copy_partitions(conn, name, source, target)
        self._caches.pop((name, target), None)
        return int(row["position"]) if row else 0

    def active_version(self, name: str) -> int:
        with self._connection() as conn:
            row = conn.execute(sql.SQL("SELECT version FROM {} WHERE name = %s").format(
                self._table("eventfold_projection_active")), (name,)).fetchone()
        version = int(row["version"]) if row else 1
        self.note_active_version(name, version)
        return version

    def note_active_version(self, name: str, version: int) -> None:
        """What queries read from now on: a version read (or heard switched in) just now. Only a newer
        version replaces a remembered one: a read that started before a switch may end after it."""
        cached = self._active_cache.get(name)
        if cached is None or version >= cached[0]:
            self._active_cache[name] = (version, time.monotonic())

    def _copy_partitions(self, conn: Conn, name: str, source: int, target: int) -> None:
        partitions = self._table("eventfold_partition_positions")
        conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s AND version = %s").format(partitions), (name, target))
        conn.execute(sql.SQL(
            "INSERT INTO {pp} (name, version, partition, partitions, position, last_event_at)"
            " SELECT name, %(target)s, partition, partitions, position, last_event_at FROM {pp}"
            " WHERE name = %(name)s AND version = %(source)s").format(pp=partitions),
            {"name": name, "source": source, "target": target})

    def position(self, name: str, version: int) -> int:
        with self._connection() as conn:
            return self._lowest(conn, name, version)

    # --- partitions (the optional ``PartitionedViews`` port) ------------------------------------

    def ensure_partitions(self, name: str, version: int, count: int) -> None:
        partitions = self._table("eventfold_partition_positions")
        with self._connection() as conn, conn.transaction():
            conn.execute(sql.SQL("SELECT FROM {} WHERE name = %s FOR UPDATE").format(
                self._table("eventfold_projection_active")), (name,))
            row = conn.execute(sql.SQL("SELECT max(partitions) AS n FROM {} WHERE name = %s AND version = %s").format(
                partitions), (name, version)).fetchone()
            known = int(row["n"]) if row and row["n"] is not None else 0
            if known and known != count:
                raise ConfigurationError(
                    f"{name} v{version} has {known} partitions, not {count}: changing the count takes a replay"
                    f" (`eventfold replay {name}`) with the new count")
            conn.execute(sql.SQL(
                "INSERT INTO {pp} (name, version, partition, partitions, position, last_event_at)"
                " SELECT %(name)s, %(version)s, i, %(count)s, coalesce(p.position, 0), p.last_event_at"
                " FROM generate_series(0, %(count)s - 1) AS i"
                " LEFT JOIN {p} AS p ON p.name = %(name)s AND p.version = %(version)s"
                " ON CONFLICT DO NOTHING").format(pp=partitions, p=self._table("eventfold_projection_positions")),
                {"name": name, "version": version, "count": count})

    def partition_count(self, name: str, version: int) -> int:
        with self._connection() as conn:
            row = conn.execute(sql.SQL("SELECT max(partitions) AS n FROM {} WHERE name = %s AND version = %s").format(
                self._table("eventfold_partition_positions")), (name, version)).fetchone()
        return int(row["n"]) if row and row["n"] is not None else 0

    def partition_position(self, name: str, version: int, index: int) -> int:
        with self._connection() as conn:
            row = conn.execute(sql.SQL(
                "SELECT position FROM {} WHERE name = %s AND version = %s AND partition = %s").format(
                self._table("eventfold_partition_positions")), (name, version, index)).fetchone()
        return int(row["position"]) if row else 0

    @contextmanager
    def partition_batch(self, name: str, version: int, index: int, *, follow_active: bool = True) -> Iterator[Batch]:
        with self._transaction(name, version, lock="SHARE") as (conn, batch, active):
            if follow_active and active != version:
                raise VersionSwitched(f"{name} now serves version {active}")
            batch.partition = index
            yield batch
            self._commit(conn, name, version, batch)

    def commit_staged_partition(self, name: str, version: int, index: int, batch: Batch, *,
                                follow_active: bool = True) -> None:
        assert isinstance(batch, _PostgresBatch)
        batch.partition = index
        self.commit_staged(name, version, batch, follow_active=follow_active)

    def partition_states(self) -> list[PartitionState]:
        with self._connection() as conn:
            rows = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY name, version, partition").format(
                self._table("eventfold_partition_positions"))).fetchall()
        return [PartitionState(r["name"], r["version"], r["partition"], r["partitions"], r["position"],
                               r["last_event_at"], r["updated_at"]) for r in rows]

    def live_leases(self, prefix: str) -> list[LeaseState]:
        with self._connection() as conn:
            rows = conn.execute(sql.SQL(
                "SELECT * FROM {} WHERE starts_with(name, %s) AND expires_at > clock_timestamp() ORDER BY name").format(
                self._table("eventfold_projection_leases")), (prefix,)).fetchall()
        return [LeaseState(r["name"], r["owner"], r["expires_at"], r["progress_at"]) for r in rows]

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
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, position_notice(
                name, version, self._lowest(conn, name, version), switched=True)))

    @contextmanager
    def _transaction(
        self, name: str, version: int, *, lock: str
    ) -> Iterator[tuple[Conn, _PostgresBatch, int]]:
        cache = self._caches.setdefault((name, version), RowCache(self._cache_rows))
        with self._connection() as conn:
            tables = self._tables(name, version)
            batch = _PostgresBatch(_Source(conn, tables), tables, cache, self._updating_models(name, version))
            try:
                with conn.transaction():
                    row = conn.execute(self._sql("SELECT version FROM {} WHERE name = %s FOR " + lock,
                                                 "eventfold_projection_active"), (name,)).fetchone()
                    yield conn, batch, int(row["version"]) if row else version
            except BaseException:
                cache.clear()  # rows read in a rolled-back batch may include its own changes
                raise
            batch.publish()

    def stage(self, name: str, version: int) -> Batch:
        cache = self._caches.setdefault((name, version), RowCache(self._cache_rows))
        tables = self._tables(name, version)
        return _PostgresBatch(_PooledSource(self, tables), tables, cache, self._updating_models(name, version))

    def _updating_models(self, name: str, version: int) -> set[type[ReadModel]]:
        return self._updating.setdefault((name, version), set())

    def commit_staged(self, name: str, version: int, batch: Batch, *, follow_active: bool = True) -> None:
        assert isinstance(batch, _PostgresBatch)
        with self._connection() as conn, conn.transaction():
            row = conn.execute(self._sql("SELECT version FROM {} WHERE name = %s FOR SHARE",
                                         "eventfold_projection_active"), (name,)).fetchone()
            if follow_active and row and row["version"] != version:
                raise VersionSwitched(f"{name} now serves version {row['version']}")
            self._commit(conn, name, version, batch)

    def forget_cached(self, name: str, version: int) -> None:
        self._caches.pop((name, version), None)

    def cache_empty_tables(self, name: str, version: int, models: Sequence[type[ReadModel]], *,
                           fresh_keys: bool = False) -> None:
        """Start the version's row cache knowing which of its tables are empty (a rebuild's fresh
        tables; every table with ``fresh_keys``, see ``RowCaching``): until the cache loses track of a
        model's rows, "no such row" needs no query."""
        if fresh_keys:
            self._caches[(name, version)] = RowCache(self._cache_rows, complete=models)
            return
        tables = _Tables(self._schema, name, version)
        with self._connection() as conn:
            empty = [model for model in models if conn.execute(
                sql.SQL("SELECT NOT EXISTS (SELECT FROM {}) AS empty").format(tables.ident(model))
            ).fetchone()["empty"]]  # type: ignore[index]
        self._caches[(name, version)] = RowCache(self._cache_rows, complete=empty)

    def _commit(self, conn: Conn, name: str, version: int, batch: _PostgresBatch) -> None:
        try:
            batch.flush(conn)
            self._advance(conn, name, version, batch)
            self._write_letters(conn, version, batch)
            self._write_process(conn, batch)
        except (psycopg.DataError, psycopg.IntegrityError, UnicodeEncodeError, *_VALUE_TYPE_ERRORS) as e:
            # UnicodeEncodeError: a text (a lone surrogate) the connection's encoding cannot send; a value of
            # a type its column cannot take (a row replaced by ``model_copy(update=...)``, which does not
            # validate): a row's fault as much as a NUL is: the event is isolated and parked, not retried for ever
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise RowRejected(f"{name} v{version}: the read-model database refused a row: {first}") from e

    def _advance(self, conn: Conn, name: str, version: int, batch: _PostgresBatch) -> None:
        """The position moves as a compare-and-set on the position the batch started from
        (``since``), else only forward: two workers can never both apply one stretch of events."""
        if batch.position is None:
            return
        if batch.partition is not None:
            self._advance_partition(conn, name, version, batch, batch.partition)
            return
        guard, expected = ("position = %s", batch.since) if batch.since is not None else ("position < %s",
                                                                                        batch.position)
        # One statement: the new position, and its NOTIFY (delivered to listeners when this commits).
        advance = self._sql(
            "WITH moved AS (UPDATE {} SET position = %s, last_event_at = coalesce(%s, last_event_at),"
            " updated_at = now() WHERE name = %s AND version = %s AND " + guard + " RETURNING 1)"
            " SELECT pg_notify(%s, %s) FROM moved", "eventfold_projection_positions")
        touched, rows = described(batch.changes())
        notice = position_notice(name, version, batch.position, touched=touched, rows=rows)
        moved = conn.execute(advance, (batch.position, batch.event_time, name, version, expected,
                                       self.channel, notice)).rowcount
        if moved != 1:
            raise ConcurrencyConflict(f"{name} v{version} was advanced by another worker")

    def _advance_partition(self, conn: Conn, name: str, version: int, batch: _PostgresBatch, index: int) -> None:
        assert batch.position is not None
        guard, expected = ("position = %s", batch.since) if batch.since is not None else ("position < %s",
                                                                                        batch.position)
        advance = self._sql(
            "UPDATE {} SET position = %s, last_event_at = coalesce(%s, last_event_at), updated_at = now()"
            " WHERE name = %s AND version = %s AND partition = %s AND " + guard, "eventfold_partition_positions")
        moved = conn.execute(advance, (batch.position, batch.event_time, name, version, index, expected)).rowcount
        if moved != 1:
            raise ConcurrencyConflict(f"{name} v{version} partition {index} was advanced by another worker")
        # The projection's position is its lowest partition's: announce that (as this transaction sees the
        # others: never above the truth; a watch keeps the highest it heard, and rechecks).
        lowest = self._lowest(conn, name, version)
        touched, rows = described(batch.changes())
        conn.execute("SELECT pg_notify(%s, %s)", (self.channel, position_notice(
            name, version, lowest, touched=touched, rows=rows)))

    def _lowest(self, conn: Conn, name: str, version: int) -> int:
        statement = sql.SQL(_POSITION).format(pp=self._table("eventfold_partition_positions"),
                                              p=self._table("eventfold_projection_positions"))
        row = conn.execute(statement, {"name": name, "version": version}).fetchone()
        return int(row["position"]) if row else 0

    def _write_letters(self, conn: Conn, version: int, batch: _PostgresBatch) -> None:
        letters = self._table("eventfold_dead_letters")
        for letter in batch.letters:
            conn.execute(sql.SQL("INSERT INTO {} (projection, version, position, event_name, aggregate_id,"
                                 " error, command) VALUES (%s, %s, %s, %s, %s, %s, %s)").format(letters),
                         (letter.projection, version, letter.position, _text(letter.event_name),
                          _text(letter.aggregate_id), _text(letter.error),
                          Jsonb(letter.command) if letter.command is not None else None))
        for letter_id in batch.settled:
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(letters), (letter_id,))

    def _write_process(self, conn: Conn, batch: _PostgresBatch) -> None:
        """Outbox entries and deadlines recorded in the batch, and the ones it settled."""
        if batch.outbox:
            _insert_outbox(conn, self._sql(_INSERT_OUTBOX, "eventfold_outbox"), batch.outbox)
        _delete_exactly(conn, self._table("eventfold_outbox"), batch.settled_outbox, "an outbox entry")
        _delete_exactly(conn, self._table("eventfold_deadlines"), batch.settled_deadlines, "a deadline")
        deadlines = self._table("eventfold_deadlines")
        for projection, key in batch.cancelled:
            conn.execute(sql.SQL("DELETE FROM {} WHERE projection = %s AND key = %s").format(deadlines),
                         (projection, key))
        for deadline in batch.deadlines.values():
            conn.execute(sql.SQL(
                "INSERT INTO {} (projection, key, name, due_at, position, data) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (projection, key) DO UPDATE SET name = excluded.name, due_at = excluded.due_at,"
                " position = excluded.position, data = excluded.data, attempts = 0").format(deadlines),
                (deadline.projection, deadline.key, deadline.name, deadline.due_at, deadline.position,
                 Jsonb(deadline.data)))

    # --- process managers: outbox and deadlines ------------------------------------------------

    def outbox(self, projection: str, limit: int) -> list[OutboxEntry]:
        with self._connection() as conn:
            rows = conn.execute(sql.SQL("SELECT * FROM {} WHERE projection = %s ORDER BY id LIMIT %s").format(
                self._table("eventfold_outbox")), (projection, limit)).fetchall()
        return [_entry(r) for r in rows]

    def outbox_done(self, ids: Sequence[int]) -> None:
        if ids:
            with self._connection() as conn:
                conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self._table("eventfold_outbox")),
                             (list(ids),))

    def postpone(self, entry_id: int, at: datetime, error: str) -> None:
        with self._connection() as conn:
            conn.execute(sql.SQL("UPDATE {} SET attempts = attempts + 1, next_attempt_at = %s, last_error = %s"
                                 " WHERE id = %s").format(self._table("eventfold_outbox")),
                         (at, _text(error)[:2000], entry_id))

    def settle_outbox(self, batch: Batch, entry_id: int) -> None:
        assert isinstance(batch, _PostgresBatch)
        batch.settled_outbox.append(entry_id)

    def due_deadlines(self, projection: str, now: datetime, limit: int) -> list[Deadline]:
        with self._connection() as conn:
            rows = conn.execute(sql.SQL("SELECT * FROM {} WHERE projection = %s AND due_at <= %s"
                                        " ORDER BY due_at, id LIMIT %s").format(self._table("eventfold_deadlines")),
                                (projection, now, limit)).fetchall()
        return [Deadline(r["projection"], r["key"], r["name"], r["due_at"], r["position"], r["data"], r["id"],
                         r["attempts"]) for r in rows]

    def settle_deadline(self, batch: Batch, deadline_id: int) -> None:
        assert isinstance(batch, _PostgresBatch)
        batch.settled_deadlines.append(deadline_id)

    def postpone_deadline(self, deadline_id: int, at: datetime) -> None:
        with self._connection() as conn:
            conn.execute(sql.SQL("UPDATE {} SET due_at = %s, attempts = attempts + 1 WHERE id = %s").format(
                self._table("eventfold_deadlines")), (at, deadline_id))

    def outbox_stats(self) -> dict[str, OutboxStats]:
        with self._connection() as conn:
            commands = conn.execute(sql.SQL("SELECT projection, count(*) AS n, min(created_at) AS oldest FROM {}"
                                            " GROUP BY projection").format(self._table("eventfold_outbox"))).fetchall()
            deadlines = conn.execute(sql.SQL("SELECT projection, count(*) AS n, min(due_at) AS next FROM {}"
                                             " GROUP BY projection").format(self._table("eventfold_deadlines"))
                                     ).fetchall()
        stats = {r["projection"]: OutboxStats(pending=r["n"], oldest_at=r["oldest"]) for r in commands}
        for r in deadlines:
            known = stats.get(r["projection"], OutboxStats())
            stats[r["projection"]] = OutboxStats(known.pending, known.oldest_at, r["n"], r["next"])
        return stats

    # --- leases ---------------------------------------------------------------------------------

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float, *, progressed: bool = False) -> bool:
        statement = sql.SQL(_ACQUIRE).format(t=self._table("eventfold_projection_leases"))
        params = {"name": name, "owner": owner, "ttl": ttl_seconds, "progressed": progressed}
        with self._connection() as conn:
            return conn.execute(statement, params).fetchone() is not None

    def release_lease(self, name: str, owner: str) -> None:
        with self._connection() as conn:
            conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s AND owner = %s").format(
                self._table("eventfold_projection_leases")), (name, owner))

    def set_state_if_owner(self, name: str, version: int, owner: str, state: str, error: str | None = None) -> bool:
        with self._connection() as conn:
            return conn.execute(sql.SQL(
                "UPDATE {} SET " + _SET_STATE + " WHERE name = %(name)s AND version = %(version)s"
                " AND EXISTS (SELECT FROM {} WHERE name = %(name)s AND owner = %(owner)s)").format(
                self._table("eventfold_projection_positions"), self._table("eventfold_projection_leases")),
                {"state": state, "error": _text(error) if error else None, "name": name, "version": version,
                 "owner": owner}).rowcount == 1

    def leases(self) -> list[LeaseState]:
        with self._connection() as conn:
            rows = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY name").format(
                self._table("eventfold_projection_leases"))).fetchall()
        return [LeaseState(r["name"], r["owner"], r["expires_at"], r["progress_at"]) for r in rows]

    def set_state(self, name: str, version: int, state: str, error: str | None = None) -> None:
        with self._connection() as conn:
            conn.execute(sql.SQL("UPDATE {} SET " + _SET_STATE
                                 + " WHERE name = %(name)s AND version = %(version)s").format(
                self._table("eventfold_projection_positions")),
                {"state": state, "error": _text(error) if error else None, "name": name, "version": version})

    def states(self) -> list[ProjectionState]:
        with self._connection() as conn:
            rows = conn.execute(sql.SQL(
                "SELECT p.*, coalesce((SELECT min(pp.position) FROM {pp} AS pp WHERE pp.name = p.name"
                " AND pp.version = p.version), p.position) AS lowest FROM {p} AS p ORDER BY name, version").format(
                p=self._table("eventfold_projection_positions"),
                pp=self._table("eventfold_partition_positions"))).fetchall()
        return [ProjectionState(r["name"], r["version"], r["lowest"], r["state"], r["error"],
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
        where = check_conditions(model, where)
        version, shape = self._active_version_cached(name), _shape(where, sort, after, limit)
        with self._connection() as conn:
            as_json = _as_json(model, conn)
            statement = self._select_statement(name, version, model, shape, as_json)
            return _rows(model, conn.execute(statement, _select_params(where, after, limit), prepare=True), as_json)

    async def query_async(
        self,
        name: str,
        model: type[R],
        where: Sequence[Condition] = (),
        sort: Sort = BY_KEY,
        *,
        after: tuple[Any, ...] | None = None,
        limit: int | None = None,
    ) -> list[R]:
        """``query`` on the running event loop (``get_many_async``'s connections): the query API's pages
        without a thread hop each way. Errors as ``query``'s: only a lost connection is ``StoreUnavailable``."""
        where = check_conditions(model, where)
        shape = _shape(where, sort, after, limit)
        return await self._read_async(name, model, _select_params(where, after, limit),
                                      lambda version, as_json: self._select_statement(name, version, model, shape,
                                                                                      as_json))

    async def _read_async(self, name: str, model: type[R], params: Sequence[Any],
                          statement: Callable[[int, bool], bytes]) -> list[R]:
        """Rows of ``statement`` (made for the active version, as JSON or not) on the event loop. Errors as
        the blocking reads': only a lost connection is ``StoreUnavailable`` (a statement PostgreSQL refuses,
        a value of the wrong type, is the caller's error: the circuit breaker does not count it)."""
        failed: psycopg.Error | None = None
        async with self._rows_async.connection() as conn:
            as_json = _as_json(model, conn)
            text = statement(await self._active_version_async(conn, name), as_json)
            cursor = conn.cursor(row_factory=dict_row)  # the connection's own rows are tuples
            try:
                await cursor.execute(text, params, prepare=True)
                found = await cursor.fetchall()
            except psycopg.OperationalError:
                raise
            except psycopg.Error as error:  # the statement failed, the connection stands
                failed = error
        if failed is not None:
            raise failed
        return _rows(model, found, as_json)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - statements live as long as the store
    def _select_statement(self, name: str, version: int, model: type[ReadModel], shape: _Shape,
                          as_json: bool) -> bytes:
        """The SELECT of a query's shape, composed once (composing costs more than a short query)."""
        return _select(_Tables(self._schema, name, version), model, shape, as_json).as_bytes(None)

    def orders_text_by_code_point(self) -> bool:
        """``TextOrder``: the database's default collation (every text column's: no column names another)
        is C, POSIX or C.UTF-8 of libc or the builtin provider, which order text by code point. Read once."""
        if self._code_point_order is None:
            with self._connection() as conn:
                row = conn.execute("SELECT datcollate, to_jsonb(d) ->> 'datlocprovider' AS provider"
                                   " FROM pg_database AS d WHERE datname = current_database()").fetchone()
            self._code_point_order = row is not None and (
                row["datcollate"] in _CODE_POINT_COLLATIONS and row["provider"] in (None, "c", "b"))
        return self._code_point_order

    def get_many(self, name: str, model: type[R], keys: Sequence[tuple[Any, ...]]) -> list[R | None]:
        if not keys:
            return []
        version = self._active_version_cached(name)
        with self._connection() as conn:
            as_json = _as_json(model, conn)
            statement = self._get_many_statement(name, version, model, len(keys) == 1, as_json)
            rows = _rows(model, conn.execute(statement, _key_params(keys), prepare=True), as_json)
        by_key = {row.key_values(): row for row in rows}
        return [by_key.get(tuple(key)) for key in keys]

    async def get_many_async(self, name: str, model: type[R], keys: Sequence[tuple[Any, ...]]) -> list[R | None]:
        """``get_many`` on the running event loop (async connections of its own): the query API's rows
        by key without a thread hop each way."""
        if not keys:
            return []
        one = len(keys) == 1
        rows = await self._read_async(name, model, _key_params(keys),
                                      lambda version, as_json: self._get_many_statement(name, version, model, one,
                                                                                        as_json))
        by_key = {row.key_values(): row for row in rows}
        return [by_key.get(tuple(key)) for key in keys]

    async def _active_version_async(self, conn: AsyncConnection[Any], name: str) -> int:
        """``_active_version_cached`` over ``conn`` (the same cache: looked up at most once a second)."""
        now = time.monotonic()
        cached = self._active_cache.get(name)
        if cached is None or now - cached[1] > 1.0:
            cursor = await conn.execute(sql.SQL("SELECT version FROM {} WHERE name = %s").format(
                self._table("eventfold_projection_active")), (name,))
            row = await cursor.fetchone()
            cached = self._active_cache[name] = (int(row[0]) if row else 1, now)
        return cached[0]

    def active_position(self, name: str) -> int:
        return self.position(name, self.active_version(name))

    def active_positions(self, names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """One statement: each projection's active version (1 when never switched), its position (a
        partitioned one's lowest partition's) and its change mark (the sum of its partitions')."""
        with self._connection() as conn:
            rows = conn.execute(self._active_positions_statement(tuple(names)), prepare=True).fetchall()
        return self._noted({r["name"]: (int(r["version"]), int(r["position"]), int(r["mark"])) for r in rows})

    def _noted(self, positions: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
        """``positions``, their versions noted active: an answer computed after these positions were
        read (the response cache's) reads the versions they name, not one remembered from before a switch."""
        for name, (version, *_) in positions.items():
            self.note_active_version(name, version)
        return positions

    async def active_positions_async(self, names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """``active_positions`` on the running event loop, over one connection of its own: no thread hop
        for the statement the query API's response cache runs once per round of requests."""
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:  # one statement at a time on the one connection
            try:
                conn = self._async
                if conn is None or conn.closed:
                    conn = self._async = await self._connect_async()
                cursor = await conn.execute(self._active_positions_statement(tuple(names)), prepare=True)
                rows = await cursor.fetchall()
            except psycopg.Error as e:
                if self._async is not None:
                    self._async.pgconn.finish()  # broken or not, the next call connects afresh
                    self._async = None
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise StoreUnavailable(f"the read-model database is unavailable ({first})") from e
        return self._noted({name: (int(version), int(position), int(mark)) for name, version, position, mark in rows})

    async def _connect_async(self) -> AsyncConnection[Any]:
        s = self._settings
        return await AsyncConnection.connect(
            host=s.host, port=s.port, dbname=s.dbname, user=s.user, password=s.password, autocommit=True,
            connect_timeout=max(1, round(s.connect_timeout)), application_name="eventfold-views-async")

    @functools.lru_cache(maxsize=64)  # noqa: B019 - statements live as long as the store
    def _active_positions_statement(self, names: tuple[str, ...]) -> bytes:
        """Composed once per set of names, as bytes, the names written in it: no parameter to adapt (adapting
        a list of names cost psycopg more than the rest of the query API's once-a-round statement)."""
        return self._compose_active_positions(names).as_bytes(None)

    def _compose_active_positions(self, names: tuple[str, ...]) -> sql.Composed:
        return sql.SQL(
            "SELECT n.name, coalesce(a.version, 1) AS version,"
            " coalesce(pp.low, p.position, 0) AS position, coalesce(pp.total, p.position, 0) AS mark"
            " FROM unnest(ARRAY[{names}]::text[]) AS n(name) LEFT JOIN {a} a ON a.name = n.name"
            " LEFT JOIN {p} p ON p.name = n.name AND p.version = coalesce(a.version, 1)"
            " LEFT JOIN LATERAL (SELECT min(position) AS low, sum(position) AS total FROM {pp}"
            "  WHERE name = n.name AND version = coalesce(a.version, 1)) pp ON true").format(
            names=sql.SQL(", ").join(map(sql.Literal, names)), a=self._table("eventfold_projection_active"),
            p=self._table("eventfold_projection_positions"),
            pp=self._table("eventfold_partition_positions"))

    @functools.lru_cache(maxsize=256)  # noqa: B019 - statements live as long as the store
    def _get_many_statement(self, name: str, version: int, model: type[ReadModel], one: bool = False,
                            as_json: bool = False) -> bytes:
        """Rows by key: ``one`` key compared as it is (no array to build and unnest), else arrays of them."""
        tables = _Tables(self._schema, name, version)
        kinds = {n: k for n, k, _ in column_definitions(model)}
        keys = sql.SQL(", ").join(map(sql.Identifier, model.key))
        wanted = (sql.SQL("({}) = ({})").format(keys, _scalars(model.key, kinds)) if one else
                  sql.SQL("({}) IN (SELECT * FROM unnest({}))").format(keys, _arrays(model.key, kinds)))
        statement = sql.SQL("SELECT {} FROM {} AS {} WHERE {}").format(
            _selected(model, as_json), tables.ident(model), sql.Identifier(_ROW), wanted)
        return statement.as_bytes(None)

    def _active_version_cached(self, name: str) -> int:
        """Queries look the active version up at most once a second: a switch shows within one."""
        now = time.monotonic()
        cached = self._active_cache.get(name)
        if cached is None or now - cached[1] > 1.0:
            self._active_cache[name] = (self.active_version(name), now)  # expired: what is read now, older or not
            cached = self._active_cache[name]
        return cached[0]

    def close(self) -> None:
        self._pool.close()
        self._rows_async.close()
        if self._async is not None:  # (no event loop needed to hang up)
            self._async.pgconn.finish()
            self._async = None


class _AsyncConnections:
    """At most ``limit`` autocommit connections for one event loop, made when needed. A connection that
    fails is hung up, not reused (the next call connects afresh, as after a restart); the failure is a
    ``StoreUnavailable``. Another event loop (a test's next one) starts afresh."""

    def __init__(self, connect: Callable[[], Any], limit: int, timeout: float) -> None:
        """``timeout``: seconds a call waits for a connection to be free before ``StoreUnavailable``."""
        self._connect, self._limit, self._timeout = connect, limit, timeout
        self._idle: list[AsyncConnection[Any]] = []
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._freed: asyncio.Condition | None = None

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        freed = self._bind()
        conn = await self._checkout(freed)
        try:
            yield conn
        except psycopg.Error as e:
            self._hang_up(conn)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise StoreUnavailable(f"the read-model database is unavailable ({first})") from e
        except BaseException:
            self._hang_up(conn)  # cancelled mid-statement: its state is unknown
            raise
        else:
            self._idle.append(conn)
        finally:
            async with freed:
                freed.notify()

    def _bind(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._freed is None:
            self.close()
            self._loop, self._freed = loop, asyncio.Condition()
        return self._freed

    async def _checkout(self, freed: asyncio.Condition) -> AsyncConnection[Any]:
        deadline = time.monotonic() + self._timeout
        while True:
            while self._idle:
                conn = self._idle.pop()
                if not await went_away_async(conn):  # the server's goodbye (a restart) is seen here
                    return conn
                self._hang_up(conn)
            if self._open < self._limit:
                self._open += 1
                try:
                    conn = await self._connect()
                except BaseException as e:
                    self._open -= 1
                    if isinstance(e, psycopg.Error):
                        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                        raise StoreUnavailable(f"the read-model database is unavailable ({first})") from e
                    raise
                return cast(AsyncConnection[Any], conn)
            if not await self._given_back(freed, deadline) and not self._idle and self._open >= self._limit:
                # every connection stuck (a statement waiting on a lock, a server that stopped answering):
                # fail as the blocking pool's checkout does rather than wait forever
                raise StoreUnavailable(f"the read-model database is unavailable (no connection free within "
                                       f"{self._timeout:g}s: all {self._limit} busy)")

    @staticmethod
    async def _given_back(freed: asyncio.Condition, deadline: float) -> bool:
        """Whether a connection was given back before ``deadline``."""
        try:
            async with freed:
                await asyncio.wait_for(freed.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return False
        return True

    def _hang_up(self, conn: AsyncConnection[Any]) -> None:
        conn.pgconn.finish()  # no event loop needed to hang up
        self._open -= 1

    def close(self) -> None:
        for conn in self._idle:
            conn.pgconn.finish()
        self._open -= len(self._idle)
        self._idle = []


_CODE_POINT_COLLATIONS = frozenset({"C", "POSIX", "C.UTF-8", "C.utf8"})
_OPERATORS = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


_ROW = "eventfold_row"  # the alias of the table a query reads: a row read as JSON is named by it


@functools.cache
def _read_as_json(model: type[ReadModel]) -> bool:
    """Whether rows of ``model`` are read as one JSON text each (``to_json``), validated by pydantic in one
    call (``model_validate_json``): no loader per column, no dict per row. Only when that gives the values
    the typed columns give: not for ``numeric`` and ``double precision`` (JSON numbers would pass through
    binary floats) nor enums with other than text values, nor models with validators that see their input
    raw (they would get strings); ``jsonb`` columns are JSON either way."""
    return (_ROW not in model.model_fields and all(_same_as_json(f.annotation) for f in model.model_fields.values())
            and not _sees_raw_input(model.__pydantic_core_schema__))


# Validators given the input as it arrives (a JSON text's strings, not the datetimes, dates and UUIDs a
# typed column's loader gives), and schemas that validate JSON otherwise than Python objects.
_RAW_INPUT = frozenset({"function-before", "function-plain", "function-wrap", "json-or-python"})
_OUTPUT_ONLY = frozenset({"serialization", "computed_fields"})  # serializers: they do not read rows


def _sees_raw_input(schema: Any) -> bool:
    """Whether a pydantic core schema (of a model, all it holds) has a step that sees its input raw."""
    if isinstance(schema, dict):
        return schema.get("type") in _RAW_INPUT or any(
            _sees_raw_input(v) for k, v in schema.items() if k not in _OUTPUT_ONLY)
    if isinstance(schema, list | tuple):
        return any(_sees_raw_input(v) for v in schema)
    return False


def _same_as_json(annotation: Any) -> bool:
    kind, _ = sql_type(annotation)
    if kind in ("numeric", "double precision"):
        return False
    inner, _ = unwrap(annotation)
    if kind == "text" and isinstance(inner, type) and issubclass(inner, Enum):
        return all(isinstance(member.value, str) for member in inner)
    return True


def _as_json(model: type[ReadModel], conn: Conn | AsyncConnection[Any]) -> bool:
    """Whether rows of ``model`` are read as JSON over ``conn``: a model ``_read_as_json``, whose times (if it
    has any) the session prints in UTC. ``to_json`` prints a time with the session's offset at that instant,
    and in most zones that was once an offset in seconds (local mean time: Amsterdam +00:19:32 until 1937),
    which pydantic does not parse; psycopg's loader does."""
    return _read_as_json(model) and (not _has_times(model) or conn.info.parameter_status("TimeZone") in _UTC)


_UTC = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu",
                  "Etc/Zulu", "Z"})


@functools.cache
def _has_times(model: type[ReadModel]) -> bool:
    return any(sql_type(f.annotation)[0] == "timestamptz" for f in model.model_fields.values())


def _selected(model: type[ReadModel], as_json: bool) -> sql.Composable:
    if as_json:
        return sql.SQL("to_json({row})::text AS {row}").format(row=sql.Identifier(_ROW))
    return sql.SQL("*")


def _rows(model: type[R], fetched: Iterable[dict[str, Any]], as_json: bool) -> list[R]:
    """Rows fetched (as dicts) by a statement ``_selected`` made, as ``model``s."""
    if as_json:
        return [model.model_validate_json(r[_ROW]) for r in fetched]
    return [model.model_validate(r) for r in fetched]


_Shape = tuple[tuple[tuple[str, str, bool | None], ...], Sort, int | None, bool]


def _shape(where: Sequence[Condition], sort: Sort, after: tuple[Any, ...] | None, limit: int | None) -> _Shape:
    """What a query's SQL text depends on (its values are parameters): columns and operators (and whether
    ``is_null`` asks for null), the order, a cursor's width, a limit or none."""
    conditions = tuple((c.column, c.operator, bool(c.value) if c.operator == "is_null" else None) for c in where)
    return conditions, sort, None if after is None else len(after), limit is not None


def _select(tables: _Tables, model: type[ReadModel], shape: _Shape, as_json: bool) -> sql.Composed:
    conditions, sort, after, limited = shape
    clauses = [_condition(column, operator, is_null) for column, operator, is_null in conditions]
    columns = sort.columns(model)
    if after is not None:
        clauses.append(sql.SQL("({}) {} ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL("<" if sort.descending else ">"),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        ))
    direction = sql.SQL(" DESC" if sort.descending else " ASC")
    statement = sql.SQL("SELECT {} FROM {} AS {}{}{} ORDER BY {}").format(
        _selected(model, as_json), tables.ident(model), sql.Identifier(_ROW),
        sql.SQL(" WHERE ") if clauses else sql.SQL(""),
        sql.SQL(" AND ").join(clauses),
        sql.SQL(", ").join(sql.Composed([sql.Identifier(c), direction]) for c in columns),
    )
    if limited:
        statement += sql.SQL(" LIMIT %s")
    return statement


def _select_params(where: Sequence[Condition], after: tuple[Any, ...] | None, limit: int | None) -> list[Any]:
    """The parameters of ``_select``'s statement, in its placeholders' order."""
    params: list[Any] = [p for condition in where for p in _condition_params(condition)]
    if after is not None:
        params.extend(_param(v) for v in after)  # a cursor's enum member as stored: by its value
    if limit is not None:
        params.append(limit)
    return params


def _condition(column_name: str, operator: str, is_null: bool | None) -> sql.Composable:
    """The SQL of one condition, meaning what ``Condition.matches`` means (NULL meets no comparison)."""
    column = sql.Identifier(column_name)
    if operator == "is_null":
        return sql.SQL("{} IS NULL" if is_null else "{} IS NOT NULL").format(column)
    if operator == "in":
        return sql.SQL("{} = ANY(%s)").format(column)
    if operator in ("prefix", "contains"):
        return sql.SQL("{} LIKE %s ESCAPE '\\'").format(column)
    return sql.SQL("{} {} %s").format(column, sql.SQL(_OPERATORS[operator]))


def _condition_params(condition: Condition) -> list[Any]:
    operator, value = condition.operator, condition.value
    if operator == "is_null":
        return []
    if operator == "in":
        return [[_param(v) for v in value if v is not None]]
    if operator in ("prefix", "contains"):
        pattern = _like_literal(value) + "%"
        return ["%" + pattern if operator == "contains" else pattern]
    return [_param(value)]


def _param(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _like_literal(text: str) -> str:
    """``text`` as a LIKE pattern matching itself only: the escape character and wildcards escaped."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _arrays(columns: Sequence[str], kinds: dict[str, str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("%s::{}[]").format(sql.SQL(kinds[c])) for c in columns)


def _scalars(columns: Sequence[str], kinds: dict[str, str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(kinds[c])) for c in columns)


def _key_params(keys: Sequence[Sequence[Any]]) -> list[Any]:
    """The parameters of ``_get_many_statement``: one key's values, or one array per key column; an enum
    member as its value, as it is stored (psycopg would send its name)."""
    if len(keys) == 1:
        return [_param(v) for v in keys[0]]
    return _columns([[_param(v) for v in key] for key in keys])


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


_VALUE_TYPE_ERRORS = (psycopg.errors.CannotCoerce, psycopg.errors.DatatypeMismatch)
"""What PostgreSQL says of a bulk statement's array whose values' type its column cannot take (the
statements themselves are fixed and tested: a row's values are what differs)."""


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


def _packer(conn: Conn) -> Callable[[list[list[Any]]], list[Any]]:
    """What turns a binary statement's columns into its parameters: integer, date and text columns
    packed in one pass (``framework.adapters.pg_arrays``, whose dumpers the pool's connections have);
    text only when the connection speaks UTF-8."""
    kinds: tuple[type, ...] = (int, date, str) if conn.info.encoding == "utf-8" else (int, date)

    def pack(columns: list[list[Any]]) -> list[Any]:
        return [packed(column, kind) if (kind := _only_type(column)) in kinds else column for column in columns]

    return pack


def _only_type(column: Sequence[Any]) -> type | None:
    types = set(map(type, column))
    return types.pop() if len(types) == 1 else None


def _columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows to one list per column, the shape ``unnest`` takes."""
    return [list(column) for column in zip(*rows, strict=True)]


def _letter(row: dict[str, Any]) -> DeadLetter:
    return DeadLetter(row["projection"], row["position"], row["event_name"], row["aggregate_id"],
                      row["error"], row["id"], row["failed_at"], row.get("command"))


def _entry(row: dict[str, Any]) -> OutboxEntry:
    return OutboxEntry(row["projection"], row["key"], row["command_name"], row["payload"], row["ordering_key"],
                       row["position"], row["context"], row["id"], row["attempts"], row["next_attempt_at"],
                       row["last_error"], row["created_at"])


def _text(value: str) -> str:
    """Bookkeeping text (an error message quoting a hostile value) that PostgreSQL can store."""
    return value.replace("\x00", "\\x00")


_INSERT_OUTBOX = (
    "INSERT INTO {} (projection, key, command_name, payload, ordering_key, position, context)"
    " SELECT p, k, c, j::jsonb, o, n, x::jsonb FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::bigint[], %s::text[]) AS t(p, k, c, j, o, n, x) ON CONFLICT (key) DO NOTHING")


def _insert_outbox(conn: Conn, statement: bytes, entries: Sequence[OutboxEntry]) -> None:
    """One statement for a batch's commands; an entry issued again (a redelivered event) is kept once."""
    columns = _columns([(e.projection, e.key, e.command_name, json.dumps(e.payload), e.ordering_key, e.position,
                         json.dumps(e.context)) for e in entries])
    conn.execute(statement, columns)


def _delete_exactly(conn: Conn, table: sql.Composed, ids: Sequence[int], what: str) -> None:
    """Delete rows a batch settled; if one is gone already, another worker settled it: roll back."""
    if ids and conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(table),
                            (list(ids),)).rowcount != len(set(ids)):
        raise ConcurrencyConflict(f"{what} was settled by another worker")
