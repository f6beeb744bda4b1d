"""Charts for the operator's console, drawn on the server as inline SVG (no script, no CDN: the
factory works offline). Pure functions: data in, markup out; every text is escaped.

- ``timeline``: a run's stage runs as bars on a time axis, one row per stage and iteration;
- ``stacked_bars``: values per day stacked by series (cost per project and day), with a legend;
- ``hbars``: labelled horizontal bars, each a link (counts by status).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from django.utils.safestring import SafeString, mark_safe

# Colours by status (stage runs, runs, workers, releases); anything else is grey.
STATUS_COLOURS = {
    "succeeded": "#3a9d5d",
    "live": "#3a9d5d",
    "running": "#2f78c4",
    "starting": "#7fb1e3",
    "queued": "#a0a8b0",
    "pending": "#c9ced3",
    "idle": "#e0b43c",
    "paused": "#e08a3c",
    "waiting_human": "#e08a3c",
    "failed": "#c8443b",
    "cancelled": "#8d6e63",
    "skipped": "#d9d9d9",
    "terminated": "#8a8f94",
    "stopping": "#b39ddb",
    "stopped": "#8a8f94",
}
SERIES_COLOURS = ["#2f78c4", "#3a9d5d", "#e08a3c", "#8e5cc4", "#c8443b", "#17a2b8", "#8a8f94"]
FONT = 'font-family="sans-serif" font-size="11"'


def colour(status: str) -> str:
    return STATUS_COLOURS.get(status, "#8a8f94")


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def duration_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def tick_text(seconds: float, span: float) -> str:
    """An axis tick: tenths of a second on a short axis, else as ``duration_text``."""
    return f"{seconds:.1f}s" if span < 10 else duration_text(seconds)


@dataclass(frozen=True)
class Bar:
    label: str  # the row: "developer #2"
    status: str
    start: datetime | None
    end: datetime | None  # None: still running (drawn up to ``now``)
    title: str = ""  # the tooltip
    group: int = 1  # the iteration: rows of one iteration share a background band


def timeline(bars: list[Bar], *, now: datetime, width: int = 760) -> SafeString:
    """Bars on a time axis from the first start to the last end (or ``now``). A row that never
    started is listed with no bar ("not started")."""
    label_w, row_h, top, pad = 130, 22, 24, 8
    started = [b for b in bars if b.start is not None]
    if not started:
        return mark_safe('<p class="timeline-empty">No stage has started yet.</p>')
    t0 = min(b.start for b in started)
    t1 = max((b.end or now) for b in started)
    span = max(_seconds(t1 - t0), 1.0)
    plot_w = width - label_w - pad * 2 - 24  # room for the last tick's text
    height = top + row_h * len(bars) + 10

    def x(at: datetime) -> float:
        return label_w + pad + _seconds(at - t0) / span * plot_w

    parts = [
        f'<svg class="run-timeline" xmlns="http://www.w3.org/2000/svg" width="100%" height="{height}" '
        f'style="max-width:{width}px" viewBox="0 0 {width} {height}" role="img" aria-label="stage timeline">'
    ]
    # Iteration bands: every other iteration on a light background, so loop-backs are visible.
    for i, bar in enumerate(bars):
        if bar.group % 2 == 0:
            parts.append(f'<rect x="0" y="{top + i * row_h}" width="{width}" height="{row_h}" fill="#f3f6fa"></rect>')
    # The time axis: five ticks, as offsets from the first start.
    for k in range(6):
        tx = label_w + pad + plot_w * k / 5
        parts.append(f'<line x1="{tx:.1f}" y1="{top - 4}" x2="{tx:.1f}" y2="{height - 8}" stroke="#e1e4e8"></line>')
        parts.append(
            f'<text x="{tx:.1f}" y="{top - 8}" text-anchor="middle" {FONT} fill="#555">'
            f"+{escape(tick_text(span * k / 5, span))}</text>"
        )
    for i, bar in enumerate(bars):
        y = top + i * row_h
        parts.append(f'<text x="4" y="{y + row_h - 7}" {FONT} fill="#333">{escape(bar.label)}</text>')
        if bar.start is None:
            parts.append(
                f'<text x="{label_w + pad}" y="{y + row_h - 7}" {FONT} fill="#999">{escape(bar.status)}</text>'
            )
            continue
        x0, x1 = x(bar.start), x(bar.end or now)
        w = max(x1 - x0, 2.0)
        seconds = _seconds((bar.end or now) - bar.start)
        tip = bar.title or f"{bar.label}: {bar.status}, {duration_text(seconds)}"
        parts.append(
            f'<rect class="bar bar-{escape(bar.status)}" x="{x0:.1f}" y="{y + 4}" width="{w:.1f}" '
            f'height="{row_h - 8}" rx="2" fill="{colour(bar.status)}"><title>{escape(tip)}</title></rect>'
        )
        label = f"{duration_text(seconds)}{'' if bar.end else ' …'}"
        if x0 + w + 50 > width:  # no room after the bar: inside its end, in white
            where = f'x="{x0 + w - 4:.1f}" text-anchor="end" fill="#fff"'
        else:
            where = f'x="{x0 + w + 4:.1f}" fill="#333"'
        parts.append(f'<text {where} y="{y + row_h - 7}" {FONT}>{escape(label)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


def stacked_bars(
    categories: list[str], series: dict[str, list[float]], *, unit: str = "$", width: int = 900, height: int = 240
) -> SafeString:
    """One bar per category (a day), stacked by series (a project), with a legend and a y axis."""
    left, bottom, top, legend_w = 56, 36, 12, 180
    plot_w, plot_h = width - left - legend_w - 10, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(categories))]
    peak = max(totals, default=0) or 1.0
    slot = plot_w / max(len(categories), 1)
    bar_w = max(slot * 0.7, 2)
    parts = [
        f'<svg class="stacked-bars" xmlns="http://www.w3.org/2000/svg" width="100%" height="{height}" '
        f'style="max-width:{width}px" viewBox="0 0 {width} {height}" role="img" aria-label="chart">'
    ]
    for k in range(5):
        value = peak * k / 4
        y = top + plot_h - plot_h * k / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e1e4e8"></line>')
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" {FONT} fill="#555">{unit}{value:.2f}</text>'
        )
    for i, category in enumerate(categories):
        x = left + slot * i + (slot - bar_w) / 2
        base = top + plot_h
        for s, (name, values) in enumerate(series.items()):
            h = values[i] / peak * plot_h
            if h <= 0:
                continue
            base -= h
            fill = SERIES_COLOURS[s % len(SERIES_COLOURS)]
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{fill}">'
                f"<title>{escape(category)} · {escape(name)}: {unit}{values[i]:.4f}</title></rect>"
            )
        if len(categories) <= 16 or i % 2 == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle" {FONT} fill="#555">'
                f"{escape(category)}</text>"
            )
    for s, name in enumerate(series):
        y = top + 4 + s * 16
        fill = SERIES_COLOURS[s % len(SERIES_COLOURS)]
        lx = width - legend_w + 4
        parts.append(f'<rect x="{lx}" y="{y}" width="10" height="10" fill="{fill}"></rect>')
        parts.append(f'<text x="{lx + 14}" y="{y + 9}" {FONT} fill="#333">{escape(name[:28])}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))


@dataclass(frozen=True)
class HBar:
    label: str
    value: int
    href: str = ""
    status: str = ""


def hbars(items: list[HBar], *, width: int = 420) -> SafeString:
    """Horizontal bars, one per item, the count beside it; an item with ``href`` is a link."""
    row_h, label_w = 22, 150
    peak = max((item.value for item in items), default=0) or 1
    plot_w = width - label_w - 50
    height = row_h * len(items) + 4
    parts = [
        f'<svg class="hbars" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="counts">'
    ]
    for i, item in enumerate(items):
        y = i * row_h
        w = item.value / peak * plot_w
        inner = (
            f'<text x="4" y="{y + row_h - 7}" {FONT} fill="#333">{escape(item.label)}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{max(w, 1):.1f}" height="{row_h - 8}" '
            f'fill="{colour(item.status or item.label)}"></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + row_h - 7}" {FONT} fill="#333">{item.value}</text>'
        )
        parts.append(f'<a href="{escape(item.href)}">{inner}</a>' if item.href else inner)
    parts.append("</svg>")
    return mark_safe("".join(parts))
