"""The booking console's price chart: a step line of the price over time (or by version), as inline SVG.

Pure presentation, no I/O. The price set by an event holds until the next priced event, so the
line steps at each priced event and runs on to the booking's current version. When the priced
events span more than MOMENT, the x axis is real time (recorded_at, UTC), the order the price
as of a moment uses; otherwise (all set at once) it is the version. Pixel positions are floats;
every label shows the exact amount string from the ledger. Each point links to the price as of
its time (`point_href`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from markupsafe import Markup, escape

from core.events import Event

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 78, 24, 18, 50
MAX_X_LABELS = 10
Y_TICKS = 4
MOMENT = timedelta(seconds=1)  # priced events closer together than this are drawn by version


@dataclass(frozen=True)
class PricePoint:
    version: int
    at: datetime
    amount: str  # exact, as recorded
    currency: str


@dataclass(frozen=True)
class Chart:
    svg: Markup
    currency: str
    points: int
    other_currencies: int  # priced events in another currency, not drawn
    time_axis: bool = False  # x is recorded time (else the version)


def price_points(events: Sequence[Event]) -> list[PricePoint]:
    """The priced events, in version order."""
    return [PricePoint(e.version, e.recorded_at, e.price.amount, e.price.currency)
            for e in sorted(events, key=lambda e: e.version) if e.price is not None]


@dataclass(frozen=True)
class _Frame:
    """Where the drawn points go: the x range (seconds since the first point, or versions) and
    the y range (amounts), mapped onto the plot area."""

    time_axis: bool
    origin: datetime  # the first drawn point's time (the x origin on a time axis)
    first: float
    end: float
    low: float
    high: float

    def place(self, point: PricePoint) -> float:
        return (point.at - self.origin).total_seconds() if self.time_axis else point.version

    def x(self, value: float) -> float:
        return LEFT + (value - self.first) / (self.end - self.first) * (WIDTH - LEFT - RIGHT)

    def y(self, amount: float) -> float:
        return TOP + (self.high - amount) / (self.high - self.low) * (HEIGHT - TOP - BOTTOM)


def step_chart(code: str, points: Sequence[PricePoint], last_version: int,
               point_href: Callable[[PricePoint], str] | None = None) -> Chart | None:
    """The chart of `points` in the currency of the latest one; None when nothing is priced."""
    if not points:
        return None
    currency = points[-1].currency
    drawn = [p for p in points if p.currency == currency]
    time_axis = max(p.at for p in drawn) - min(p.at for p in drawn) > MOMENT
    if time_axis:
        drawn.sort(key=lambda p: (p.at, p.version))  # the as-of order: time, then version
    amounts = [float(Decimal(p.amount)) for p in drawn]
    low, high = _y_range(min(amounts), max(amounts))
    if time_axis:
        t_span = (drawn[-1].at - drawn[0].at).total_seconds()
        # The last price runs on a little: it is still in force.
        frame = _Frame(True, drawn[0].at, 0.0, t_span * 1.04, low, high)
    else:
        frame = _Frame(False, drawn[0].at, drawn[0].version, max(last_version, drawn[-1].version) + 1, low, high)
    axis = "over time (UTC)" if time_axis else "by version"
    parts = [
        f'<svg class="price-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-labelledby="chart-title" font-family="system-ui, sans-serif" font-size="12">',
        f'<title id="chart-title">Price of {escape(code)} {axis}, in {escape(currency)}</title>',
        *_y_axis(frame, currency, max(_fraction_digits(p.amount) for p in drawn)),
        *(_time_labels(drawn[0].at, frame.end, frame.x, HEIGHT - BOTTOM) if time_axis
          else _version_labels(frame, drawn)),
        _step_line(frame, drawn, amounts),
        *_point_marks(frame, drawn, amounts, currency, point_href),
        "</svg>",
    ]
    return Chart(Markup("".join(parts)), currency, len(drawn), len(points) - len(drawn), time_axis)


def _y_axis(frame: _Frame, currency: str, digits: int) -> list[str]:
    """Grid lines with their amounts, the x axis line and the currency."""
    base = HEIGHT - BOTTOM
    parts = []
    for tick in _ticks(frame.low, frame.high):
        ty = frame.y(tick)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" '
                     f'stroke="#e3e6ea"/>')
        parts.append(f'<text x="{LEFT - 8}" y="{ty + 4:.1f}" text-anchor="end" fill="#555">'
                     f'{tick:,.{digits}f}</text>')
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}" stroke="#999"/>')
    middle = TOP + (base - TOP) / 2
    parts.append(f'<text x="16" y="{middle:.1f}" text-anchor="middle" fill="#555" '
                 f'transform="rotate(-90 16 {middle:.1f})">{escape(currency)}</text>')
    return parts


def _version_labels(frame: _Frame, drawn: Sequence[PricePoint]) -> list[str]:
    """At most about MAX_X_LABELS versions (the last always) with their times, under the axis."""
    base = HEIGHT - BOTTOM
    step = max(1, math.ceil(len(drawn) / MAX_X_LABELS))
    parts = []
    for index, point in enumerate(drawn):
        if index % step and index != len(drawn) - 1:
            continue
        px = frame.x(frame.place(point))
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{base}" y2="{base + 5}" stroke="#999"/>')
        parts.append(f'<text class="x-label" x="{px:.1f}" y="{base + 19}" text-anchor="middle" '
                     f'fill="#333">v{point.version}</text>')
        parts.append(f'<text x="{px:.1f}" y="{base + 34}" text-anchor="middle" fill="#777" '
                     f'font-size="11">{point.at:%m-%d %H:%M}</text>')
    return parts


def _step_line(frame: _Frame, drawn: Sequence[PricePoint], amounts: Sequence[float]) -> str:
    """Each price held until the next, the last one run on to the end of the axis."""
    path = [f"M{frame.x(frame.place(drawn[0])):.1f},{frame.y(amounts[0]):.1f}"]
    for point, amount in zip(drawn[1:], amounts[1:], strict=True):
        path.append(f"H{frame.x(frame.place(point)):.1f}V{frame.y(amount):.1f}")
    path.append(f"H{frame.x(frame.end):.1f}")
    return f'<path class="step" d="{"".join(path)}" fill="none" stroke="#1f6feb" stroke-width="2"/>'


def _point_marks(frame: _Frame, drawn: Sequence[PricePoint], amounts: Sequence[float], currency: str,
                 point_href: Callable[[PricePoint], str] | None) -> list[str]:
    """A dot per priced event, with its exact amount, linked to the price as of its time."""
    parts = []
    for point, amount in zip(drawn, amounts, strict=True):
        circle = (
            f'<circle class="point" data-version="{point.version}" cx="{frame.x(frame.place(point)):.1f}" '
            f'cy="{frame.y(amount):.1f}" r="4" fill="#1f6feb"><title>v{point.version}: {escape(point.amount)} '
            f'{escape(currency)}, {point.at:%Y-%m-%d %H:%M:%S} UTC</title></circle>'
        )
        if point_href is not None:
            circle = f'<a href="{escape(point_href(point))}">{circle}</a>'
        parts.append(circle)
    return parts


def _time_labels(start: datetime, span: float, x: Callable[[float], float], base: float) -> list[str]:
    """About MAX_X_LABELS evenly spaced time labels under the axis; the format follows the span."""
    if span > 2 * 86400:
        fmt = "%Y-%m-%d"
    elif span > 3600:
        fmt = "%m-%d %H:%M"
    else:
        fmt = "%H:%M:%S"
    count = MAX_X_LABELS - 2
    parts = []
    for i in range(count + 1):
        offset = span * i / count
        px = x(offset)
        moment = start + timedelta(seconds=offset)
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{base}" y2="{base + 5}" stroke="#999"/>')
        parts.append(f'<text class="x-label" x="{px:.1f}" y="{base + 19}" text-anchor="middle" fill="#333" '
                     f'font-size="11">{moment:{fmt}}</text>')
    return parts


def _fraction_digits(amount: str) -> int:
    return len(amount.partition(".")[2])


def _y_range(low: float, high: float) -> tuple[float, float]:
    """An axis range around [low, high] with some air, starting at 0 when that is close."""
    span = high - low or max(abs(high) * 0.2, 1.0)
    bottom = low - span * 0.15
    if low >= 0 and bottom < 0 or (low > 0 and low < span):
        bottom = 0.0
    return bottom, high + span * 0.15


def _ticks(low: float, high: float) -> list[float]:
    """Round values inside [low, high], about Y_TICKS of them."""
    raw = (high - low) / Y_TICKS
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 1)]
