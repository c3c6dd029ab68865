"""The API page's material: an AsyncAPI 3 document read from a file (`--asyncapi FILE`, JSON
or YAML as `tidings asyncapi` writes it) or made from the schema registry, turned into what
the page shows (servers, channels with their messages, operations per service, messages with
their payload schemas), and JSON pretty-printed with its `$ref`s as links.

Reading a document is total: a part of an unexpected shape (a hand-edited file, another
tool's document) is shown as it is or left out, never an error page."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from markupsafe import Markup, escape

from tidings.errors import ConfigError

MAX_FILE_BYTES = 20 * 1024 * 1024
_COMPONENT_SCHEMA = "#/components/schemas/"
_COMPONENT_MESSAGE = "#/components/messages/"


def anchor(kind: str, name: str) -> str:
    """The id of a part of the page (`schema-ORDER_PLACED.v2`), as a fragment too."""
    return f"{kind}-{quote(name, safe='._-~')}"


class AsyncApiFile:
    """An AsyncAPI document in a file, read again when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._doc: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        """The document; ConfigError naming the file if it cannot be read or is not an
        AsyncAPI 3 document."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise ConfigError(f"AsyncAPI file {self.path}: {exc.strerror or exc}") from None
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            self._doc = read_document(self.path)
            self._stamp = stamp
        return self._doc


def read_document(path: str) -> dict[str, Any]:
    """An AsyncAPI 3 document from a JSON or YAML file; ConfigError otherwise."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"AsyncAPI file {path} is over {MAX_FILE_BYTES // 2**20} MB")
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"AsyncAPI file {path} cannot be read: {exc}") from None
    try:
        doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"AsyncAPI file {path} is neither JSON nor YAML: {exc}") from None
    if not isinstance(doc, dict) or not str(doc.get("asyncapi", "")).startswith("3."):
        raise ConfigError(
            f"AsyncAPI file {path} is not an AsyncAPI 3 document (no `asyncapi: 3.x.x`); "
            "write one with `tidings asyncapi`"
        )
    return doc


# the page's view of a document --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    host: str
    protocol: str
    pathname: str
    description: str


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    address: str
    description: str
    messages: tuple[str, ...]
    """Ids of `components/messages` (or the channel's own message names)."""
    partitions: object


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    action: str
    channel: str
    messages: tuple[str, ...]
    title: str
    summary: str
    description: str
    group: str


@dataclass(frozen=True, slots=True)
class Message:
    name: str
    title: str
    summary: str
    description: str
    content_type: str
    payload: Any
    schemas: tuple[str, ...]
    """The component schemas its payload refers to (the data schema among them)."""


@dataclass
class ApiView:
    title: str
    version: str
    description: str
    servers: list[Server] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    services: dict[str, list[Operation]] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    schemas: dict[str, Any] = field(default_factory=dict)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _map(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ref_name(value: object, prefix: str) -> str | None:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith(prefix):
            return ref.removeprefix(prefix).replace("~1", "/").replace("~0", "~")
    return None


def _last_token(value: object) -> str | None:
    if isinstance(value, dict) and isinstance(value.get("$ref"), str):
        return str(value["$ref"]).rpartition("/")[2].replace("~1", "/").replace("~0", "~")
    return None


def view(doc: dict[str, Any]) -> ApiView:
    """What the API page shows of `doc`."""
    info = _map(doc.get("info"))
    page = ApiView(
        _text(info.get("title")) or "AsyncAPI document",
        str(info.get("version", "")),
        _text(info.get("description")),
    )
    for name, server in _map(doc.get("servers")).items():
        server = _map(server)
        page.servers.append(
            Server(
                str(name),
                _text(server.get("host")),
                _text(server.get("protocol")),
                _text(server.get("pathname")),
                _text(server.get("description")),
            )
        )
    channel_names: dict[str, str] = {}
    for name, channel in _map(doc.get("channels")).items():
        channel = _map(channel)
        messages = tuple(
            _ref_name(message, _COMPONENT_MESSAGE) or str(key)
            for key, message in _map(channel.get("messages")).items()
        )
        kafka = _map(_map(channel.get("bindings")).get("kafka"))
        page.channels.append(
            Channel(
                str(name),
                _text(channel.get("address")) or str(name),
                _text(channel.get("description")),
                messages,
                kafka.get("partitions"),
            )
        )
        channel_names[f"#/channels/{name}"] = str(name)
    for name, operation in _map(doc.get("operations")).items():
        operation = _map(operation)
        channel_ref = _map(operation.get("channel")).get("$ref")
        channel = channel_names.get(str(channel_ref), _last_token(operation.get("channel")) or "")
        listed = operation.get("messages")
        group = _text(operation.get("x-tidings-service")) or str(name).partition(".")[0]
        page.services.setdefault(group, []).append(
            Operation(
                str(name),
                _text(operation.get("action")),
                channel,
                tuple(m for m in (_last_token(x) for x in _list(listed)) if m is not None),
                _text(operation.get("title")),
                _text(operation.get("summary")),
                _text(operation.get("description")),
                group,
            )
        )
    components = _map(doc.get("components"))
    for name, message in _map(components.get("messages")).items():
        message = _map(message)
        payload = message.get("payload")
        page.messages.append(
            Message(
                str(name),
                _text(message.get("title")) or str(name),
                _text(message.get("summary")),
                _text(message.get("description")),
                _text(message.get("contentType")),
                payload,
                tuple(dict.fromkeys(_schema_refs(payload))),
            )
        )
    page.schemas = _map(components.get("schemas"))
    return page


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _schema_refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        name = _ref_name(value, _COMPONENT_SCHEMA)
        if name is not None:
            yield name.partition("/")[0]
        for item in value.values():
            yield from _schema_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _schema_refs(item)


# text and JSON as HTML ----------------------------------------------------------------------

_CODE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"\*\*([^*\n]+)\*\*")


def prose_html(text: str) -> Markup:
    """A description's text, escaped, its `code` and **bold** spans marked up (the rest of
    Markdown is left as it is written; the page keeps its line breaks)."""
    escaped = str(escape(text))
    escaped = _CODE.sub(r"<code>\1</code>", escaped)
    return Markup(_BOLD.sub(r"<strong>\1</strong>", escaped))  # noqa: S704 (escaped above)


def json_html(value: Any) -> Markup:
    """`value` as indented JSON, escaped, each `$ref` to a component schema or message a link
    to its place on the page."""
    return Markup("".join(_json_parts(value, 0)))  # noqa: S704 (every part is escaped)


def _json_parts(value: Any, depth: int) -> Iterator[str]:
    pad, inner = "  " * depth, "  " * (depth + 1)
    if isinstance(value, dict) and value:
        yield "{\n"
        for index, (key, item) in enumerate(value.items()):
            yield inner + str(escape(json.dumps(str(key), ensure_ascii=False))) + ": "
            if key == "$ref" and isinstance(item, str):
                yield _ref_link(item)
            else:
                yield from _json_parts(item, depth + 1)
            yield ",\n" if index < len(value) - 1 else "\n"
        yield pad + "}"
    elif isinstance(value, list) and value:
        yield "[\n"
        for index, item in enumerate(value):
            yield inner
            yield from _json_parts(item, depth + 1)
            yield ",\n" if index < len(value) - 1 else "\n"
        yield pad + "]"
    else:
        yield str(escape(json.dumps(value, ensure_ascii=False, default=str)))


def _ref_link(ref: str) -> str:
    text = str(escape(json.dumps(ref, ensure_ascii=False)))
    for prefix, kind in ((_COMPONENT_SCHEMA, "schema"), (_COMPONENT_MESSAGE, "message")):
        if ref.startswith(prefix):
            name = ref.removeprefix(prefix).partition("/")[0]
            name = name.replace("~1", "/").replace("~0", "~")
            return f'<a href="#{escape(anchor(kind, name))}">{text}</a>'
    return text
