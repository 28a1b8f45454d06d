"""The console's price chart: one point per priced event, a step line, exact labels, escaped text."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from core.events import Event, Price
from service.console.chart import price_points, step_chart

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def event(version: int, amount: str | None, currency: str = "EUR", at: datetime | None = None) -> Event:
    return Event(uuid.uuid4(), "B-1", version, "PriceChanged", Price(amount, currency) if amount else None, None,
                 "hotel", None, at or T0 + timedelta(minutes=version), version * 1000)


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def path_moves(d: str) -> list[str]:
    return re.findall(r"[MHV]", d)


def test_one_point_per_priced_event_and_a_step_per_change() -> None:
    events = [event(1, "120.00"), event(2, "99.50"), event(3, None), event(4, "130.00")]
    chart = step_chart("B-1", price_points(events), last_version=5)
    root = parse(chart.svg)
    points = root.findall(f".//{SVG}circle[@class='point']")
    assert [p.get("data-version") for p in points] == ["1", "2", "4"]
    assert chart.points == 3 and chart.currency == "EUR" and chart.other_currencies == 0
    d = root.find(f".//{SVG}path[@class='step']").get("d")
    # start, then horizontal + vertical per later price, then on to the current version
    assert path_moves(d) == ["M", "H", "V", "H", "V", "H"]
    titles = [p.find(f"{SVG}title").text for p in points]
    assert titles[1] == "v2: 99.50 EUR, 2026-11-26 10:02:00 UTC"
    assert chart.time_axis  # minutes apart: the x axis is real time
    assert root.find(f"{SVG}title").text == "Price of B-1 over time (UTC), in EUR"


def test_events_of_one_moment_are_drawn_by_version() -> None:
    events = [event(v, a, at=T0 + timedelta(microseconds=v)) for v, a in ((1, "120.00"), (2, "99.50"), (4, "130"))]
    chart = step_chart("B-1", price_points(events), last_version=5)
    assert not chart.time_axis
    assert [t.text for t in parse(chart.svg).findall(f".//{SVG}text[@class='x-label']")] == ["v1", "v2", "v4"]


def test_the_time_axis_is_proportional_to_time_and_points_link_to_the_price_then() -> None:
    events = [event(1, "10", at=T0), event(2, "20", at=T0 + timedelta(hours=1)),
              event(3, "30", at=T0 + timedelta(hours=4))]
    chart = step_chart("B-1", price_points(events), last_version=3, point_href=lambda p: f"?at={p.at.isoformat()}&x")
    root = parse(chart.svg)
    xs = [float(c.get("cx")) for c in root.findall(f".//{SVG}circle")]
    assert abs((xs[1] - xs[0]) * 3 - (xs[2] - xs[1])) < 0.5  # 1 h then 3 h
    links = [a.get("href") for a in root.findall(f".//{SVG}a")]
    assert links[1] == "?at=2026-11-26T11:00:00+00:00&x"  # escaped in the markup, plain once parsed
    labels = [t.text for t in root.findall(f".//{SVG}text[@class='x-label']")]
    assert labels[0] == "11-26 10:00" and len(labels) <= 10


def test_steps_go_down_and_up_with_the_price() -> None:
    chart = step_chart("B-1", price_points([event(1, "100"), event(2, "50"), event(3, "150")]), last_version=3)
    ys = [float(c.get("cy")) for c in parse(chart.svg).findall(f".//{SVG}circle")]
    assert ys[1] > ys[0] > ys[2]  # SVG y grows downwards: 50 lowest on screen, 150 highest


def test_a_single_price_still_draws_a_line_to_the_current_version() -> None:
    chart = step_chart("B-1", price_points([event(1, "0"), event(2, None)]), last_version=2)
    root = parse(chart.svg)
    assert len(root.findall(f".//{SVG}circle")) == 1
    assert path_moves(root.find(f".//{SVG}path").get("d")) == ["M", "H"]


def test_only_the_latest_currency_is_drawn() -> None:
    chart = step_chart("B-1", price_points([event(1, "120.00"), event(2, "5.000", "KWD"), event(3, "6.250", "KWD")]),
                       last_version=3)
    assert chart.currency == "KWD" and chart.points == 2 and chart.other_currencies == 1
    labels = [t.text for t in parse(chart.svg).findall(f".//{SVG}text")]
    assert "KWD" in labels and any(re.fullmatch(r"\d+\.\d{3}", label or "") for label in labels)


def test_no_price_no_chart() -> None:
    assert step_chart("B-1", price_points([event(1, None)]), last_version=1) is None


def test_text_is_escaped() -> None:
    chart = step_chart("<b>&x", price_points([event(1, "1.00")]), last_version=1)
    assert "<b>" not in chart.svg and "&lt;b&gt;&amp;x" in chart.svg
    parse(chart.svg)


def test_many_versions_keep_the_axis_readable() -> None:
    events = [event(v, f"{100 + v}.00", at=T0) for v in range(1, 201)]
    root = parse(step_chart("B-1", price_points(events), last_version=200).svg)
    assert len(root.findall(f".//{SVG}circle")) == 200
    labels = root.findall(f".//{SVG}text[@class='x-label']")
    assert len(labels) <= 11 and labels[-1].text == "v200"
