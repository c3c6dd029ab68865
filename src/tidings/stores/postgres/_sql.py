"""The framework's tables in PostgreSQL, created or migrated on start, and the statements tidings
runs on them."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from tidings.errors import StorageError
from tidings.stores.postgres._errors import translate
from tidings.stores.postgres._url import PostgresURL, scrub

Conn = psycopg.AsyncConnection[TupleRow]

CHANNEL_PREFIX = "tidings_outbox:"
MAX_IDENTIFIER = 63
"""PostgreSQL's longest identifier (and channel name), in bytes."""


@functools.cache
def channel(schema: str) -> str:
    """Where a commit with outbox rows in `schema` NOTIFYs (payload: the schema): a channel per
    schema, so that only that schema's processes are woken. PostgreSQL delivers a notification
    to every client listening on its channel; on one shared channel each process of each schema
    in the database woke for every commit of every other schema to compare the payload (with 7
    services, 6 of 7 notifications were for somebody else). A schema too long for the name is
    replaced by a digest. Cached: every transaction that publishes asks."""
    name = CHANNEL_PREFIX + schema
    if len(name.encode()) <= MAX_IDENTIFIER:
        return name
    return CHANNEL_PREFIX + hashlib.blake2b(schema.encode(), digest_size=16).hexdigest()


SCHEMA_VERSION = 3
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
    3: [
        """CREATE TABLE IF NOT EXISTS tidings_sequences (
            scope text COLLATE "C" NOT NULL,
            key bytea NOT NULL,
            last_seq bigint NOT NULL,
            PRIMARY KEY (scope, key)
        )""",
        """CREATE TABLE IF NOT EXISTS tidings_last_applied (
            scope text COLLATE "C" NOT NULL,
            source text COLLATE "C" NOT NULL,
            key text COLLATE "C" NOT NULL,
            last_value bigint NOT NULL,
            prev_value bigint,
            PRIMARY KEY (scope, source, key)
        )""",
    ],
}

INDEXES = {
    # the periodic inbox cleanup finds the rows past their retention through it; without it,
    # each cleanup read the whole inbox (days of events)
    "tidings_inbox_processed": "CREATE INDEX tidings_inbox_processed ON tidings_inbox (processed)",
}
"""Indexes any version of the schema may have, by name: created on start where missing, without
a new schema version (older versions of tidings work with them). Looked up first: CREATE INDEX IF
NOT EXISTS would lock the table against writes even when the index exists."""

REMOVING = "removed AS (DELETE FROM tidings_outbox WHERE seq = ANY(%(remove)s::bigint[]))"
"""Prefixed to CLAIM and READ_WITH_LEASE (`WITH_REMOVAL`): the published rows whose removal
was deferred go in the same round trip. The read does not see the DELETE (one snapshot), so
the claim excludes them too."""

# The rows, only while `holder` has a live lease: no row at all means no lease; one row of
# NULLs means a lease and an empty outbox. Rows stop once those before add up to max_bytes.
READ_WITH_LEASE = """
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
OUTBOX_ADD_ALL = """
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
OUTBOX_ADD_ONE = """
    WITH added AS (
        INSERT INTO tidings_outbox (topic, event_id, key, value, headers)
        VALUES (%s, %s, %b, %b, %b)
        RETURNING 1
    )
    SELECT pg_notify(%s, %s) WHERE EXISTS (SELECT FROM added)
"""
# Rows are locked in the given (sorted) order: concurrent transactions of one key queue on its
# row, and those of several keys never wait on each other in a cycle.
TAKE_SEQUENCES = """
    INSERT INTO tidings_sequences AS s (scope, key, last_seq)
    SELECT scope, key, n
    FROM unnest(%b::text[], %b::bytea[], %b::bigint[]) WITH ORDINALITY AS r(scope, key, n, i)
    ORDER BY i
    ON CONFLICT (scope, key) DO UPDATE SET last_seq = s.last_seq + excluded.last_seq
    RETURNING scope, key, last_seq
"""
TAKE_SEQUENCE = """
    INSERT INTO tidings_sequences AS s (scope, key, last_seq) VALUES (%s, %b, %s)
    ON CONFLICT (scope, key) DO UPDATE SET last_seq = s.last_seq + excluded.last_seq
    RETURNING scope, key, last_seq
"""
# Planned for each run (never prepared), with its cutoff (`now()`, which the planner can
# evaluate, unlike `clock_timestamp()`): it then reads the rows past their retention through the
# index on `processed` (INDEXES) instead of the whole inbox.
INBOX_CLEANUP = """
    DELETE FROM tidings_inbox i
    USING unnest(%s::text[], %s::integer[], %s::bigint[]) AS c(topic, part, upto)
    WHERE i.consumer >= %s AND starts_with(i.consumer, %s) AND i.status = 'done'
    AND i.processed < now() - make_interval(secs => %s)
    AND i.topic = c.topic AND i.partition = c.part AND i."offset" < c.upto
"""
# One primary-key probe per key, whatever the planner makes of the table. As a plain join it
# picks a hash join over a scan of the whole inbox for batches of ~10 keys and more (its cost
# model takes the index pages for uncached): 5-20x slower than the probes on PostgreSQL 15 with
# 1,500-20,000 rows, and a fifth of the server's CPU in the order system. OFFSET 0 keeps EXISTS
# a subplan run per key instead of a semi-join. Never prepared (planned per batch, ~0.05 ms): a
# generic plan would keep the sequential scan it picks for a table of a page as the table grows,
# until the next ANALYZE.
INBOX_FIND = """
    SELECT k.consumer, k.event_id
    FROM unnest(%b::text[], %b::text[]) AS k(consumer, event_id)
    WHERE EXISTS (
        SELECT FROM tidings_inbox i
        WHERE i.consumer = k.consumer COLLATE "C" AND i.event_id = k.event_id COLLATE "C"
        OFFSET 0
    )
"""
# One key, as most batches of a trickle have: plain parameters, no arrays to build.
INBOX_FIND_ONE = """
    SELECT consumer, event_id FROM tidings_inbox WHERE consumer = %s AND event_id = %s
"""
# Rows go in in the given order: the dispatcher gives offset order, as its per-record path
# inserts them, so concurrent redeliveries of one partition take the pairs' locks in one order.
INBOX_ADD_ALL = """
    INSERT INTO tidings_inbox (consumer, event_id, status, topic, partition, "offset")
    SELECT consumer, event_id, 'done', topic, part, off
    FROM unnest(%b::text[], %b::text[], %b::text[], %b::integer[], %b::bigint[])
        AS e(consumer, event_id, topic, part, off)
"""
INBOX_ADD_ONE = """
    INSERT INTO tidings_inbox (consumer, event_id, status, topic, partition, "offset")
    VALUES (%s, %s, 'done', %s, %s, %s)
"""
# Take or renew the lease atomically (judged on the server's clock), then read in one statement.
CLAIM = """
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


TAKE_LOCKS = (
    "SELECT count(pg_advisory_xact_lock(k)) FROM"
    " (SELECT k FROM unnest(%s::bigint[]) AS k ORDER BY k) AS keys"
)
"""Advisory locks on the keys, one after another in ascending order (a volatile function of a
sorted subquery runs in its order)."""


def one_or_arrays(
    rows: Sequence[Sequence[Any]], one: str, many: str
) -> tuple[str, tuple[Any, ...]]:
    """The statement for `rows` and its parameters: `one` with the single row's values (plain
    parameters: cheaper to build in psycopg and to plan in PostgreSQL than arrays, and most
    batches of a trickle hold one row), else `many` with a list per column (`unnest` arrays)."""
    if len(rows) == 1:
        return one, tuple(rows[0])
    return many, tuple(list(column) for column in zip(*rows, strict=True))


def lock_key(*parts: str) -> int:
    """A stable advisory-lock key (bigint) for `parts`."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def search_path(schema: str) -> sql.Composed:
    return sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))


async def create_schema(conn: Conn, config: PostgresURL) -> None:
    """Create the schema and framework tables, or migrate them; several processes may do this
    at once (serialized by a transaction-scoped advisory lock)."""
    schema = config.schema
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s)", (lock_key("tidings.schema", schema),)
            )
            cursor = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            if await cursor.fetchone() is None:
                await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            await conn.execute(search_path(schema))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS tidings_meta"
                " (key text PRIMARY KEY, value text NOT NULL)"
            )
            cursor = await conn.execute("SELECT value FROM tidings_meta WHERE key = 'schema'")
            row = await cursor.fetchone()
            current = 0 if row is None else int(row[0])
            if current > SCHEMA_VERSION:
                raise StorageError(
                    f"PostgreSQL at {config.where}, schema {schema!r}: written by a newer "
                    f"tidings (store schema {current}); this version understands {SCHEMA_VERSION}"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in FRAMEWORK_MIGRATIONS[version]:
                    await conn.execute(statement)
            for name, statement in INDEXES.items():
                cursor = await conn.execute("SELECT to_regclass(%s)", (name,))
                if (await cursor.fetchone()) == (None,):
                    await conn.execute(statement)
            if current < SCHEMA_VERSION:
                await conn.execute(
                    "INSERT INTO tidings_meta (key, value) VALUES ('schema', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )
    except psycopg.Error as exc:
        error = translate(exc, config, "creating the framework tables")
        if error is exc:
            raise StorageError(
                f"PostgreSQL at {config.where}: cannot create the framework tables "
                f"in schema {schema!r}: {scrub(str(exc), config.secrets)}"
            ) from exc
        raise error from exc


def _with_removal(statement: str) -> str:
    """`statement` (CLAIM or READ_WITH_LEASE) deleting the rows `%(remove)s` as well."""
    body = statement.strip()
    if body.startswith("WITH "):
        return f"WITH {REMOVING}, {body[5:]}"
    return f"WITH {REMOVING} {body}"


WITH_REMOVAL = {statement: _with_removal(statement) for statement in (CLAIM, READ_WITH_LEASE)}
"""CLAIM and READ_WITH_LEASE, each with the deferred removal in its round trip."""
