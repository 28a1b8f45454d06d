"""The console in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium).

The screenshot of the booking page is kept as a test artifact in test-artifacts/ at the top of
the repository (git-ignored; LEDGER_TEST_ARTIFACTS points elsewhere), for CI to archive.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.conftest import random_code
from tests.e2e.conftest import Keys, Server, auth

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("LEDGER_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        try:
            yield browser
        finally:
            browser.close()


def test_sign_in_look_up_a_booking_and_sign_out(browser: Browser, console_server: Server, keys: Keys) -> None:
    code = random_code("BROWSER")
    changes = [("BookingPriced", "420.00"), ("PriceChanged", "389.50"), ("GuestNote", None),
               ("RoomUpgraded", "455.00"), ("PriceChanged", "430.00")]
    with httpx.Client(base_url=console_server.url, timeout=15) as client:
        events = []
        for index, (kind, amount) in enumerate(changes):
            event = {"type": kind, "data": {"step": index}}
            if amount:
                event["price"] = {"amount": amount, "currency": "EUR"}
            key = keys.hotel if index % 2 == 0 else keys.pricing
            answer = client.post(f"/v1/bookings/{code}/events", headers=auth(key),
                                 json={"expected_version": index, "events": [event]})
            assert answer.status_code == 201, answer.text
            events += answer.json()["events"]

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{console_server.url}/console")
        page.fill("#key", keys.reader)
        page.click("form[action='/console/sign-in'] button")
        page.wait_for_url(f"{console_server.url}/console")
        assert "Signed in: audit" in page.inner_text("header")

        cookies = {c["name"]: c for c in context.cookies()}
        cookie = cookies["ledger_console"]
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/console"
        assert page.evaluate("document.cookie") == ""  # scripts cannot read it

        page.fill("#code", code)
        page.click("form[action='/console/booking'] button")
        page.wait_for_selector("#events")
        assert page.url == f"{console_server.url}/console/booking?code={code}"

        # The chart: one point per priced event, in version order, and one step line.
        points = page.locator("svg.price-chart circle.point")
        assert points.count() == 4
        assert [points.nth(i).get_attribute("data-version") for i in range(4)] == ["1", "2", "4", "5"]
        assert page.locator("svg.price-chart path.step").count() == 1
        assert "v5: 430.00 EUR" in points.nth(3).locator("title").text_content()

        # The table: every event, with who wrote it.
        rows = page.locator("#events tbody tr")
        assert rows.count() == len(events)
        for i, event in enumerate(events):
            cells = rows.nth(i).locator("td").all_inner_texts()
            assert cells[0] == str(event["version"]) and cells[1] == event["type"]
            assert cells[5] == event["department"] and cells[7] == event["event_id"]
            assert cells[8] == str(event["position"])
            assert cells[2] == (f"{event['price']['amount']} EUR" if event["price"] else "–")
        assert "430.00 EUR" in page.inner_text("section.card >> nth=0")
        assert "DynamoDB unreachable" in page.inner_text("#replication")

        assert keys.reader not in page.content() and keys.reader not in page.url
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "console-booking.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")

        page.click("text=Sign out")
        page.wait_for_url(f"{console_server.url}/console?notice=signed_out")
        assert "ledger_console" not in {c["name"] for c in context.cookies()}
        page.goto(f"{console_server.url}/console/booking?code={code}")
        assert page.url == f"{console_server.url}/console" and page.locator("#key").is_visible()
    finally:
        context.close()
    assert keys.reader not in console_server.log_path.read_text()
