"""Settings, read once from ``EVENTFOLD_*`` environment variables into frozen objects.

Nothing else in Eventfold reads the environment: the CLI builds ``Settings``
and passes it down (the ``OTEL_*`` variables too, as they are, for the tracing
adapter). A bad value raises ``ConfigurationError`` naming the variable and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from framework.errors import ConfigurationError

__all__ = ["DEFAULT_NATS_URL", "PostgresSettings", "Settings"]

N = TypeVar("N", int, float)
PREFIX = "EVENTFOLD_"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
_NATS_SCHEMES = {"nats", "tls", "ws", "wss"}
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_TAG = re.compile(r"^[A-Za-z0-9_:.=-]+$")
_PREFIX_CHARS = re.compile(r"^[A-Za-z0-9_-]*$")
_NAME_CHARS = "letters, digits, '-' or '_'"


@dataclass(frozen=True)
class PostgresSettings:
    host: str
    port: int
    dbname: str
    user: str
    password: str
    schema: str = "public"
    pool_size: int = 8
    connect_timeout: float = 2.0
    group_commit: bool = True  # concurrent appends share one transaction (framework.adapters.group_commit)

    @classmethod
    def from_url(cls, url: str, *, key: str = "EVENTFOLD_DATABASE_URL") -> PostgresSettings:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres") or not parts.path.strip("/"):
            raise ConfigurationError(
                f"{key}={_redact(url)!r} is not a postgresql://user@host:port/dbname URL"
            )
        try:
            port = parts.port or 5432
        except ValueError:
            raise ConfigurationError(f"{key}={_redact(url)!r} has a bad port") from None
        return cls(
            host=parts.hostname or "localhost",
            port=port,
            dbname=unquote(parts.path.lstrip("/")),
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
        )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the defaults of the embedded mode."""

    database_url: str | None = None
    # The read models' database (workers, replay, status, init-db, query-api); None: the event store's.
    read_database_url: str | None = None
    read_db_schema: str | None = None  # EVENTFOLD_READ_DB_SCHEMA; None: EVENTFOLD_DB_SCHEMA
    # Where query-api reads read models and positions, e.g. a streaming replica; None: the read database.
    query_database_url: str | None = None
    sqlite_path: str = ".eventfold/events.sqlite3"
    db_schema: str = "public"
    db_pool_size: int = 8
    db_connect_timeout: float = 2.0
    group_commit: bool = True  # EVENTFOLD_GROUP_COMMIT: PostgreSQL appends of concurrent commands share a commit
    write_async: bool = True  # EVENTFOLD_WRITE_ASYNC: write-api decides and appends commands on the event loop
    app: str | None = None  # `package.module:app` naming the application's App (framework.loading finds it)
    consistency_timeout_seconds: float = 5.0
    max_waiting_requests: int = 1_000  # read-your-writes waits held at once per query process; more get 503
    max_subscriptions: int = 10_000  # live GraphQL subscriptions open at once per query process
    nats_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1_048_576
    max_header_bytes: int = 32_768  # the request line and headers together (write-api, query-api, dev)
    header_timeout_seconds: float = 10.0  # to receive a request's line and headers
    body_timeout_seconds: float = 30.0  # to receive its body, once the headers are in
    max_connections: int = 1_000  # open at once; a request beyond is answered 503
    write_workers: int = 1  # EVENTFOLD_WRITE_WORKERS: write-api processes sharing the port (--workers)
    command_max_attempts: int = 5
    idempotency_lease_seconds: float = 60.0
    retry_after_seconds: int = 1
    metrics_port: int | None = None  # relay and project: serve /metrics on this port (unset: off)
    ready_max_lag_seconds: float = 60.0
    log_format: str | None = None  # json or text; None: text for dev and one-off commands, json for roles
    jwks_file: str | None = None
    jwks_url: str | None = None
    jwt_key: str | None = None
    jwt_algorithms: tuple[str, ...] = ()  # empty: those of the configured keys' types
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    anonymous_roles: tuple[str, ...] | None = None  # a caller without a token; None: refused ("*" for a keyless dev)
    allow_anonymous: bool | None = None  # deprecated: true is anonymous_roles ("*",) without keys
    rate_limit_per_second: float | None = None  # both APIs, per client; None: no limit
    auth_failures_per_minute: float = 20.0  # both APIs: failed authentications per client address; 0: off
    breaker_threshold: int = 5  # write API: consecutive store failures that open the circuit breaker
    breaker_cool_down_seconds: float = 2.0  # the longest it stays open before one probe goes through
    lease_seconds: float = 3.0  # a projection worker's lease: a standby takes over this long after a crash
    dispatch_concurrency: int = 16  # process-manager commands in flight at once, per process manager
    # EVENTFOLD_PARTITIONS="holdings=8,cards=1": a projection's partition count, instead of its projector's
    # (a power of two; changing it takes a replay). project and replay read it.
    partitions: tuple[tuple[str, int], ...] = ()
    # The query API's document limits, and introspection (None: on for `eventfold dev`, off for query-api).
    graphql_introspection: bool | None = None
    graphql_max_depth: int = 10
    graphql_max_aliases: int = 15
    graphql_max_tokens: int = 2_000
    graphql_max_cost: int = 5_000
    graphql_response_cache: int = 1_024  # answers the query API keeps while their read models stand still; 0: off
    graphql_explorer: bool | None = None  # the browser explorer at /graphql/explorer (None: dev only)
    # The JetStream event stream (relay, project): JetStream acks do not mean fsync by default, so
    # storage and replicas are the user's to set (file and >= 3 replicas on a cluster: durable).
    stream: str = "eventfold"
    subject_prefix: str = "eventfold.events"
    stream_storage: str = "file"  # file | memory
    stream_replicas: int = 1
    stream_retention: str = "limits"  # limits | interest
    stream_max_age_seconds: float = 0.0  # 0: kept forever
    stream_duplicate_window_seconds: float = 120.0
    stream_placement_cluster: str | None = None  # EVENTFOLD_STREAM_PLACEMENT_CLUSTER: the JetStream cluster
    stream_placement_tags: tuple[str, ...] = ()  # EVENTFOLD_STREAM_PLACEMENT_TAGS: servers carrying all these tags
    consumer_prefix: str = "eventfold-"
    console: bool = True  # EVENTFOLD_CONSOLE: dev and query-api serve /console/ and the /ops/ API
    faults: str = ""  # EVENTFOLD_FAULTS: a testing aid, the fault points to arm (framework.faults)
    otel: tuple[tuple[str, str], ...] = ()  # the OTEL_* variables: OpenTelemetry's own configuration

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        read = _Reader(env)
        read.refuse_retired(_RETIRED)
        defaults = cls()
        settings = cls(
            database_url=read.text("DATABASE_URL", defaults.database_url),
            read_database_url=read.text("READ_DATABASE_URL", None) or None,
            read_db_schema=read.text("READ_DB_SCHEMA", None) or None,
            query_database_url=read.text("QUERY_DATABASE_URL", None) or None,
            sqlite_path=read.text("SQLITE_PATH", defaults.sqlite_path) or defaults.sqlite_path,
            db_schema=read.text("DB_SCHEMA", defaults.db_schema) or defaults.db_schema,
            db_pool_size=read.number("DB_POOL_SIZE", int, defaults.db_pool_size, minimum=1),
            db_connect_timeout=read.number(
                "DB_CONNECT_TIMEOUT", float, defaults.db_connect_timeout, minimum=0.1
            ),
            group_commit=_default(read.flag("GROUP_COMMIT"), defaults.group_commit),
            write_async=_default(read.flag("WRITE_ASYNC"), defaults.write_async),
            app=read.text("APP", defaults.app) or None,
            nats_url=read.text("NATS_URL", defaults.nats_url) or None,
            consistency_timeout_seconds=read.number(
                "CONSISTENCY_TIMEOUT_SECONDS", float, defaults.consistency_timeout_seconds, minimum=0,
                maximum=60,
            ),
            max_waiting_requests=read.number(
                "MAX_WAITING_REQUESTS", int, defaults.max_waiting_requests, minimum=0, maximum=1_000_000
            ),
            max_subscriptions=read.number(
                "MAX_SUBSCRIPTIONS", int, defaults.max_subscriptions, minimum=0, maximum=1_000_000
            ),
            host=read.text("HOST", defaults.host) or defaults.host,
            port=read.number("PORT", int, defaults.port, minimum=0, maximum=65535),
            max_body_bytes=read.number("MAX_BODY_BYTES", int, defaults.max_body_bytes, minimum=1),
            max_header_bytes=read.number("MAX_HEADER_BYTES", int, defaults.max_header_bytes, minimum=1024),
            header_timeout_seconds=read.number(
                "HEADER_TIMEOUT_SECONDS", float, defaults.header_timeout_seconds, minimum=0.1, maximum=3600
            ),
            body_timeout_seconds=read.number(
                "BODY_TIMEOUT_SECONDS", float, defaults.body_timeout_seconds, minimum=0.1, maximum=3600
            ),
            max_connections=read.number("MAX_CONNECTIONS", int, defaults.max_connections, minimum=1),
            write_workers=read.number("WRITE_WORKERS", int, defaults.write_workers, minimum=1, maximum=256),
            command_max_attempts=read.number(
                "COMMAND_MAX_ATTEMPTS", int, defaults.command_max_attempts, minimum=1
            ),
            idempotency_lease_seconds=read.number(
                "IDEMPOTENCY_LEASE_SECONDS", float, defaults.idempotency_lease_seconds, minimum=1
            ),
            retry_after_seconds=read.number(
                "RETRY_AFTER_SECONDS", int, defaults.retry_after_seconds, minimum=0
            ),
            metrics_port=read.optional_port("METRICS_PORT"),
            ready_max_lag_seconds=read.number(
                "READY_MAX_LAG_SECONDS", float, defaults.ready_max_lag_seconds, minimum=0
            ),
            log_format=read.choice("LOG_FORMAT", ("json", "text")),
            jwks_file=read.text("JWKS_FILE", None) or None,
            jwks_url=read.text("JWKS_URL", None) or None,
            jwt_key=read.text("JWT_KEY", None) or None,
            jwt_algorithms=read.names("JWT_ALGORITHMS", defaults.jwt_algorithms),
            jwt_issuer=read.text("JWT_ISSUER", None) or None,
            jwt_audience=read.text("JWT_AUDIENCE", None) or None,
            anonymous_roles=read.roles("ANONYMOUS_ROLES"),
            allow_anonymous=read.flag("ALLOW_ANONYMOUS"),
            rate_limit_per_second=read.optional_number("RATE_LIMIT_PER_SECOND"),
            auth_failures_per_minute=read.number(
                "AUTH_FAILURES_PER_MINUTE", float, defaults.auth_failures_per_minute, minimum=0
            ),
            lease_seconds=read.number("LEASE_SECONDS", float, defaults.lease_seconds, minimum=0.5, maximum=600),
            dispatch_concurrency=read.number(
                "DISPATCH_CONCURRENCY", int, defaults.dispatch_concurrency, minimum=1, maximum=256
            ),
            partitions=read.partitions("PARTITIONS"),
            breaker_threshold=read.number("BREAKER_THRESHOLD", int, defaults.breaker_threshold, minimum=1),
            breaker_cool_down_seconds=read.number(
                "BREAKER_COOL_DOWN_SECONDS", float, defaults.breaker_cool_down_seconds, minimum=0
            ),
            graphql_introspection=read.flag("GRAPHQL_INTROSPECTION"),
            graphql_max_depth=read.number(
                "GRAPHQL_MAX_DEPTH", int, defaults.graphql_max_depth, minimum=1, maximum=30
            ),
            graphql_max_aliases=read.number(
                "GRAPHQL_MAX_ALIASES", int, defaults.graphql_max_aliases, minimum=0, maximum=1_000
            ),
            graphql_max_tokens=read.number(
                "GRAPHQL_MAX_TOKENS", int, defaults.graphql_max_tokens, minimum=10, maximum=20_000
            ),
            graphql_max_cost=read.number(
                "GRAPHQL_MAX_COST", int, defaults.graphql_max_cost, minimum=1, maximum=1_000_000
            ),
            graphql_response_cache=read.number(
                "GRAPHQL_RESPONSE_CACHE", int, defaults.graphql_response_cache, minimum=0, maximum=1_000_000
            ),
            graphql_explorer=read.flag("GRAPHQL_EXPLORER"),
            stream=read.matching("STREAM", defaults.stream, _NAME, _NAME_CHARS),
            subject_prefix=read.subject_prefix("SUBJECT_PREFIX", defaults.subject_prefix),
            stream_storage=read.choice("STREAM_STORAGE", ("file", "memory")) or defaults.stream_storage,
            stream_replicas=read.number("STREAM_REPLICAS", int, defaults.stream_replicas, minimum=1, maximum=5),
            stream_retention=read.choice("STREAM_RETENTION", ("limits", "interest")) or defaults.stream_retention,
            stream_max_age_seconds=read.number(
                "STREAM_MAX_AGE_SECONDS", float, defaults.stream_max_age_seconds, minimum=0
            ),
            stream_duplicate_window_seconds=read.number(
                "STREAM_DUPLICATE_WINDOW_SECONDS", float, defaults.stream_duplicate_window_seconds, minimum=0
            ),
            stream_placement_cluster=read.optional_matching("STREAM_PLACEMENT_CLUSTER", _NAME, _NAME_CHARS),
            stream_placement_tags=read.tags("STREAM_PLACEMENT_TAGS"),
            consumer_prefix=read.matching(
                "CONSUMER_PREFIX", defaults.consumer_prefix, _PREFIX_CHARS, _NAME_CHARS, allow_empty=True
            ),
            console=_default(read.flag("CONSOLE"), defaults.console),
            faults=read.text("FAULTS", defaults.faults) or defaults.faults,
            otel=tuple(sorted((k, v) for k, v in env.items() if k.startswith("OTEL_"))),
        )
        settings.postgres()  # a malformed URL fails here, at start-up
        settings._check_read_databases()
        settings.nats_servers()  # ...and so does a malformed NATS URL
        settings._check_stream()
        return settings

    def _check_stream(self) -> None:
        max_age, window = self.stream_max_age_seconds, self.stream_duplicate_window_seconds
        if 0 < max_age < window:
            raise ConfigurationError(
                f"{PREFIX}STREAM_DUPLICATE_WINDOW_SECONDS={window!r} must not exceed "
                f"{PREFIX}STREAM_MAX_AGE_SECONDS={max_age!r}"
            )

    def _check_read_databases(self) -> None:
        for key, url in (("READ_DATABASE_URL", self.read_database_url),
                         ("QUERY_DATABASE_URL", self.query_database_url)):
            if url and not self.database_url:
                raise ConfigurationError(
                    f"{PREFIX}{key}={_redact(url)!r} needs {PREFIX}DATABASE_URL (the event store) too"
                )
        self.read_postgres()
        self.query_postgres()

    def nats_servers(self) -> tuple[str, ...]:
        """The NATS servers of ``EVENTFOLD_NATS_URL`` (comma-separated), the local default when unset."""
        raw = self.nats_url
        if raw is None:
            return (DEFAULT_NATS_URL,)
        servers = tuple(part.strip() for part in raw.split(",") if part.strip())
        for url in servers:
            if not _is_nats_url(url):
                raise ConfigurationError(
                    f"{PREFIX}NATS_URL={_redact_all(raw)!r}: {_redact_all(url)!r} is not a nats://host:port URL"
                )
        if not servers:
            raise ConfigurationError(f"{PREFIX}NATS_URL={raw!r} names no server")
        return servers

    def postgres(self) -> PostgresSettings | None:
        """The event store's PostgreSQL connection, or None for the embedded store."""
        if not self.database_url:
            return None
        return self._postgres(self.database_url, "DATABASE_URL", self.db_schema)

    def read_postgres(self) -> PostgresSettings | None:
        """The read models' PostgreSQL (``EVENTFOLD_READ_DATABASE_URL``, else the event store's); None: embedded."""
        if not self.database_url:
            return None
        schema = self.read_db_schema or self.db_schema
        if not self.read_database_url:
            return self._postgres(self.database_url, "DATABASE_URL", schema)
        return self._postgres(self.read_database_url, "READ_DATABASE_URL", schema)

    def query_postgres(self) -> PostgresSettings | None:
        """Where query-api reads read models and positions (``EVENTFOLD_QUERY_DATABASE_URL``, e.g. a
        streaming replica of the read database), else the read database; None: embedded."""
        if not self.database_url or not self.query_database_url:
            return self.read_postgres()
        return self._postgres(self.query_database_url, "QUERY_DATABASE_URL", self.read_db_schema or self.db_schema)

    def _postgres(self, url: str, key: str, schema: str) -> PostgresSettings:
        parsed = PostgresSettings.from_url(url, key=PREFIX + key)
        return PostgresSettings(
            host=parsed.host,
            port=parsed.port,
            dbname=parsed.dbname,
            user=parsed.user,
            password=parsed.password,
            schema=schema,
            pool_size=self.db_pool_size,
            connect_timeout=self.db_connect_timeout,
            group_commit=self.group_commit,
        )


def _default(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def _is_nats_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in _NATS_SCHEMES and bool(parts.hostname)


def _redact_all(url: str) -> str:
    """Every ``user:password@`` of a (comma-separated) URL with the password hidden."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# Variables that no longer mean anything, and what replaced them: silently ignoring one would run
# an application without the projections or schema its operator named.
_RETIRED = {
    "PROJECTIONS": "list the projections in your App (App(projections=[...])) and name it with EVENTFOLD_APP",
    "GRAPHQL": "give your App its schema (App(graphql=build_graphql)) and name it with EVENTFOLD_APP",
}


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def matching(self, name: str, default: str, pattern: re.Pattern[str], what: str,
                 *, allow_empty: bool = False) -> str:
        raw = self._env.get(PREFIX + name)
        if raw is None or (raw.strip() == "" and not allow_empty):
            return default
        value = raw.strip()
        if not pattern.match(value):
            raise ConfigurationError(f"{PREFIX}{name}={value!r} must contain only {what}")
        return value

    def optional_matching(self, name: str, pattern: re.Pattern[str], what: str) -> str | None:
        raw = (self._env.get(PREFIX + name) or "").strip()
        return self.matching(name, raw, pattern, what) if raw else None

    def tags(self, name: str) -> tuple[str, ...]:
        """Comma-separated server tags (``az:eu-1,ssd``), each of letters, digits and ``-_:.=``."""
        tags = self.names(name, ())
        for tag in tags:
            if not _TAG.match(tag):
                raise ConfigurationError(
                    f"{PREFIX}{name}={self._env[PREFIX + name]!r}: tag {tag!r} must contain only letters, digits, "
                    "'-', '_', ':', '.' or '='"
                )
        return tags

    def subject_prefix(self, name: str, default: str) -> str:
        """Dot-separated tokens, each a name (NATS subject wildcards and empty tokens refused)."""
        raw = (self._env.get(PREFIX + name) or "").strip()
        if not raw:
            return default
        if any(not token or not _NAME.match(token) for token in raw.split(".")):
            raise ConfigurationError(
                f"{PREFIX}{name}={raw!r} must be dot-separated tokens of {_NAME_CHARS}"
            )
        return raw

    def refuse_retired(self, retired: Mapping[str, str]) -> None:
        for name, instead in retired.items():
            if self._env.get(PREFIX + name, "").strip():
                raise ConfigurationError(f"{PREFIX}{name} is no longer read: {instead}")

    def text(self, name: str, default: str | None) -> str | None:
        value = self._env.get(PREFIX + name)
        return default if value is None else value.strip()

    def names(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._env.get(PREFIX + name, "")
        names = tuple(n.strip() for n in raw.split(",") if n.strip())
        return names or default

    def partitions(self, name: str) -> tuple[tuple[str, int], ...]:
        """Comma-separated ``projection=count`` pairs, each count a power of two from 1 to 256."""
        pairs: list[tuple[str, int]] = []
        for item in self.names(name, ()):
            projection, _, count = item.partition("=")
            if not projection.strip() or not count.strip().isdigit():
                raise ConfigurationError(f"{PREFIX}{name}={self._env[PREFIX + name]!r}: expected projection=count"
                                         f" pairs separated by commas, not {item!r}")
            number = int(count)
            if number < 1 or number > 256 or number & (number - 1):
                raise ConfigurationError(f"{PREFIX}{name}: {projection.strip()}={number} is not a power of two"
                                         " from 1 to 256")
            pairs.append((projection.strip(), number))
        return tuple(pairs)

    def roles(self, name: str) -> tuple[str, ...] | None:
        """Comma-separated role names, or ``*`` alone (every role); unset or empty: None."""
        names = self.names(name, ())
        if "*" in names and len(names) > 1:
            raise ConfigurationError(f"{PREFIX}{name}={self._env[PREFIX + name]!r}: `*` (every role) stands alone")
        return names or None

    def flag(self, name: str) -> bool | None:
        raw = self._env.get(PREFIX + name, "").strip().lower()
        if not raw:
            return None
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(f"{PREFIX}{name}={raw!r} must be true or false")

    def optional_number(self, name: str) -> float | None:
        raw = self._env.get(PREFIX + name, "").strip()
        return self.number(name, float, 0.0, minimum=0.001) if raw else None

    def optional_port(self, name: str) -> int | None:
        raw = self._env.get(PREFIX + name, "").strip()
        return self.number(name, int, 0, minimum=1, maximum=65535) if raw else None

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        raw = self._env.get(PREFIX + name, "").strip().lower()
        if raw and raw not in choices:
            raise ConfigurationError(f"{PREFIX}{name}={raw!r} must be one of {', '.join(choices)}")
        return raw or None

    def number(
        self, name: str, kind: type[N], default: N, *, minimum: float, maximum: float = math.inf
    ) -> N:
        raw = self._env.get(PREFIX + name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ConfigurationError(
                f"{PREFIX}{name}={raw!r} is not a valid {kind.__name__}"
            ) from None
        if not math.isfinite(value):
            raise ConfigurationError(f"{PREFIX}{name}={raw!r} must be a finite number")
        if value < minimum:
            raise ConfigurationError(f"{PREFIX}{name}={raw!r} must be at least {minimum}")
        if value > maximum:
            raise ConfigurationError(f"{PREFIX}{name}={raw!r} must be at most {maximum}")
        return value
