"""The application's dashboard (`--dashboard`), refreshed live."""

from __future__ import annotations

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.console import svg
from tidings.console.dashboard import Bars, DashboardError, Series, Stat, Table
from tidings.console.views import console_of, render


async def dashboard_page(request: Request) -> Response:
    source = console_of(request).dashboard
    return render(request, "dashboard.html", title="Dashboard", configured=source is not None)


async def panels(request: Request) -> Response:
    """The panels now (htmx polls this); a source that fails says why, in place."""
    source = console_of(request).dashboard
    if source is None:
        return render(request, "dashboard_panels.html", status=404, error="no dashboard configured")
    try:
        document = await source.fetch()
    except DashboardError as exc:
        return render(request, "dashboard_panels.html", error=str(exc), document=None)
    panels: list[tuple[str, object, Markup | None]] = []
    for i, panel in enumerate(document.panels):
        chart = None
        if isinstance(panel, Series):
            chart = svg.line_chart(
                panel.labels,
                {
                    name: [None if v is None else float(v) for v in points]
                    for name, points in panel.series.items()
                },
                unit=panel.unit or "",
                testid=f"panel-{i}",
            )
        elif isinstance(panel, Bars):
            chart = svg.bar_chart(
                [(label, float(value)) for label, value in panel.bars],
                unit=panel.unit or "",
                testid=f"panel-{i}",
            )
        kind = (
            "stat" if isinstance(panel, Stat) else "table" if isinstance(panel, Table) else "chart"
        )
        panels.append((kind, panel, chart))
    return render(request, "dashboard_panels.html", document=document, panels=panels, error=None)


routes = [
    Route("/dashboard", dashboard_page),
    Route("/dashboard/panels", panels),
]
