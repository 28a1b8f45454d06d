"""The console in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium).

The screenshots of the booking and cluster pages are kept as a test artifact in test-artifacts/ at the top of
the repository (git-ignored; LEDGER_TEST_ARTIFACTS points elsewhere), for CI to archive.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

from devstack.ha import HACluster
from tests.conftest import free_port, random_code
from tests.e2e.conftest import Keys, Server, auth, start_server

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


def test_the_cluster_page_shows_patroni_and_etcd(browser: Browser, database_url: str, keys: Keys,
                                                ha_cluster: HACluster) -> None:
    """The replicated cluster as make run-ha's console shows it: its members with roles, timeline and
    lag, the synchronous standby, etcd's health; and a node that is not there, by its URL."""
    ha_cluster.wait_replicas(2, synchronous=False, timeout=90)
    [synchronous] = ha_cluster.wait_replicas(1, synchronous=True, timeout=90)
    leader = ha_cluster.primary()
    assert leader is not None
    gone = f"http://127.0.0.1:{free_port()}"
    server = start_server(
        database_url, workers=1, LEDGER_PATRONI_URLS=",".join([*(n.rest for n in ha_cluster.nodes), gone]),
        LEDGER_ETCD_URLS=f"http://127.0.0.1:{ha_cluster.etcd.port}",
        LEDGER_DYNAMODB_ENDPOINT=f"http://127.0.0.1:{free_port()}", LEDGER_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{server.url}/console/cluster")
        assert page.locator("#key").is_visible()  # signed out: the sign-in form, not the cluster
        page.fill("#key", keys.reader)
        page.click("form[action='/console/sign-in'] button")
        page.wait_for_url(f"{server.url}/console")
        page.click("header nav >> text=Cluster")
        page.wait_for_selector("#members")

        rows = page.locator("#members tbody tr")
        assert rows.count() == 3
        members = {cells[0]: cells for cells in (rows.nth(i).locator("td").all_inner_texts() for i in range(3))}
        assert members.keys() == {n.name for n in ha_cluster.nodes}
        assert members[leader.name][1] == "leader" and members[synchronous][1] == "synchronous standby"
        assert {cells[4] for cells in members.values()} == {"1"}  # one timeline, a fresh cluster's
        assert all(cells[3] == f"127.0.0.1:{n.pg_port}" for n in ha_cluster.nodes for cells in [members[n.name]])
        summary = page.inner_text("#summary").lower()  # the labels are shown in capitals
        assert f"leader\n{leader.name}" in summary and f"synchronous standby\n{synchronous}" in summary
        assert "healthy" in page.inner_text("#etcd") and "unhealthy" not in page.inner_text("#etcd")
        assert f"Not answering: {gone}" in page.inner_text("#members")

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "console-cluster.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        context.close()
        server.stop()
