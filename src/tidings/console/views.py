"""What every page shares: templates, the console's state, errors as pages, and the checks of
a request that changes something."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.templating import Jinja2Templates

from tidings import ops
from tidings.console.apidoc import anchor, json_html, prose_html
from tidings.console.security import CSRF_FIELD, Guard, form_value, same_origin, session_of
from tidings.console.state import Console
from tidings.dlq import DeadLetterError
from tidings.errors import ConfigError, StorageError, TidingsError, UnknownTopicError
from tidings.ops.schemas import UnknownSchemaError

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _when(value: datetime | float | int | None) -> str:
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(float(value), UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    seconds = (datetime.now(UTC) - value).total_seconds()
    if seconds < 1.5:
        return "just now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    return f"{seconds / 60:.0f} min ago"


def _dash(value: object) -> object:
    return "-" if value is None or value == "" else value


def _number(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


templates.env.filters["when"] = _when
templates.env.filters["ago"] = _ago
templates.env.filters["dash"] = _dash
templates.env.filters["number"] = _number
templates.env.globals["anchor"] = anchor
templates.env.globals["json_html"] = json_html
templates.env.filters["prose"] = prose_html


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def guard_of(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


def render(request: Request, template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    guard = guard_of(request)
    context.setdefault("title", "")
    return templates.TemplateResponse(
        request,
        template,
        {
            "csrf": guard.csrf_token(session_of(request)),
            "csrf_field": CSRF_FIELD,
            "signed_in": guard.signed_in(request),
            "path": request.url.path,
            "query": request.url.query,
            **context,
        },
        status_code=status,
    )


def fail(request: Request, status: int, message: str, **context: Any) -> HTMLResponse:
    """An error page with `status` and `message`; nothing was changed."""
    return render(request, "error.html", status=status, message=message, code=status, **context)


def error_status(exc: TidingsError) -> int:
    if isinstance(exc, UnknownTopicError):
        return 404
    if isinstance(exc, DeadLetterError):
        return 404 if str(exc).startswith("no dead letter") else 409
    if isinstance(exc, StorageError):
        return 503
    if isinstance(exc, UnknownSchemaError):
        return 404
    if isinstance(exc, ConfigError):
        return 400
    return 400


async def tidings_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TidingsError)
    return fail(request, error_status(exc), str(exc))


async def index_status(console: Console) -> ops.IndexStatus:
    return await console.index.status(await ops.list_topics(console.broker))


async def changing_form(request: Request) -> FormData | Response:
    """The form of a request that changes something, once it passed every check: same
    origin (403), CSRF token (403), signed in with the console token (401, with the sign-in
    form). Otherwise the response to send: nothing was changed."""
    guard = guard_of(request)
    if not same_origin(request):
        return fail(request, 403, "cross-site request refused; nothing was changed")
    form = await request.form()
    if not guard.csrf_ok(session_of(request), form_value(form, CSRF_FIELD)):
        return fail(
            request,
            403,
            "missing or wrong CSRF token (the page may be stale: reload it and try again); "
            "nothing was changed",
        )
    if not guard.signed_in(request):
        await asyncio.sleep(0)
        return render(
            request,
            "login.html",
            status=401,
            title="Sign in",
            next=back(request),
            message="this action needs the console token: sign in first; nothing was changed",
        )
    return form


def back(request: Request) -> str:
    """The page the request came from (this site's only), else `/`."""
    referer = request.headers.get("referer")
    if referer:
        parts = urlsplit(referer)
        if parts.netloc == request.headers.get("host") and parts.path.startswith("/"):
            return parts.path + (f"?{parts.query}" if parts.query else "")
    return "/"


def local_path(value: str | None) -> str:
    """`value` if it is a path on this site, else `/` (no open redirects)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def int_param(value: str | None, name: str, *, minimum: int = 0) -> int | None:
    """`value` as an integer >= `minimum` (None if absent or empty); ConfigError otherwise."""
    if value is None or value.strip() == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {number}")
    return number


def time_param(value: str | None, name: str) -> datetime | None:
    """An ISO-8601 time (naive means UTC), or None; ConfigError otherwise."""
    if value is None or value.strip() == "":
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(f"{name} must be an ISO-8601 time, got {value!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def text_param(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None
