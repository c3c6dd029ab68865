"""Server-rendered SVG: the topology graph, line and bar charts, the trace timeline. Every
text that comes from the log is escaped."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from markupsafe import Markup, escape

from tidings.ops import Edge, ServiceNode, Topology, Trace

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")
HEALTH_FILL = {"ok": "#dcfce7", "failing": "#fee2e2", "down": "#e5e7eb", "unknown": "#f3f4f6"}
HEALTH_STROKE = {"ok": "#16a34a", "failing": "#dc2626", "down": "#6b7280", "unknown": "#9ca3af"}


def lag_colour(lag: int | None) -> str:
    if lag is None:
        return "#6b7280"
    if lag == 0:
        return "#16a34a"
    return "#d97706" if lag < 100 else "#dc2626"


def _text(x: float, y: float, text: object, *, cls: str = "", anchor: str = "start") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" class="{cls}">'
        f"{escape(str(text))}</text>"
    )


def _short(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


# topology ------------------------------------------------------------------------------------

NODE_W, NODE_H, GAP = 200, 58, 22


def topology_graph(topology: Topology) -> Markup:
    """Producers on the left, topics in the middle, services that only consume on the right;
    arrows from producer to topic and from topic to consumer, coloured by lag."""
    producers = [s for s in topology.services if s.produces]
    consumers = [s for s in topology.services if not s.produces]
    topics = list(topology.topics)
    rows = max(len(producers), len(topics), len(consumers), 1)
    height = rows * (NODE_H + GAP) + 60
    width = 3 * NODE_W + 2 * 170 + 40
    columns = (20, 20 + NODE_W + 170, 20 + 2 * (NODE_W + 170))
    where: dict[tuple[str, str], tuple[float, float]] = {}

    def place(names: list[str], kind: str, column: int) -> None:
        total = len(names) * (NODE_H + GAP) - GAP
        top = 40 + (height - 60 - total) / 2
        for i, name in enumerate(names):
            where[(kind, name)] = (columns[column], top + i * (NODE_H + GAP))

    place([s.name for s in producers], "service", 0)
    place([t.name for t in topics], "topic", 1)
    place([s.name for s in consumers], "service", 2)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="topology">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="context-stroke"/></marker></defs>',
        _text(columns[0], 22, "producers", cls="column"),
        _text(columns[1], 22, "topics", cls="column"),
        _text(columns[2], 22, "consumers", cls="column"),
    ]
    for edge in topology.edges:
        parts.append(_edge(edge, where))
    for service in topology.services:
        parts.append(_service_node(service, where[("service", service.name)]))
    for info in topics:
        x, y = where[("topic", info.name)]
        parts.append(
            f'<a href="/topics/{escape(info.name)}" class="topic-node" '
            f'data-topic="{escape(info.name)}"><rect x="{x}" y="{y}" width="{NODE_W}" '
            f'height="{NODE_H}" rx="4" class="topic"/>'
            + _text(x + 10, y + 22, _short(info.name, 26), cls="name")
            + _text(
                x + 10,
                y + 42,
                f"{len(info.partitions)} partitions · {info.records:,} records",
                cls="detail",
            )
            + "</a>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (texts escaped by _text and escape)


def _service_node(service: ServiceNode, at: tuple[float, float]) -> str:
    x, y = at
    health = service.health
    members = "no group" if service.members is None else f"{service.members} live"
    detail = f"{members} · lag {service.lag:,}"
    if service.dead_letters:
        detail += f" · {service.dead_letters:,} dead"
    href = f"/groups/{escape(service.name)}" if service.group is not None else "/groups"
    tip = f"{service.name}: {health}"
    if service.handles:
        types = sorted({"every event" if h.type == "*" else h.type for h in service.handles})
        tip += "; handles " + ", ".join(types)
    return (
        f'<a href="{href}" class="service-node" data-service="{escape(service.name)}" '
        f'data-health="{health}"><title>{escape(tip)}</title>'
        f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="12" '
        f'fill="{HEALTH_FILL[health]}" stroke="{HEALTH_STROKE[health]}" stroke-width="2"/>'
        + _text(x + 12, y + 22, _short(service.name, 24), cls="name")
        + _text(x + 12, y + 42, detail, cls="detail")
        + "</a>"
    )


def _edge(edge: Edge, where: dict[tuple[str, str], tuple[float, float]]) -> str:
    service = where.get(("service", edge.service))
    topic = where.get(("topic", edge.topic))
    if service is None or topic is None:
        return ""
    sx, sy = service
    tx, ty = topic
    if edge.kind == "produces":
        x1, y1, x2, y2 = sx + NODE_W, sy + NODE_H * 0.35, tx, ty + NODE_H * 0.35
        colour, label = "#64748b", f"{edge.events} recent events"
        mid = (x1 + x2) / 2
        path = (
            f"M {x1:.1f} {y1:.1f} C {mid:.1f} {y1:.1f}, {mid:.1f} {y2:.1f}, {x2 - 2:.1f} {y2:.1f}"
        )
    else:
        colour, label = lag_colour(edge.lag), f"lag {edge.lag:,}"
        if sx > tx:  # a consumer on the right
            x1, y1, x2, y2 = tx + NODE_W, ty + NODE_H * 0.6, sx, sy + NODE_H * 0.5
            mid = (x1 + x2) / 2
            path = (
                f"M {x1:.1f} {y1:.1f} C {mid:.1f} {y1:.1f}, {mid:.1f} {y2:.1f}, "
                f"{x2 - 2:.1f} {y2:.1f}"
            )
        else:  # a producer that also consumes: back to the left
            x1, y1, x2, y2 = tx, ty + NODE_H * 0.7, sx + NODE_W, sy + NODE_H * 0.7
            mid = (x1 + x2) / 2
            path = (
                f"M {x1:.1f} {y1:.1f} C {mid:.1f} {y1 + 18:.1f}, {mid:.1f} {y2 + 18:.1f}, "
                f"{x2 + 2:.1f} {y2:.1f}"
            )
    dash = ' stroke-dasharray="5 4"' if edge.kind == "produces" else ""
    title = f"{edge.service} {edge.kind} {edge.topic}: {label}"
    return (
        f'<path class="edge {edge.kind}" data-lag="{edge.lag if edge.lag is not None else ""}" '
        f'd="{path}" stroke="{colour}" fill="none" stroke-width="2"{dash} '
        f'marker-end="url(#arrow)"><title>{escape(title)}</title></path>'
    )


# charts --------------------------------------------------------------------------------------


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exponent = float(10.0 ** math.floor(math.log10(value)))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return float(step * exponent)
    return 10 * exponent


def _number(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}" if value == int(value) else f"{value:.2f}"


def line_chart(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    width: int = 640,
    height: int = 220,
    unit: str = "",
    testid: str = "chart",
) -> Markup:
    """Lines over categorical `labels` (one point per label per series; None: no point)."""
    left, right, top, bottom = 56, 16, 24, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for points in series.values() for v in points if v is not None]
    y_max = _nice_max(max(values, default=0.0))
    n = max(len(labels), 1)

    def px(i: int) -> float:
        return float(left + (plot_w * i / (n - 1) if n > 1 else plot_w / 2))

    def py(v: float) -> float:
        return float(top + plot_h - plot_h * v / y_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-testid="{testid}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
    ]
    for step in range(5):
        v = y_max * step / 4
        y = py(v)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
        )
        parts.append(_text(left - 6, y + 4, _number(v), cls="axis", anchor="end"))
    if unit:
        parts.append(_text(4, 12, unit, cls="axis"))
    every = max(1, math.ceil(n / 8))
    for i, label in enumerate(labels):
        if i == n - 1 or (i % every == 0 and n - 1 - i >= every / 2):
            anchor = "end" if i == n - 1 and n > 1 else "middle"
            parts.append(_text(px(i), height - bottom + 16, label, cls="axis", anchor=anchor))
    for index, (name, points) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        coords = [f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(points) if v is not None]
        if len(coords) > 1:
            parts.append(
                f'<polyline points="{" ".join(coords)}" fill="none" stroke="{colour}" '
                'stroke-width="2"/>'
            )
        for i, point in enumerate(points):
            if point is not None and (len(points) < 40 or i == len(points) - 1):
                parts.append(
                    f'<circle cx="{px(i):.1f}" cy="{py(point):.1f}" r="2.5" fill="{colour}">'
                    f"<title>{escape(name)} {escape(labels[i] if i < len(labels) else '')}: "
                    f"{_number(point)}</title></circle>"
                )
        lx = left + index * 130
        parts.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" fill="{colour}"/>')
        parts.append(_text(lx + 14, height - 5, _short(name, 16), cls="legend"))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (texts escaped by _text and escape)


def bar_chart(
    bars: Sequence[tuple[str, float]], *, width: int = 420, unit: str = "", testid: str = "bars"
) -> Markup:
    """Horizontal bars, one row each, the value at the end."""
    row, label_w = 24, 130
    height = max(len(bars), 1) * row + 8
    top = max((v for _, v in bars), default=0.0)
    scale = (width - label_w - 70) / top if top > 0 else 0.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-testid="{testid}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
    ]
    for i, (label, value) in enumerate(bars):
        y = 4 + i * row
        colour = PALETTE[0]
        parts.append(_text(label_w - 8, y + 15, _short(label, 18), cls="axis", anchor="end"))
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{max(value * scale, 1):.1f}" '
            f'height="{row - 8}" fill="{colour}" rx="2"/>'
        )
        shown = _number(value) + (f" {unit}" if unit else "")
        parts.append(_text(label_w + value * scale + 6, y + 15, shown, cls="value"))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (texts escaped by _text and escape)


# trace timeline ------------------------------------------------------------------------------


def timeline(trace: Trace, *, width: int = 900) -> Markup:
    """One lane per publishing service; each event a dot at its time, a line to its cause."""
    events = trace.events
    if not events:
        return Markup("")
    lanes = list(trace.services) or ["?"]
    lane_h, left, right, top = 44.0, 130.0, 30.0, 26.0
    height = top + lane_h * len(lanes) + 30
    start = events[0].time
    span_ms = max((events[-1].time - start).total_seconds() * 1000, 1.0)
    plot_w = width - left - right

    def x_of(when: datetime) -> float:
        return left + plot_w * ((when - start).total_seconds() * 1000) / span_ms

    def y_of(source: str) -> float:
        lane = lanes.index(source) if source in lanes else 0
        return top + lane * lane_h + lane_h / 2

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" data-testid="timeline" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
    ]
    for i, lane in enumerate(lanes):
        y = top + i * lane_h
        parts.append(f'<rect x="0" y="{y}" width="{width}" height="{lane_h}" class="lane{i % 2}"/>')
        parts.append(_text(8, y + lane_h / 2 + 4, _short(lane, 16), cls="name"))
    where = {e.event_id: e for e in events}
    for e in events:
        cause = where.get(e.causation_id or "")
        if cause is not None:
            parts.append(
                f'<line x1="{x_of(cause.time):.1f}" y1="{y_of(cause.source):.1f}" '
                f'x2="{x_of(e.time):.1f}" y2="{y_of(e.source):.1f}" class="cause"/>'
            )
    for e in events:
        x, y = x_of(e.time), y_of(e.source)
        offset_ms = (e.time - start).total_seconds() * 1000
        parts.append(
            f'<a href="/topics/{escape(e.topic)}/{e.partition}/{e.offset}">'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" class="event"><title>'
            f"{escape(e.type)} by {escape(e.source)} at +{offset_ms:.0f} ms ({escape(e.position)})"
            "</title></circle></a>"
        )
        near_end = x > width - right - 140
        label_x = x - 8 if near_end else x + 8
        parts.append(
            _text(label_x, y - 8, e.type, cls="detail", anchor="end" if near_end else "start")
        )
    parts.append(_text(left, height - 8, "0 ms", cls="axis"))
    parts.append(_text(width - right, height - 8, f"+{span_ms:,.0f} ms", cls="axis", anchor="end"))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (texts escaped by _text and escape)
