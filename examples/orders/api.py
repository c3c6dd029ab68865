"""The order system's HTTP API (Starlette), served by uvicorn on 127.0.0.1.

Order service:
* `POST /orders` - body `{"userId", "items": [{"productId", "quantity", "price"}], "total"?,
  "currency"?, "discountCode"?}`; needs `Authorization: Bearer <token>`. Saves the order as
  PENDING and publishes ORDER_PLACED through the outbox in one transaction, then answers 202 at
  once. A request without `currency` and `discountCode` comes from an old client and publishes
  ORDER_PLACED v1. Optional headers: `Idempotency-Key` (the same key places one order, however
  often it is sent; another body with that key is 422) and `X-Correlation-Id` (carried by every
  event that follows from the order; one is made up if absent, and echoed in the response).
* `GET /orders/{id}` - status and the order's event history; `GET /orders?status=&limit=&offset=`.

Analytics service: `GET /analytics` - events per topic and type, revenue per minute;
`GET /analytics/dashboard` - the live order dashboard as `tidings console` shows it.
Everything answers JSON; bad input gets a 4xx with `{"error": ...}` and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from examples.orders.events import Item
from examples.orders.services import analytics as analytics_service
from examples.orders.services import orders
from tidings import Service, StorageError

T = TypeVar("T")

MAX_BODY = 64 * 1024
CORRELATION_HEADER = "X-Correlation-Id"
_HEADER_VALUE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
STATUSES = ("PENDING", *orders.FINAL)


class _Input(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ItemIn(_Input):
    product_id: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=1000)
    price: float = Field(ge=0, le=1_000_000)


class PlaceOrderRequest(_Input):
    user_id: str = Field(min_length=1, max_length=64)
    items: list[ItemIn] = Field(min_length=1, max_length=100)
    total: float | None = Field(default=None, ge=0)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    discount_code: Literal["SAVE10", "WELCOME5"] | None = None


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _header(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if value is not None and not _HEADER_VALUE.match(value):
        raise _BadRequest(f"{name} must be 1-128 characters of A-Z a-z 0-9 . _ : / + = -")
    return value


class _BadRequest(Exception):
    pass


def _guarded(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """A database that is away answers 503 (retry later) instead of a stack trace; a bad
    header answers 400."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except _BadRequest as exc:
            return _error(400, str(exc))
        except StorageError as exc:
            return JSONResponse(
                {"error": f"storage unavailable: {exc}"},
                status_code=503,
                headers={"Retry-After": "1"},
            )

    return guarded


def orders_routes(service: Service, token: str) -> list[Route]:
    """The order service's routes; POST needs `Authorization: Bearer <token>`."""
    expected = f"Bearer {token}".encode()

    async def place(request: Request) -> Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse(
                {"error": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        correlation_id = _header(request, CORRELATION_HEADER) or f"corr-{uuid.uuid4().hex}"
        idempotency_key = _header(request, "Idempotency-Key")
        declared = request.headers.get("Content-Length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return _error(413, f"request body larger than {MAX_BODY} bytes")
        body = await request.body()
        if len(body) > MAX_BODY:
            return _error(413, f"request body larger than {MAX_BODY} bytes")
        try:
            order = PlaceOrderRequest.model_validate_json(body)
        except ValidationError as exc:
            details = exc.errors(include_url=False, include_context=False, include_input=False)
            return _error(422, "invalid order", details=details)
        items = [
            Item(product_id=i.product_id, quantity=i.quantity, price=i.price) for i in order.items
        ]
        total = orders.order_total(items, order.discount_code)
        if order.total is not None and abs(order.total - total) > 0.005:
            return _error(422, f"total {order.total:.2f} does not match the items ({total:.2f})")
        old_client = order.currency is None and order.discount_code is None
        try:
            placed = await orders.place_order(
                service,
                user_id=order.user_id,
                items=items,
                currency=order.currency or "USD",
                discount_code=order.discount_code,
                event_version=1 if old_client else 2,
                correlation_id=correlation_id,
                idempotency_key=idempotency_key,
                request_hash=hashlib.sha256(order.model_dump_json().encode()).hexdigest(),
            )
        except orders.IdempotencyConflict as exc:
            return _error(422, str(exc))
        status = "PENDING"
        if not placed.created:
            row = await service.store.query(
                "SELECT status FROM orders WHERE id = ?", (placed.order_id,)
            )
            status = str(row[0][0]) if row else status
        headers = {"Location": f"/orders/{placed.order_id}", CORRELATION_HEADER: correlation_id}
        if not placed.created:
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse(
            {"orderId": placed.order_id, "status": status, "total": total},
            status_code=202,
            headers=headers,
        )

    async def show(request: Request) -> Response:
        order_id = request.path_params["order_id"]
        rows = await service.store.query(
            "SELECT id, status, user_id, total, currency, discount_code, reason, created_at,"
            " updated_at FROM orders WHERE id = ?",
            (order_id,),
        )
        if not rows:
            return _error(404, f"no order {order_id!r}")
        history = await service.store.query(
            "SELECT type, version, topic, time, event_id, correlation_id, causation_id"
            " FROM order_events WHERE order_id = ? ORDER BY time, event_id",
            (order_id,),
        )
        return JSONResponse(
            {
                **_order_json(rows[0]),
                "events": [
                    {
                        "type": h[0],
                        "version": h[1],
                        "topic": h[2],
                        "time": h[3],
                        "eventId": h[4],
                        "correlationId": h[5],
                        "causationId": h[6],
                    }
                    for h in history
                ],
            }
        )

    async def listing(request: Request) -> Response:
        status = request.query_params.get("status")
        if status is not None and status not in STATUSES:
            return _error(400, f"status must be one of {', '.join(STATUSES)}")
        try:
            limit = int(request.query_params.get("limit", "50"))
            offset = int(request.query_params.get("offset", "0"))
        except ValueError:
            return _error(400, "limit and offset must be integers")
        if not 1 <= limit <= 500 or offset < 0:
            return _error(400, "limit must be 1..500 and offset >= 0")
        rows = await service.store.query(
            "SELECT id, status, user_id, total, currency, discount_code, reason, created_at,"
            " updated_at FROM orders WHERE status = COALESCE(?, status)"
            " ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            (status, limit, offset),
        )
        return JSONResponse({"orders": [_order_json(r) for r in rows]})

    return [
        Route("/orders", _guarded(place), methods=["POST"]),
        Route("/orders", _guarded(listing), methods=["GET"]),
        Route("/orders/{order_id}", _guarded(show), methods=["GET"]),
    ]


def _order_json(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("orderId", "status", "userId", "total", "currency", "discountCode", "reason")
    return {
        **dict(zip(keys, row[:7], strict=True)),
        "createdAt": row[7],
        "updatedAt": row[8],
    }


def analytics_routes(service: Service) -> list[Route]:
    async def summary(request: Request) -> Response:
        counters = await service.store.query(
            "SELECT topic, event_type, n FROM counters ORDER BY topic, event_type"
        )
        revenue = await service.store.query(
            "SELECT minute, currency, amount, orders FROM revenue ORDER BY minute, currency"
        )
        return JSONResponse(
            {
                "events": [{"topic": t, "type": e, "count": n} for t, e, n in counters],
                "revenuePerMinute": [
                    {"minute": m, "currency": c, "amount": round(a, 2), "orders": o}
                    for m, c, a, o in revenue
                ],
            }
        )

    async def dashboard(request: Request) -> Response:
        """The console's dashboard document (`tidings console --dashboard URL`)."""
        return JSONResponse(await analytics_service.dashboard(service))

    return [
        Route("/analytics", _guarded(summary), methods=["GET"]),
        Route("/analytics/dashboard", _guarded(dashboard), methods=["GET"]),
    ]


def create_app(
    *, orders_service: Service | None = None, analytics: Service | None = None, token: str = ""
) -> Starlette:
    """One app with the routes of the services given (one process serves both, or each its
    own). `token` guards the routes that change data and must not be empty if they exist."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    routes = [Route("/health", health)]
    if orders_service is not None:
        if not token:
            raise ValueError("the order API needs a non-empty bearer token")
        routes += orders_routes(orders_service, token)
    if analytics is not None:
        routes += analytics_routes(analytics)
    return Starlette(routes=routes)


class HttpServer(uvicorn.Server):
    """uvicorn inside an already running event loop, leaving signals to the caller (the
    services drain on SIGTERM first). `port=0` picks a free port; see `port` once started."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield

    @property
    def port(self) -> int:
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("the HTTP server is not listening yet")


@contextlib.asynccontextmanager
async def serving(
    app: Starlette, host: str = "127.0.0.1", port: int = 8000
) -> AsyncIterator[HttpServer]:
    """Serve `app` while the block runs; a port in use is an OSError with a clear message."""
    server = HttpServer(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    )

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind
            raise OSError(f"cannot serve HTTP on {host}:{port} (is the port in use?)") from None

    task = asyncio.create_task(serve())
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"cannot serve HTTP on {host}:{port}")
        await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on the event loop the order system's processes serve HTTP with: uvloop when
    it is installed (the `demo` extra installs it; uvicorn then parses HTTP with httptools
    too), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
