"""Who may change things, and from where.

* Every browser gets a random session id in an HttpOnly, SameSite=Strict cookie.
* Signing in with the console token sets a second cookie, an HMAC of the session id keyed by
  the token: nothing is kept on the server, a restart keeps sessions, a new token ends them.
* Every form that changes something carries a CSRF token, an HMAC of the session id (checked
  on POST with a constant-time compare), and a cross-site `Origin` is refused as well.
* GET never changes anything; POSTs are the only writes, each checked in that order: origin,
  CSRF token, signed in. A failed check answers 403 or 401 and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "tidings_console_session"
AUTH_COOKIE = "tidings_console_auth"
CSRF_FIELD = "csrf"
_SESSION = re.compile(r"^[0-9a-f]{32}$")

SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        b"form-action 'self'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class Guard:
    """Signs and checks sessions with the console token."""

    def __init__(self, token: str, *, secure_cookies: bool = False) -> None:
        self._token = token.encode()
        self._key = hashlib.sha256(b"tidings-console\0" + self._token).digest()
        self.secure_cookies = secure_cookies

    def _sign(self, purpose: str, session: str) -> str:
        return hmac.new(self._key, f"{purpose}\0{session}".encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, session: str) -> str:
        return self._sign("csrf", session)

    def auth_value(self, session: str) -> str:
        return self._sign("auth", session)

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.strip().encode(), self._token)

    def csrf_ok(self, session: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given, self.csrf_token(session))

    def signed_in(self, request: Request) -> bool:
        session = session_of(request)
        given = request.cookies.get(AUTH_COOKIE)
        return given is not None and hmac.compare_digest(given, self.auth_value(session))

    def cookie(self, name: str, value: str, *, max_age: int | None = None) -> str:
        parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        if self.secure_cookies:
            parts.append("Secure")
        return "; ".join(parts)


def session_of(request: Request) -> str:
    """The request's session id (set by `SessionMiddleware`)."""
    return str(request.scope["tidings.session"])


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (`Origin`, else
    `Sec-Fetch-Site`); requests that say neither (scripts, old browsers) pass: the CSRF token
    still guards them."""
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        host = request.headers.get("host", "")
        return urlsplit(origin).netloc == host
    if origin == "null":
        return False
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


class SessionMiddleware:
    """Gives each browser a session id cookie and adds the security headers to every
    response."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        session = request.cookies.get(SESSION_COOKIE, "")
        fresh = not _SESSION.match(session)
        if fresh:
            session = secrets.token_hex(16)
        scope["tidings.session"] = session

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if fresh:
                    cookie = self.guard.cookie(SESSION_COOKIE, session)
                    headers.append((b"set-cookie", cookie.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


Handler = Callable[[Request], Awaitable[Any]]


def form_value(form: MutableMapping[str, Any] | Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None
