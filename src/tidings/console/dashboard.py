"""Dashboards an application provides: the console shows them, without knowing the app.

A dashboard is a JSON document (or the same as Python data):

    {"title": "Orders", "note": "optional text",
     "panels": [
       {"kind": "stat", "title": "Orders, last minute", "value": 42, "unit": "orders"},
       {"kind": "series", "title": "Revenue per minute", "unit": "EUR",
        "labels": ["12:01", "12:02"], "series": {"EUR": [10.5, 12.0], "USD": [3.0, null]}},
       {"kind": "bars", "title": "Status mix", "bars": [["CONFIRMED", 120], ["PENDING", 4]]},
       {"kind": "table", "title": "Top products", "columns": ["product", "sold"],
        "rows": [["mouse", 12]]}
     ]}

`tidings console --dashboard SPEC` takes it from an http(s) URL (GET, answered with that
document: say, an endpoint of the service that keeps the numbers) or from `module:attribute`,
a function (sync or async) returning it. The console polls it every couple of seconds while a
dashboard page is open."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import urllib.request
from typing import Annotated, Any

import msgspec

from tidings.errors import ConfigError

MAX_DOCUMENT = 1024 * 1024
TIMEOUT_S = 3.0
Number = int | float


class Stat(msgspec.Struct, tag_field="kind", tag="stat", frozen=True):
    title: str
    value: Number | str | None
    unit: str | None = None
    note: str | None = None


class Series(msgspec.Struct, tag_field="kind", tag="series", frozen=True):
    title: str
    labels: list[str]
    series: dict[str, list[Number | None]]
    unit: str | None = None


class Bars(msgspec.Struct, tag_field="kind", tag="bars", frozen=True):
    title: str
    bars: list[tuple[str, Number]]
    unit: str | None = None


class Table(msgspec.Struct, tag_field="kind", tag="table", frozen=True):
    title: str
    columns: list[str]
    rows: list[list[Number | str | None]]


Panel = Stat | Series | Bars | Table


class Dashboard(msgspec.Struct, frozen=True):
    title: Annotated[str, msgspec.Meta(max_length=200)]
    panels: list[Panel]
    note: str | None = None


class DashboardError(Exception):
    """The dashboard could not be fetched or is not a dashboard document."""


class DashboardSource:
    """Where a dashboard comes from: `spec` is an http(s) URL or `module:attribute`."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._provider: Any = None
        if not spec.startswith(("http://", "https://")) and ":" not in spec:
            raise ConfigError(
                f"--dashboard {spec!r}: expected an http(s):// URL or module:attribute"
            )

    @property
    def is_url(self) -> bool:
        return self.spec.startswith(("http://", "https://"))

    def load(self) -> None:
        """Import a `module:attribute` provider (ConfigError if it cannot be)."""
        if self.is_url:
            return
        module_name, _, attribute = self.spec.partition(":")
        try:
            module = importlib.import_module(module_name)
            provider = getattr(module, attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"--dashboard {self.spec!r} cannot be loaded: {exc}") from None
        if not callable(provider):
            raise ConfigError(f"--dashboard {self.spec!r} is not callable")
        self._provider = provider

    async def fetch(self) -> Dashboard:
        """The dashboard now; DashboardError saying why not."""
        try:
            if self.is_url:
                raw = await asyncio.to_thread(_get, self.spec)
                return msgspec.json.decode(raw, type=Dashboard)
            if self._provider is None:
                self.load()
            document = self._provider()
            if inspect.isawaitable(document):
                document = await document
            if isinstance(document, Dashboard):
                return document
            return msgspec.convert(document, Dashboard)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise DashboardError(f"not a dashboard document: {exc}") from None
        except DashboardError:
            raise
        except Exception as exc:
            raise DashboardError(f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        return None


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310
        body: bytes = response.read(MAX_DOCUMENT + 1)
    if len(body) > MAX_DOCUMENT:
        raise DashboardError(f"the dashboard at {url} is larger than {MAX_DOCUMENT} bytes")
    return body
