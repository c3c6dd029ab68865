"""The console's web app: `create_app(config)` is a Starlette app serving every page."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from tidings.brokers.base import Broker
from tidings.console.config import ConsoleConfig
from tidings.console.routes import api, dashboard, deadletters, groups, schemas, system, topics
from tidings.console.security import Guard, SessionMiddleware
from tidings.console.state import Console
from tidings.console.views import HERE, fail, tidings_error
from tidings.errors import TidingsError


async def _unknown_group(request: Request, exc: Exception) -> Response:
    return fail(request, 404, str(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    return fail(request, 404, f"no page at {request.url.path}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return fail(request, 405, f"{request.method} is not allowed here; nothing was changed")


def create_app(
    config: ConsoleConfig, *, broker: Broker | None = None, background: bool = True
) -> Starlette:
    """The console for `config`. `broker` (for tests) is used instead of connecting to
    `config.broker_url`, and not closed; without `background` the index and the samples are
    filled only when asked (`app.state.console`)."""
    guard = Guard(config.token, secure_cookies=config.secure_cookies)
    console = Console(config, broker)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await console.start(background=background)
        try:
            yield
        finally:
            await console.stop()

    routes: list[BaseRoute] = [
        *system.routes,
        *topics.routes,
        *groups.routes,
        *deadletters.routes,
        *dashboard.routes,
        *schemas.routes,
        *api.routes,
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SessionMiddleware, guard=guard)],
        exception_handlers={
            TidingsError: tidings_error,
            groups.UnknownGroup: _unknown_group,
            404: _not_found,
            405: _not_allowed,
        },
        lifespan=lifespan,
    )
    app.state.console = console
    app.state.guard = guard
    return app
