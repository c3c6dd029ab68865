"""The PostgreSQL store: a service's database in PostgreSQL (psycopg 3, async, pooled).

`postgresql://user:password@host:port/dbname?schema=orders` (`postgres://` works too). Options
read by tidings (everything else in the query string goes to libpq unchanged, e.g. `sslmode`):

* `schema` (default `public`): the schema holding the framework's `tidings_*` tables and, through
  `search_path`, the user's unqualified tables. Created on `start()` if missing.
* `pool_size` (default 10): the most pooled connections.
* `retry_s` (default 10): how long a statement outside a transaction (and connecting on
  `start()`) is retried while the server is unreachable.

The password comes from the URL (or libpq's usual `PGPASSWORD` / `~/.pgpass`) and never appears in
messages: `store.url` and every error show the URL with the password masked.

**SQL placeholders.** Service code is written once for SQLite and PostgreSQL, so statements use
`?` placeholders with a sequence of parameters, as with SQLite. This store translates `?` into
psycopg's `%s` outside quoted strings, quoted identifiers, dollar quotes and comments, and
escapes every `%` (so `LIKE 'a%'` just works); translations are cached. `??` outside quotes is a
literal `?` (for the jsonb operators `?`, `?|`, `?&`). Named parameters (a dict) are not
supported: they raise TypeError. A statement is one command (as with SQLite); migrations may hold
several.

**Transactions** run on a pooled connection, concurrently (no store-wide writer lock). Outbox rows
are buffered and written just before COMMIT (or at `flush()`), followed by
`NOTIFY tidings_outbox` (payload: the schema), which PostgreSQL delivers at commit to every
process listening through `on_outbox`. Connection loss while checking out a connection or at
BEGIN is retried; inside a transaction it raises StorageError (nothing committed - or, if lost
during COMMIT itself, an unknown outcome, which the inbox and at-least-once delivery absorb).

**Relay claim: never skipping a late commit.** Outbox `seq` comes from an identity sequence when
a row is inserted, but transactions commit in any order, so a row with a lower seq can become
visible after rows with higher ones. The relay therefore never uses "everything up to the highest
seq seen" as a watermark: `outbox_claim` returns the lowest-seq rows that are *visible now*, and
`outbox_remove` deletes exactly the seqs it is given. A row that commits late is simply still in
the table at the next claim, whatever its seq. Rolled-back rows never become visible.

**Only one publisher.** Claiming requires the lease row in `tidings_relay_lease`
(`holder`, `expires`), taken or renewed by one atomic upsert judged on the database server's
clock; the rows are read in the same statement, so a relay receives rows only while it holds a
live lease. Others get None until the holder releases it or it expires (a killed relay loses
nothing: its unremoved rows are published again by the next holder). `FOR UPDATE SKIP LOCKED`
is deliberately not used: it would let a second relay publish a key's later rows while the
first still publishes its earlier ones.

**Per-key order.** Rows are published in the order they become visible, and in seq order among
rows visible together. If transaction A's commit happens before transaction B writes its outbox
rows - B waited for A's row lock (for example both update the same order row), or B started after
A committed, as consecutive deliveries of one partition do - then A's seq is lower (the sequence
has `CACHE 1`, so it increases in real time across sessions) and B cannot be visible without A
(PostgreSQL releases A's locks only after A is visible). So A is published before B: for
transactions the application orders, publication order is commit order. Two transactions that
overlap without touching a common row have no order of their own; the relay publishes them in
visibility order, and every consumer sees that one order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import hashlib
import itertools
import logging
import operator
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import msgspec
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from tidings.errors import (
    ConfigError,
    DuplicateEventError,
    InboxConflictError,
    IntegrityError,
    MigrationError,
    StorageError,
    TransactionAbortedError,
)
from tidings.records import Headers, Message
from tidings.stores.base import (
    InboxKey,
    InboxStatus,
    OutboxRow,
    Params,
    Position,
    Row,
    SetAside,
    Store,
    Transaction,
)
from tidings.stores.transaction import OutboxEntry

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

log = logging.getLogger("tidings.store.postgres")

CHANNEL = "tidings_outbox"
SCHEMA_VERSION = 2
DEFAULT_POOL_SIZE = 10
DEFAULT_RETRY_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 10
POOL_TIMEOUT_S = 30.0
OUTBOX_UNIQUE = "tidings_outbox_event"
INBOX_PRIMARY_KEY = "tidings_inbox_pkey"

# Framework schema, per version: version N's statements bring version N-1 to N.
FRAMEWORK_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS tidings_outbox (
            seq bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
            topic text NOT NULL,
            event_id text NOT NULL,
            key bytea,
            value bytea NOT NULL,
            headers bytea,
            created timestamptz NOT NULL DEFAULT clock_timestamp(),
            CONSTRAINT tidings_outbox_event UNIQUE (event_id, topic)
        )""",
        """CREATE TABLE IF NOT EXISTS tidings_inbox (
            consumer text COLLATE "C" NOT NULL,
            event_id text COLLATE "C" NOT NULL,
            status text NOT NULL,
            topic text NOT NULL,
            partition integer NOT NULL,
            "offset" bigint NOT NULL,
            processed timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (consumer, event_id)
        )""",
        """CREATE TABLE IF NOT EXISTS tidings_relay_lease (
            name text PRIMARY KEY,
            holder text NOT NULL,
            expires timestamptz NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS tidings_migrations (
            id integer PRIMARY KEY,
            statement text NOT NULL,
            applied timestamptz NOT NULL DEFAULT clock_timestamp()
        )""",
    ],
    2: [
        """CREATE TABLE IF NOT EXISTS tidings_outbox_unpublishable (
            seq bigint PRIMARY KEY,
            topic text NOT NULL,
            event_id text NOT NULL,
            key bytea,
            value bytea NOT NULL,
            headers bytea,
            created timestamptz NOT NULL,
            error text NOT NULL,
            set_aside timestamptz NOT NULL DEFAULT clock_timestamp()
        )""",
    ],
}

# The rows, only while `holder` has a live lease: no row at all means no lease; one row of
# NULLs means a lease and an empty outbox. Rows stop once those before add up to max_bytes.
_READ_WITH_LEASE = """
    SELECT o.seq, o.topic, o.event_id, o.key, o.value, o.headers
    FROM tidings_relay_lease l
    LEFT JOIN LATERAL (
        SELECT seq, topic, event_id, key, value, headers FROM (
            SELECT *, sum(size) OVER (ORDER BY seq) - size AS before FROM (
                SELECT seq, topic, event_id, key, value, headers,
                    octet_length(value) + coalesce(octet_length(key), 0)
                        + coalesce(octet_length(headers), 0) AS size
                FROM tidings_outbox
                WHERE seq <> ALL(%(exclude)s::bigint[])
                ORDER BY seq LIMIT %(limit)s
            ) first
        ) sized
        WHERE before < %(max_bytes)s
    ) o ON true
    WHERE l.name = 'outbox' AND l.holder = %(relay)s AND l.expires > clock_timestamp()
"""
# One statement for all of a flush's rows; seqs are assigned in the rows' order. Arrays go in
# binary (%b): several times cheaper to build than text arrays of bytea.
_OUTBOX_ADD_ALL = """
    WITH added AS (
        INSERT INTO tidings_outbox (topic, event_id, key, value, headers)
        SELECT topic, event_id, key, value, headers
        FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::bytea[], %b::bytea[])
            WITH ORDINALITY AS r(topic, event_id, key, value, headers, n)
        ORDER BY n
        RETURNING 1
    )
    SELECT pg_notify(%s, %s) WHERE EXISTS (SELECT FROM added)
"""
"""Writes outbox rows and, in the same round trip, queues the NOTIFY that wakes relays (sent
by PostgreSQL at commit, once per transaction however many flushes, dropped with a rollback)."""
_INBOX_FIND = """
    SELECT i.consumer, i.event_id
    FROM unnest(%b::text[], %b::text[]) AS k(consumer, event_id)
    JOIN tidings_inbox i
    ON i.consumer = k.consumer COLLATE "C" AND i.event_id = k.event_id COLLATE "C"
"""
# Rows go in in the given order: the dispatcher gives offset order, as its per-record path
# inserts them, so concurrent redeliveries of one partition take the pairs' locks in one order.
_INBOX_ADD_ALL = """
    INSERT INTO tidings_inbox (consumer, event_id, status, topic, partition, "offset")
    SELECT consumer, event_id, 'done', topic, part, off
    FROM unnest(%b::text[], %b::text[], %b::text[], %b::integer[], %b::bigint[])
        AS e(consumer, event_id, topic, part, off)
"""
# Take or renew the lease atomically (judged on the server's clock), then read in one statement.
_CLAIM = """
    WITH lease AS (
        INSERT INTO tidings_relay_lease AS l (name, holder, expires)
        VALUES ('outbox', %(relay)s, clock_timestamp() + make_interval(secs => %(lease_s)s))
        ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
        WHERE l.holder = excluded.holder OR l.expires <= clock_timestamp()
        RETURNING holder
    )
    SELECT o.seq, o.topic, o.event_id, o.key, o.value, o.headers
    FROM lease
    LEFT JOIN LATERAL (
        SELECT seq, topic, event_id, key, value, headers FROM (
            SELECT *, sum(size) OVER (ORDER BY seq) - size AS before FROM (
                SELECT seq, topic, event_id, key, value, headers,
                    octet_length(value) + coalesce(octet_length(key), 0)
                        + coalesce(octet_length(headers), 0) AS size
                FROM tidings_outbox
                WHERE seq <> ALL(%(exclude)s::bigint[])
                ORDER BY seq LIMIT %(limit)s
            ) first
        ) sized
        WHERE before < %(max_bytes)s
    ) o ON true
"""

_headers_encoder = msgspec.msgpack.Encoder()
_headers_decoder = msgspec.msgpack.Decoder(Headers)


@functools.lru_cache(maxsize=256)
def _encoded_headers(headers: Headers) -> bytes | None:
    return _headers_encoder.encode(headers) if headers else None


# ? placeholders -------------------------------------------------------------------------------

_SPECIAL = re.compile(r"[?%'\"$/-]")
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")


def _is_ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$" or ord(ch) > 127


def _end_of_literal(text: str, start: int, quote: str, backslash: bool) -> int:
    """Index just past the literal opened at `start` (doubled quotes stay inside)."""
    i, n = start + 1, len(text)
    while i < n:
        ch = text[i]
        if backslash and ch == "\\":
            i += 2
        elif ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _end_of_block_comment(text: str, start: int) -> int:
    """Index just past the /* comment */ at `start` (PostgreSQL nests them)."""
    depth, i, n = 0, start, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


@functools.lru_cache(maxsize=1024)
def translate_placeholders(statement: str) -> str:
    """`statement` with `?` placeholders as psycopg `%s` ones (see the module docstring)."""
    out: list[str] = []
    i, n = 0, len(statement)
    while i < n:
        match = _SPECIAL.search(statement, i)
        if match is None:
            out.append(statement[i:])
            break
        j = match.start()
        out.append(statement[i:j])
        ch = statement[j]
        end = j + 1
        if ch == "?":
            if statement.startswith("??", j):
                out.append("?")
                end = j + 2
            else:
                out.append("%s")
            i = end
            continue
        if ch == "%":
            out.append("%%")
            i = end
            continue
        if ch == "'":
            escapes = (
                j > 0
                and statement[j - 1] in "eE"
                and (j < 2 or not _is_ident_char(statement[j - 2]))
            )
            end = _end_of_literal(statement, j, "'", escapes)
        elif ch == '"':
            end = _end_of_literal(statement, j, '"', False)
        elif ch == "-" and statement.startswith("--", j):
            newline = statement.find("\n", j)
            end = n if newline < 0 else newline + 1
        elif ch == "/" and statement.startswith("/*", j):
            end = _end_of_block_comment(statement, j)
        elif ch == "$" and (j == 0 or not _is_ident_char(statement[j - 1])):
            tag = _DOLLAR_TAG.match(statement, j)
            if tag is not None:
                close = statement.find(tag.group(), tag.end())
                end = n if close < 0 else close + len(tag.group())
        out.append(statement[j:end].replace("%", "%%"))
        i = end
    return "".join(out)


def _arguments(params: Params) -> Sequence[Any]:
    if isinstance(params, dict):
        raise TypeError(
            "the PostgreSQL store takes ? placeholders with a sequence of parameters; named "
            "parameters (a dict) are not supported"
        )
    return params


# URLs and errors --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostgresURL:
    conninfo: str
    schema: str
    pool_size: int
    retry_s: float
    masked: str
    """The URL with its password replaced by ***."""
    where: str
    """host:port/dbname, for messages."""
    user: str
    secrets: tuple[str, ...]


OPTIONS = frozenset({"schema", "pool_size", "retry_s"})
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def parse_url(url: str, **overrides: Any) -> PostgresURL:
    """Split `url` into libpq connection parameters and tidings' own options."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"not a postgresql:// URL: {_mask_url(url)!r}")
    secrets = _secrets(parts)
    masked = _mask_url(url)
    # Split the query string without re-encoding it: libpq gets its parameters byte for byte.
    items = [item for item in parts.query.split("&") if item]
    ours = [item for item in items if _unquote(item.partition("=")[0]) in OPTIONS]
    options = {_unquote(k): _unquote(v) for k, _, v in (item.partition("=") for item in ours)}
    options.update({k: str(v) for k, v in overrides.items() if v is not None})
    unknown = sorted(set(overrides) - OPTIONS)
    if unknown:
        raise ConfigError(f"unknown PostgreSQL store option(s): {', '.join(unknown)}")
    libpq_url = urlunsplit(parts._replace(query="&".join(i for i in items if i not in ours)))
    try:
        params = conninfo_to_dict(libpq_url)
    except psycopg.Error as exc:
        raise ConfigError(
            f"malformed PostgreSQL URL {masked!r}: {_scrub(str(exc), secrets)}"
        ) from None
    params.setdefault("application_name", "tidings")
    if "PGCONNECT_TIMEOUT" not in os.environ:
        params.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)
    schema = options.get("schema") or "public"
    if len(schema.encode()) > 63:
        raise ConfigError(f"schema name {schema!r} is longer than PostgreSQL's 63 bytes")
    try:
        pool_size = int(options.get("pool_size", DEFAULT_POOL_SIZE))
        retry_s = float(options.get("retry_s", DEFAULT_RETRY_S))
    except ValueError as exc:
        raise ConfigError(f"bad option in {masked!r}: {exc}") from None
    if pool_size < 1:
        raise ConfigError(f"pool_size must be at least 1, got {pool_size}")
    if retry_s < 0:
        raise ConfigError(f"retry_s must not be negative, got {retry_s}")
    host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    user = str(params.get("user") or os.environ.get("PGUSER") or _os_user())
    dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or user)
    return PostgresURL(
        conninfo=make_conninfo("", **params),
        schema=schema,
        pool_size=pool_size,
        retry_s=retry_s,
        masked=masked,
        where=f"{host}:{port}/{dbname}",
        user=user,
        secrets=secrets,
    )


def _unquote(text: str | None) -> str:
    return unquote(text) if text else ""


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "?"


def _secrets(parts: SplitResult) -> tuple[str, ...]:
    """The password(s) in a URL, raw and decoded, longest first (for scrubbing messages)."""
    found = {parts.password or "", _unquote(parts.password)}
    for item in parts.query.split("&"):
        name, _, value = item.partition("=")
        if _unquote(name) in _SECRET_PARAMS:
            found |= {value, _unquote(value)}
    return tuple(sorted(found - {""}, key=len, reverse=True))


def _mask_url(url: str) -> str:
    """`url` with its password (in the user info or the query) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    items = [
        f"{item.partition('=')[0]}=***"
        if _unquote(item.partition("=")[0]) in _SECRET_PARAMS
        else item
        for item in (parts.query.split("&") if parts.query else [])
    ]
    return urlunsplit(parts._replace(netloc=netloc, query="&".join(items)))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    text = " ".join(text.split())
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


_PERMANENT = (
    "authentication failed",
    "no password supplied",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "certificate",
    "sslmode",
    "invalid",
)
_LOST_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
_PIPELINES = psycopg.AsyncPipeline.is_supported()
"""Whether libpq has pipeline mode (version 14+; psycopg[binary] bundles a recent one)."""


def is_connection_loss(exc: BaseException) -> bool:
    """True for errors that mean "no usable connection right now" (worth retrying)."""
    if isinstance(exc, PoolTimeout | PoolClosed) or not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    if state is None:
        text = str(exc).lower()
        return not any(marker in text for marker in _PERMANENT)
    return state.startswith("08") or state in _LOST_STATES


def _lock_key(*parts: str) -> int:
    """A stable advisory-lock key (bigint) for `parts`."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# transactions -----------------------------------------------------------------------------------


class PostgresTransaction(Transaction):
    """A transaction on one pooled connection."""

    driver_errors = (psycopg.Error,)
    IMMEDIATE_CONSTRAINTS = "SET CONSTRAINTS ALL IMMEDIATE"

    def __init__(self, conn: Conn, store: PostgresStore) -> None:
        super().__init__()
        self._conn = conn
        self._store = store
        self._cursor = conn.cursor()
        """One cursor for every statement (its adapters are looked up once per transaction);
        each caller reads a statement's results before the next statement runs."""

    def _usable_after_interruption(self) -> bool:
        # cancelled (a timeout, a shutdown) before the statement finished: PostgreSQL may have
        # aborted the transaction, or be still running the statement
        return self._conn.info.transaction_status == TransactionStatus.INTRANS

    def _copy_params(self, params: Params) -> Params:
        return tuple(_arguments(params))

    def _error(self, exc: Exception) -> Exception:
        """`exc` translated: TransactionAbortedError, IntegrityError, StorageError, or itself."""
        if isinstance(exc, psycopg.errors.InFailedSqlTransaction):
            return TransactionAbortedError(
                "PostgreSQL had aborted the transaction at an earlier statement; it can only be"
                " rolled back"
            )
        if isinstance(exc, psycopg.IntegrityError):
            return IntegrityError(str(exc), exc)
        if isinstance(exc, psycopg.OperationalError):
            return self._store._translate(exc, "in a transaction; it was rolled back")
        return exc

    async def _exec(self, query: Any, params: Sequence[Any]) -> psycopg.AsyncCursor[TupleRow]:
        try:
            return await self._cursor.execute(query, params)
        except psycopg.Error as exc:
            error = self._error(exc)
            if error is exc:
                raise
            raise error from exc

    async def _run(self, statement: str, params: Params) -> psycopg.AsyncCursor[TupleRow]:
        return await self._exec(translate_placeholders(statement), _arguments(params))

    async def _execute(self, sql: str, params: Params) -> int:
        return (await self._run(sql, params)).rowcount

    async def _fetchall(self, sql: str, params: Params) -> list[Row]:
        cursor = await self._run(sql, params)
        if cursor.description is None:
            return []
        return await cursor.fetchall()

    async def _run_deferred(self, pending: Sequence[tuple[str, Params]]) -> None:
        """One pipeline: consecutive runs of the same statement as one `executemany`, one
        round trip for the lot (instead of one per statement). Without pipeline support in
        libpq (before version 14), one round trip per statement."""
        try:
            await self._send(pending)
        except Exception as exc:
            error = self._error(exc)
            if error is exc:
                raise
            raise error from exc

    async def _send(self, pending: Sequence[tuple[str, Params]]) -> None:
        if not _PIPELINES:
            await self._execute_runs(pending)
            return
        failure: psycopg.Error | None = None
        try:
            async with self._conn.pipeline():
                try:
                    await self._execute_runs(pending)
                except psycopg.Error as exc:
                    failure = exc  # raised below: leaving the pipeline would log it otherwise
        except psycopg.Error as exc:
            failure = failure or exc
        if failure is not None:
            raise failure

    async def _execute_runs(self, pending: Sequence[tuple[str, Params]]) -> None:
        for statement, run in itertools.groupby(pending, key=operator.itemgetter(0)):
            await self._cursor.executemany(translate_placeholders(statement), [p for _, p in run])

    async def _write_outbox(self, rows: Sequence[OutboxEntry]) -> None:
        """One statement for the lot, which also queues the NOTIFY that wakes relays."""
        try:
            await self._cursor.execute(
                _OUTBOX_ADD_ALL,
                (
                    [topic for topic, _, _ in rows],
                    [event_id for _, event_id, _ in rows],
                    [m.key for _, _, m in rows],
                    [m.value for _, _, m in rows],
                    [_encoded_headers(m.headers) for _, _, m in rows],
                    CHANNEL,
                    self._store.schema,
                ),
            )
        except psycopg.Error as exc:
            if (
                isinstance(exc, psycopg.errors.UniqueViolation)
                and exc.diag.constraint_name == OUTBOX_UNIQUE
            ):
                raise DuplicateEventError(
                    "an event id was published twice to one topic in this transaction or while "
                    f"still in the outbox ({exc.diag.message_detail or exc})"
                ) from exc
            error = self._error(exc)
            if error is exc:
                raise
            raise error from exc

    async def _inbox_add(
        self, consumer: str, event_id: str, position: Position, status: InboxStatus
    ) -> bool:
        cursor = await self._exec(
            'INSERT INTO tidings_inbox (consumer, event_id, status, topic, partition, "offset")'
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (consumer, event_id, status.value, *position),
        )
        return cursor.rowcount == 1

    async def _inbox_find(self, keys: Sequence[InboxKey]) -> set[InboxKey]:
        cursor = await self._exec(
            _INBOX_FIND, ([consumer for consumer, _ in keys], [event_id for _, event_id in keys])
        )
        return {(consumer, event_id) for consumer, event_id in await cursor.fetchall()}

    async def _inbox_add_all(self, entries: Sequence[tuple[str, str, Position]]) -> None:
        try:
            await self._exec(
                _INBOX_ADD_ALL,
                (
                    [consumer for consumer, _, _ in entries],
                    [event_id for _, event_id, _ in entries],
                    [topic for _, _, (topic, _, _) in entries],
                    [partition for _, _, (_, partition, _) in entries],
                    [offset for _, _, (_, _, offset) in entries],
                ),
            )
        except IntegrityError as exc:
            orig = exc.orig
            if not (
                isinstance(orig, psycopg.errors.UniqueViolation)
                and orig.diag.constraint_name == INBOX_PRIMARY_KEY
            ):
                raise
            raise InboxConflictError(
                f"an inbox row already exists for one of {len(entries)} events "
                f"({orig.diag.message_detail or orig})"
            ) from orig

    async def _inbox_get(self, consumer: str, event_id: str) -> InboxStatus | None:
        cursor = await self._exec(
            "SELECT status FROM tidings_inbox WHERE consumer = %s AND event_id = %s",
            (consumer, event_id),
        )
        row = await cursor.fetchone()
        return None if row is None else InboxStatus(row[0])

    async def _inbox_delete(self, consumer: str, event_id: str) -> None:
        await self._exec(
            "DELETE FROM tidings_inbox WHERE consumer = %s AND event_id = %s",
            (consumer, event_id),
        )


# the store --------------------------------------------------------------------------------------


class PostgresStore(Store):
    """The PostgreSQL store. One instance per process and database schema; safe to share between
    the tasks of one event loop. `url` is the store URL with its password masked."""

    OPTIONS = OPTIONS

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int | None = None,
        retry_s: float | None = None,
    ) -> None:
        self._config = parse_url(url, schema=schema, pool_size=pool_size, retry_s=retry_s)
        self.url = self._config.masked
        self.schema = self._config.schema
        self._search_path = sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._fresh_leases: dict[str, float] = {}
        self._callbacks: list[Callable[[], None]] = []
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    # connections and errors -----------------------------------------------------------------

    def _translate(self, exc: psycopg.Error, context: str) -> Exception:
        """A StorageError naming the server (never the password) for connection problems;
        `exc` itself for everything else (SQL errors, constraint violations...)."""
        config = self._config
        text = _scrub(str(exc), config.secrets)
        if isinstance(exc, PoolTimeout):
            return StorageError(
                f"PostgreSQL at {config.where}: no connection within {POOL_TIMEOUT_S:.0f}s "
                f"(server unreachable, or all {config.pool_size} pooled connections busy)"
            )
        if isinstance(exc, PoolClosed):
            return StorageError(f"PostgreSQL at {config.where}: store is closed")
        if not isinstance(exc, psycopg.OperationalError):
            return exc
        lowered = text.lower()
        if "authentication failed" in lowered or "no password supplied" in lowered:
            return StorageError(
                f"cannot log in to PostgreSQL at {config.where} as user {config.user!r} "
                f"(check the user and password of the store URL): {text}"
            )
        if exc.sqlstate is None and any(marker in lowered for marker in _PERMANENT):
            return StorageError(f"cannot connect to PostgreSQL at {config.where}: {text}")
        if is_connection_loss(exc):
            return StorageError(
                f"lost or no connection to PostgreSQL at {config.where} {context}: {text}"
            )
        return exc

    async def _connect(self, **kwargs: Any) -> Conn:
        """A new connection (autocommit), retried while the server is unreachable."""
        deadline = time.monotonic() + self._config.retry_s
        delay = 0.05
        while True:
            try:
                return await psycopg.AsyncConnection.connect(
                    self._config.conninfo, autocommit=True, **kwargs
                )
            except psycopg.OperationalError as exc:
                if not is_connection_loss(exc) or time.monotonic() + delay > deadline:
                    raise self._translate(exc, f"(retried for {self._config.retry_s:g}s)") from None
                log.warning(
                    "PostgreSQL at %s unreachable; retrying in %.2fs", self._config.where, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _configure(self, conn: Conn) -> None:
        await conn.execute(self._search_path)

    async def _retrying(self, operation: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `operation` on a pooled connection outside any transaction, retrying it on a
        fresh connection while the connection is lost (operations here are idempotent)."""
        await self.start()
        pool = self._pool
        assert pool is not None
        deadline = time.monotonic() + self._config.retry_s
        delay = 0.05
        while True:
            try:
                async with pool.connection() as conn:
                    return await operation(conn)
            except psycopg.OperationalError as exc:
                if not is_connection_loss(exc) or time.monotonic() + delay > deadline:
                    error = self._translate(exc, f"(retried for {self._config.retry_s:g}s)")
                    if error is exc:
                        raise
                    raise error from exc
                log.warning(
                    "connection to PostgreSQL at %s lost (%s); retrying in %.2fs",
                    self._config.where,
                    _scrub(str(exc), self._config.secrets),
                    delay,
                )
                with contextlib.suppress(Exception):
                    await pool.check()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise StorageError(f"PostgreSQL store {self.url}: store is closed")
            conn = await self._connect()
            try:
                await self._create_schema(conn)
            finally:
                await conn.close()
            size = self._config.pool_size
            pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
                self._config.conninfo,
                kwargs={"autocommit": True},
                min_size=min(2, size),
                max_size=size,
                open=False,
                configure=self._configure,
                name=f"tidings-{self.schema}",
                timeout=POOL_TIMEOUT_S,
            )
            try:
                await pool.open(wait=True, timeout=max(self._config.retry_s, 5.0))
            except psycopg.Error as exc:
                await pool.close()
                raise self._translate(exc, "opening the pool") from None
            self._pool = pool
            self._started = True

    async def _create_schema(self, conn: Conn) -> None:
        """Create the schema and framework tables, or migrate them; several processes may do
        this at once (serialized by a transaction-scoped advisory lock)."""
        schema = self.schema
        try:
            async with conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (_lock_key("tidings.schema", schema),)
                )
                cursor = await conn.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
                )
                if await cursor.fetchone() is None:
                    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                await conn.execute(self._search_path)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS tidings_meta"
                    " (key text PRIMARY KEY, value text NOT NULL)"
                )
                cursor = await conn.execute("SELECT value FROM tidings_meta WHERE key = 'schema'")
                row = await cursor.fetchone()
                current = 0 if row is None else int(row[0])
                if current > SCHEMA_VERSION:
                    raise StorageError(
                        f"PostgreSQL at {self._config.where}, schema {schema!r}: written by a "
                        f"newer tidings (store schema {current}); this version understands "
                        f"{SCHEMA_VERSION}"
                    )
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in FRAMEWORK_MIGRATIONS[version]:
                        await conn.execute(statement)
                if current < SCHEMA_VERSION:
                    await conn.execute(
                        "INSERT INTO tidings_meta (key, value) VALUES ('schema', %s)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(SCHEMA_VERSION),),
                    )
        except psycopg.Error as exc:
            error = self._translate(exc, "creating the framework tables")
            if error is exc:
                raise StorageError(
                    f"PostgreSQL at {self._config.where}: cannot create the framework tables "
                    f"in schema {schema!r}: {_scrub(str(exc), self._config.secrets)}"
                ) from exc
            raise error from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
        async with self._start_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # transactions -----------------------------------------------------------------------------

    async def _checkout(self) -> tuple[Conn, AbstractAsyncContextManager[Any]]:
        """A pooled connection inside BEGIN. Connection loss up to here is retried: nothing of
        the caller's transaction has run yet."""
        pool = self._pool
        assert pool is not None
        deadline = time.monotonic() + self._config.retry_s
        delay = 0.05
        while True:
            try:
                conn = await pool.getconn()
            except psycopg.Error as exc:
                error = self._translate(exc, "checking out a connection")
                if error is exc:
                    raise
                raise error from exc
            block = conn.transaction()
            try:
                await block.__aenter__()
                return conn, block
            except psycopg.OperationalError as exc:
                await pool.putconn(conn)
                if not is_connection_loss(exc) or time.monotonic() + delay > deadline:
                    error = self._translate(exc, "at BEGIN")
                    if error is exc:
                        raise
                    raise error from exc
                with contextlib.suppress(Exception):
                    await pool.check()
            except BaseException:
                await pool.putconn(conn)
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    @contextlib.asynccontextmanager
    async def _begin(self) -> AsyncIterator[PostgresTransaction]:
        await self.start()
        pool = self._pool
        assert pool is not None
        conn, block = await self._checkout()
        try:
            tx = PostgresTransaction(conn, self)
            try:
                yield tx
                if conn.info.transaction_status == TransactionStatus.INERROR:
                    raise TransactionAbortedError(
                        "a statement of this transaction failed and its error was caught, but"
                        " PostgreSQL had aborted the transaction: it was rolled back"
                    )
            except BaseException as exc:
                if not await block.__aexit__(type(exc), exc, exc.__traceback__):
                    raise
                return  # pragma: no cover - only psycopg.Rollback is swallowed
            try:
                await block.__aexit__(None, None, None)
            except psycopg.IntegrityError as exc:  # a deferred constraint, checked at COMMIT
                raise IntegrityError(f"at COMMIT: {exc}", exc) from exc
            except psycopg.OperationalError as exc:
                error = self._translate(exc, "during COMMIT; its outcome is unknown")
                if error is exc:
                    raise
                raise error from exc
        finally:
            await pool.putconn(conn)

    async def migrate(self, migrations: Sequence[str]) -> int:
        """Apply the migrations not applied yet, each in its own transaction, under a session
        advisory lock so that processes starting together apply each one once. A migration may
        hold several statements (`;`-separated) but no transaction control."""
        key = _lock_key("tidings.migrate", self.schema)

        async def run(conn: Conn) -> int:
            await conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                return await self._migrate(conn, migrations)
            finally:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

        return await self._retrying(run)

    async def _migrate(self, conn: Conn, migrations: Sequence[str]) -> int:
        where = f"PostgreSQL at {self._config.where}, schema {self.schema!r}"
        cursor = await conn.execute("SELECT id, statement FROM tidings_migrations")
        applied: dict[int, str] = {row[0]: row[1] for row in await cursor.fetchall()}
        ran = 0
        for number, statement in enumerate(migrations, start=1):
            if number in applied:
                if applied[number] != statement:
                    raise MigrationError(
                        f"{where}: migration {number} was changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO tidings_migrations (id, statement) VALUES (%s, %s)",
                        (number, statement),
                    )
            except psycopg.Error as exc:
                if is_connection_loss(exc):
                    raise
                raise MigrationError(
                    f"{where}: migration {number} failed: {_scrub(str(exc), ())}"
                ) from exc
            ran += 1
        return ran

    async def query(self, sql: str, params: Params = ()) -> list[Row]:
        query = translate_placeholders(sql)
        arguments = _arguments(params)

        async def run(conn: Conn) -> list[Row]:
            cursor = await conn.execute(query, arguments)
            if cursor.description is None:
                return []
            return await cursor.fetchall()

        return await self._retrying(run)

    # relay side -------------------------------------------------------------------------------

    async def outbox_claim(
        self,
        relay: str,
        limit: int,
        lease_s: float,
        *,
        exclude: Collection[int] = (),
        max_bytes: int | None = None,
    ) -> list[OutboxRow] | None:
        """Rows only while `relay` holds the lease; renewed once half of it has passed.
        Excluded seqs are left out exactly (seqs do not follow commit order here)."""
        params = {
            "relay": relay,
            "limit": limit,
            "lease_s": float(lease_s),
            "exclude": list(exclude),
            "max_bytes": 2**62 if max_bytes is None else max_bytes,
        }

        async def read(conn: Conn, statement: str) -> list[tuple[Any, ...]]:
            async with conn.cursor(binary=True) as cursor:
                await cursor.execute(statement, params)
                return await cursor.fetchall()

        if self._fresh_leases.get(relay, 0.0) > time.monotonic():
            rows = await self._retrying(lambda conn: read(conn, _READ_WITH_LEASE))
            if rows:
                return _outbox_rows(rows)
            self._fresh_leases.pop(relay, None)
        asked = time.monotonic()
        rows = await self._retrying(lambda conn: read(conn, _CLAIM))
        if not rows:
            self._fresh_leases.pop(relay, None)
            return None
        # The server set expires >= (its clock when asked) + lease_s, so locally the lease is
        # safely ours until asked + lease_s; renew once half of it has passed.
        self._fresh_leases[relay] = asked + lease_s / 2
        return _outbox_rows(rows)

    async def outbox_remove(self, relay: str, seqs: Sequence[int]) -> None:
        """Deletes exactly `seqs`: rows that committed late, with lower seqs, stay for the next
        claim."""
        if not seqs:
            return
        ids = list(seqs)

        async def remove(conn: Conn) -> None:
            await conn.execute("DELETE FROM tidings_outbox WHERE seq = ANY(%s::bigint[])", (ids,))

        await self._retrying(remove)

    async def outbox_set_aside(self, relay: str, items: Sequence[SetAside]) -> None:
        if not items:
            return

        async def set_aside(conn: Conn) -> None:
            async with conn.transaction():
                for item in items:
                    cursor = await conn.execute(
                        "WITH moved AS (DELETE FROM tidings_outbox WHERE seq = %s RETURNING *)"
                        " INSERT INTO tidings_outbox_unpublishable"
                        " (seq, topic, event_id, key, value, headers, created, error)"
                        " SELECT seq, topic, event_id, key, value, headers, created, %s FROM moved",
                        (item.row.seq, item.error),
                    )
                    if cursor.rowcount != 1 or item.notice is None:
                        continue
                    topic, notice_id, message = item.notice
                    await conn.execute(
                        "INSERT INTO tidings_outbox (topic, event_id, key, value, headers)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        (
                            topic,
                            notice_id,
                            message.key,
                            message.value,
                            _encoded_headers(message.headers),
                        ),
                    )

        await self._retrying(set_aside)

    async def outbox_release(self, relay: str) -> None:
        self._fresh_leases.pop(relay, None)

        async def release(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM tidings_relay_lease WHERE name = 'outbox' AND holder = %s", (relay,)
            )

        await self._retrying(release)

    async def outbox_size(self) -> int:
        rows = await self.query("SELECT count(*) FROM tidings_outbox")
        return int(rows[0][0])

    async def inbox_cleanup(
        self, consumer_prefix: str, committed: dict[tuple[str, int], int], older_than_s: float
    ) -> int:
        if not committed:
            return 0
        topics = [topic for topic, _ in committed]
        partitions = [partition for _, partition in committed]
        offsets = list(committed.values())

        async def cleanup(conn: Conn) -> int:
            cursor = await conn.execute(
                "DELETE FROM tidings_inbox i"
                " USING unnest(%s::text[], %s::integer[], %s::bigint[]) AS c(topic, part, upto)"
                " WHERE i.consumer >= %s AND starts_with(i.consumer, %s)"
                " AND i.status = 'done'"
                " AND i.processed < clock_timestamp() - make_interval(secs => %s)"
                ' AND i.topic = c.topic AND i.partition = c.part AND i."offset" < c.upto',
                (
                    topics,
                    partitions,
                    offsets,
                    consumer_prefix,
                    consumer_prefix,
                    float(older_than_s),
                ),
            )
            return cursor.rowcount

        return await self._retrying(cleanup)

    # wake-ups ---------------------------------------------------------------------------------

    def on_outbox(self, callback: Callable[[], None]) -> None:
        """Call `callback` when a transaction with outbox rows commits in any process using this
        database schema (LISTEN on a dedicated connection, reconnected with backoff; after a
        reconnect the callback runs once, since notifications may have been missed). Must be
        called with the store's event loop running."""
        self._callbacks.append(callback)
        if self._listener is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._listener = loop.create_task(self._listen(), name="tidings-postgres-listen")

    def _wake(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                log.exception("outbox wake-up callback failed")

    async def _listen(self) -> None:
        delay = 0.1
        missed = False
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self._config.conninfo, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                    if missed:
                        self._wake()
                    missed = False
                    delay = 0.1
                    while not self._closed:
                        async for notify in conn.notifies(timeout=30.0):
                            if notify.payload == self.schema:
                                self._wake()
                        # Quiet for a while: make sure the connection is still alive.
                        await asyncio.wait_for(conn.execute("SELECT 1"), 10.0)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError, TimeoutError) as exc:
                missed = True
                log.warning(
                    "outbox LISTEN connection to PostgreSQL at %s failed (%s); reconnecting "
                    "in %.1fs",
                    self._config.where,
                    _scrub(str(exc), self._config.secrets),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def _outbox_rows(rows: list[tuple[Any, ...]]) -> list[OutboxRow]:
    return [
        OutboxRow(
            seq,
            topic,
            event_id,
            Message(value, key, _headers_decoder.decode(headers) if headers else ()),
        )
        for seq, topic, event_id, key, value, headers in rows
        if seq is not None
    ]
