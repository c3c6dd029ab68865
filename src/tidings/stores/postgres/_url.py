"""Store URLs: `postgresql://user:password@host:port/dbname?schema=orders` (or `postgres://`).

Options read by tidings (everything else in the query string goes to libpq unchanged, e.g.
`sslmode`):

* `schema` (default `public`): the schema holding the framework's `tidings_*` tables and, through
  `search_path`, the user's unqualified tables. Created on `start()` if missing.
* `pool_size` (default 10): the most pooled connections.
* `retry_s` (default 10): how long a statement outside a transaction (and connecting on
  `start()`) is retried while the server is unreachable.

The password comes from the URL (or libpq's usual `PGPASSWORD` / `~/.pgpass`) and never appears
in messages: they show the URL with the password masked, and `scrub` takes it out of others'.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tidings.errors import ConfigError

DEFAULT_POOL_SIZE = 10
DEFAULT_RETRY_S = 10.0
DEFAULT_CONNECT_TIMEOUT_S = 10


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
        raise ConfigError(f"not a postgresql:// URL: {mask_url(url)!r}")
    secrets = _secrets(parts)
    masked = mask_url(url)
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
            f"malformed PostgreSQL URL {masked!r}: {scrub(str(exc), secrets)}"
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


def mask_url(url: str) -> str:
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


def scrub(text: str, secrets: Sequence[str]) -> str:
    text = " ".join(text.split())
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
