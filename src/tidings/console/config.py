"""What the console runs with: the broker, its token, where its index lives, the optional
dashboard, Jaeger and AsyncAPI document."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from tidings.errors import ConfigError

TOKEN_ENV = "TIDINGS_CONSOLE_TOKEN"  # noqa: S105 (a variable name)
JAEGER_ENV = "TIDINGS_JAEGER_URL"
TOKEN_FILE = "console-token"  # noqa: S105 (a file name)
INDEX_FILE = "console-index.db"
DEFAULT_DIRECTORY = ".tidings"


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """`token` guards every action that changes something; `index_path` is the console's own
    SQLite index of the log (a cache it can rebuild); `dashboard` an app's dashboard (an
    http(s) URL answering the dashboard document, or `module:attribute`); `jaeger_url` a
    Jaeger UI to link traces to; `asyncapi_path` an AsyncAPI 3 document (JSON or YAML, as
    `tidings asyncapi` writes it) shown on the API page besides the one made from the schema
    registry."""

    broker_url: str
    token: str
    index_path: str
    dashboard: str | None = None
    jaeger_url: str | None = None
    asyncapi_path: str | None = None
    sample_interval: float = 2.0
    """Seconds between samples of lag and end offsets (the live charts and rates)."""
    index_interval: float = 1.0
    """Seconds the indexer waits when it has caught up with the log."""
    secure_cookies: bool = False
    """Mark cookies Secure (behind an HTTPS proxy)."""

    def __post_init__(self) -> None:
        if not self.token:
            raise ConfigError("the console token must not be empty")


def data_directory(broker_url: str) -> Path:
    """Where the console keeps its files: next to an embedded broker's database, else
    `.tidings` in the current directory."""
    if broker_url.startswith("sqlite:"):
        from tidings._sqlite import parse_url

        path = parse_url(broker_url, allowed={"synchronous", "max_message_bytes"}).path
        return Path(path).resolve().parent
    return Path(DEFAULT_DIRECTORY).resolve()


def index_path(broker_url: str) -> str:
    """The index file for `broker_url`: one per broker in the data directory."""
    directory = data_directory(broker_url)
    if broker_url.startswith("sqlite:"):
        return str(directory / INDEX_FILE)
    digest = hashlib.sha256(broker_url.encode()).hexdigest()[:10]
    return str(directory / f"console-index-{digest}.db")


def console_token(directory: Path) -> tuple[str, Path | None]:
    """`TIDINGS_CONSOLE_TOKEN` if set, else the token in `<directory>/console-token`, made on
    first run with mode 0600. Returns the token and its file (None: from the environment).
    ConfigError for a token file others can read or an empty one."""
    if token := os.environ.get(TOKEN_ENV):
        return token, None
    path = directory / TOKEN_FILE
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
    if path.stat().st_mode & 0o077:
        raise ConfigError(
            f"{path} can be read by other users (mode {path.stat().st_mode & 0o777:o}); "
            f"make it private with: chmod 600 {path}"
        )
    token = path.read_text().strip()
    if not token:
        raise ConfigError(f"{path} is empty; delete it to have a new token made")
    return token, path
