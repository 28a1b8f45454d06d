"""The booking console over plain HTTP: sign-in and its cookie, every error page, nothing leaked."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import free_port, random_code, sql
from tests.e2e.conftest import Keys, Server, auth, cli, make_key, session_cookie, signed_in, start_server


@pytest.fixture
def client(console_server: Server) -> httpx.Client:
    # The Origin a browser sends with the console's own forms.
    with httpx.Client(base_url=console_server.url, headers={"Origin": console_server.url}, timeout=15,
                      follow_redirects=False) as c:
        yield c


def session(client: httpx.Client, key: str) -> dict[str, str]:
    """The cookie of a new console session for `key`."""
    return signed_in(str(client.base_url).rstrip("/"), key)


def create_booking(client: httpx.Client, key: str, *prices: str | None) -> tuple[str, list[dict]]:
    code = random_code("CON")
    events = [{"type": "PriceChanged", "price": {"amount": p, "currency": "EUR"}} if p else {"type": "Note"}
              for p in prices]
    answer = client.post(f"/v1/bookings/{code}/events", headers=auth(key),
                         json={"expected_version": 0, "events": events})
    assert answer.status_code == 201, answer.text
    return code, answer.json()["events"]


def assert_page(response: httpx.Response, status: int, *texts: str) -> str:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    assert "Traceback" not in response.text
    for text in texts:
        assert text in response.text
    return response.text


def test_pages_without_a_cookie_send_you_to_sign_in(client: httpx.Client) -> None:
    for path in ("/console/booking?code=ABC", "/console/pipeline", "/console/cluster"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/console"
    assert_page(client.get("/console"), 200, 'action="/console/sign-in"', 'method="post"')


def test_sign_in_sets_a_strict_http_only_secure_cookie_on_console_only(client: httpx.Client, keys: Keys) -> None:
    answer = client.post("/console/sign-in", data={"key": keys.reader})
    assert answer.status_code == 303 and answer.headers["location"] == "/console"
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attributes
    assert "SameSite=strict" in cookie and "Path=/console;" in cookie + ";"
    assert keys.reader not in answer.headers["location"]
    home = assert_page(client.get("/console", headers={"Cookie": cookie.split(";", 1)[0]}), 200,
                       "Signed in: audit", "Sign out")
    assert keys.reader not in home


def test_the_cookie_holds_a_session_id_never_the_key(client: httpx.Client, keys: Keys, database_url: str) -> None:
    answer = client.post("/console/sign-in", data={"key": keys.reader})
    session_id = session_cookie(answer)
    secret = keys.reader.split("_", 2)[2]
    assert keys.reader not in answer.headers["set-cookie"] and secret not in answer.headers["set-cookie"]
    another = session_cookie(client.post("/console/sign-in", data={"key": keys.reader}))
    assert len(session_id) >= 43 and session_id != another
    # Only its hash is stored, with an expiry.
    assert sql(database_url, "SELECT count(*) FROM console_sessions WHERE id_hash = sha256($1::bytea) "
               "AND expires_at > now() + interval '7 hours'", session_id.encode()) == 1
    # The key itself in the cookie (what the console used to keep there) signs nobody in.
    answer = client.get("/console/pipeline", headers={"Cookie": f"ledger_console={keys.reader}"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console?notice=expired"


def test_bad_and_write_only_keys_are_refused_with_a_message(client: httpx.Client, keys: Keys) -> None:
    for presented in ("", "nonsense", keys.hotel + "x", "bl_0123456789abcdef_" + "A" * 43):
        answer = client.post("/console/sign-in", data={"key": presented})
        assert "set-cookie" not in answer.headers
        page = assert_page(answer, 401, "unknown, revoked or mistyped")
        assert not presented or presented not in page
    answer = client.post("/console/sign-in", data={"key": keys.writer})
    assert "set-cookie" not in answer.headers
    assert_page(answer, 403, "This flight key has no read scope")


def test_a_sign_in_posted_from_another_site_is_refused(client: httpx.Client, keys: Keys) -> None:
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = client.post("/console/sign-in", data={"key": keys.reader}, headers=headers)
        assert "set-cookie" not in answer.headers
        assert_page(answer, 403, "did not come from the console")


def test_sign_in_and_out_need_an_exact_same_origin_or_a_same_origin_referer(console_server: Server,
                                                                             keys: Keys) -> None:
    """Origin must be the console's own scheme, host and port, nothing more; without an Origin, the
    Referer must be a page of the console's own origin; with neither, the POST is refused."""
    url = console_server.url  # http://127.0.0.1:PORT
    port = url.rsplit(":", 1)[1]
    refused = [
        {},                                                     # neither Origin nor Referer
        {"Referer": "http://evil.example/console"},             # no Origin, a foreign Referer
        {"Referer": f"https://127.0.0.1:{port}/console"},       # ... a Referer of another scheme
        {"Referer": "not a url"},
        {"Origin": f"https://127.0.0.1:{port}"},                # another scheme
        {"Origin": f"{url}/console"},                           # an Origin with a path
        {"Origin": f"{url}/"},
        {"Origin": f"http://127.0.0.1:{int(port) + 1}"},        # another port
        {"Origin": "http://127.0.0.1"},                         # ... the default one
        {"Origin": f"http://user@127.0.0.1:{port}"},
        {"Origin": "null"},                                     # an opaque origin (a sandbox, a data: page)
        {"Origin": "http://evil.example", "Referer": f"{url}/console"},  # Origin wins over Referer
    ]
    with httpx.Client(base_url=url, timeout=15, follow_redirects=False) as plain:  # sends neither header itself
        for headers in refused:
            answer = plain.post("/console/sign-in", data={"key": keys.reader}, headers=headers)
            assert "set-cookie" not in answer.headers, headers
            assert_page(answer, 403, "did not come from the console")
            cookie = signed_in(url, keys.reader)
            out = plain.post("/console/sign-out", headers={**headers, **cookie})
            assert_page(out, 403, "did not come from the console")
            assert plain.get("/console/pipeline", headers=cookie).status_code == 200, headers  # still signed in
        for headers in ({"Origin": url}, {"Referer": f"{url}/console?notice=signed_out"},
                        # behind a proxy that terminates TLS
                        {"Origin": f"https://127.0.0.1:{port}", "X-Forwarded-Proto": "https"}):
            answer = plain.post("/console/sign-in", data={"key": keys.reader}, headers=headers)
            assert answer.status_code == 303 and "set-cookie" in answer.headers, headers
            cookie = {"Cookie": f"ledger_console={session_cookie(answer)}"}
            out = plain.post("/console/sign-out", headers={**headers, **cookie})
            assert out.status_code == 303 and out.headers["location"] == "/console?notice=signed_out", headers


def test_booking_page_shows_owner_events_chart_and_replication(client: httpx.Client, keys: Keys) -> None:
    code, events = create_booking(client, keys.hotel, "120.00", None, "99.50")
    page = assert_page(client.get("/console/booking", params={"code": code}, headers=session(client, keys.reader)), 200,
                       code, "hotel", "99.50 EUR", "DynamoDB unreachable")
    assert page.count('class="point"') == 2
    for event in events:
        assert event["event_id"] in page and str(event["position"]) in page
    assert "3 events" in page  # no relay runs here: everything is still in the outbox
    assert keys.reader not in page


def test_booking_page_answers_the_price_as_of_a_moment(client: httpx.Client, keys: Keys) -> None:
    code, events = create_booking(client, keys.hotel, "120.00", None, "99.50")
    cookie = session(client, keys.reader)
    recorded = events[0]["recorded_at"]
    page = assert_page(client.get("/console/booking", params={"code": code, "at": recorded}, headers=cookie), 200,
                       'id="price-as-of"', "<strong>99.50 EUR</strong>, set by version 3")
    assert 'href="/console/booking?code=' in page  # the chart's points ask for their own time
    before = assert_page(client.get("/console/booking", params={"code": code, "at": "2000-01-01 10:00",
                                                                "clock": "occurred"}, headers=cookie), 200)
    assert "no price yet" in before and "2000-01-01 10:00:00 UTC (occurred clock)" in before
    assert_page(client.get("/console/booking", params={"code": code, "at": "noon"}, headers=cookie), 200,
                "That is not a time")


def test_a_moment_outside_the_years_1_to_9999_in_utc_is_a_notice(client: httpx.Client, keys: Keys) -> None:
    code, _ = create_booking(client, keys.hotel, "120.00")
    cookie = session(client, keys.reader)
    for at in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-01:00"):
        for clock in ("recorded", "occurred"):
            page = assert_page(client.get("/console/booking", params={"code": code, "at": at, "clock": clock},
                                          headers=cookie), 200, code, "120.00 EUR")
            assert "That time is outside the years 1 to 9999 in UTC" in page and 'id="price-as-of"' not in page
    for at in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"):  # the ends themselves are times
        assert_page(client.get("/console/booking", params={"code": code, "at": at}, headers=cookie), 200,
                    'id="price-as-of"')


def test_unknown_booking_bad_code_and_empty_code(client: httpx.Client, keys: Keys) -> None:
    missing = random_code("NONE")
    assert_page(client.get("/console/booking", params={"code": missing}, headers=session(client, keys.reader)), 404,
                f"No booking {missing}")
    bad = '<script>alert(1)</script>'
    page = assert_page(client.get("/console/booking", params={"code": bad}, headers=session(client, keys.reader)), 422,
                       "A booking code is 1 to 64")
    assert bad not in page and "&lt;script&gt;" in page
    empty = client.get("/console/booking", params={"code": ""}, headers=session(client, keys.reader))
    assert empty.status_code == 303 and empty.headers["location"] == "/console"


def test_data_written_by_a_client_is_escaped(client: httpx.Client, keys: Keys) -> None:
    code = random_code("XSS")
    client.post(f"/v1/bookings/{code}/events", headers=auth(keys.hotel), json={
        "expected_version": 0, "events": [{"type": "Note", "data": {"note": "<img src=x onerror=alert(1)>"}}]})
    page = assert_page(client.get("/console/booking", params={"code": code}, headers=session(client, keys.reader)), 200)
    assert "<img src=x" not in page and "&lt;img src=x" in page


def test_pipeline_page_without_a_relay_or_dynamodb(client: httpx.Client, keys: Keys) -> None:
    create_booking(client, keys.hotel, "10.00")
    page = assert_page(client.get("/console/pipeline", headers=session(client, keys.reader)), 200,
                       "No relay holds the lease", "DynamoDB unreachable", "Kafka unreachable")
    waiting = page.split("Events waiting</dt><dd>")[1].split("<")[0]
    assert int(waiting) >= 1


def test_cluster_page_without_a_cluster(client: httpx.Client, keys: Keys) -> None:
    """An API on one Postgres (LEDGER_PATRONI_URLS unset) says so; the page asks Patroni nothing."""
    answer = client.get("/console/cluster", headers=session(client, keys.reader))
    assert_page(answer, 200, "does not know of a replicated cluster", "<code>LEDGER_PATRONI_URLS</code> is not set")
    assert "default-src 'none'" in answer.headers["content-security-policy"]


def test_a_revoked_key_is_signed_out(client: httpx.Client, database_url: str) -> None:
    key = make_key(database_url, "support", "read")
    cookie = session(client, key)
    assert client.get("/console/pipeline", headers=cookie).status_code == 200
    key_id = key.split("_")[1]
    cli(database_url, "keys", "revoke", key_id)
    answer = client.get("/console/pipeline", headers=cookie)
    assert answer.status_code == 303 and answer.headers["location"] == "/console?notice=expired"
    assert "Max-Age=0" in answer.headers["set-cookie"] and "ledger_console=\"\"" in answer.headers["set-cookie"]
    assert_page(client.get("/console?notice=expired"), 200, "no longer valid")


def test_sign_out_ends_the_session_and_clears_the_cookie(client: httpx.Client, keys: Keys) -> None:
    cookie = session(client, keys.reader)
    answer = client.post("/console/sign-out", headers=cookie)
    assert answer.status_code == 303 and answer.headers["location"] == "/console?notice=signed_out"
    cleared = answer.headers["set-cookie"]
    assert "Max-Age=0" in cleared and "Path=/console" in cleared and "Secure" in cleared
    # A copy of the cookie kept from before is worth nothing now.
    assert client.get("/console/pipeline", headers=cookie).headers["location"] == "/console?notice=expired"


def test_an_expired_session_is_refused(client: httpx.Client, keys: Keys, database_url: str) -> None:
    cookie = session(client, keys.reader)
    assert client.get("/console/pipeline", headers=cookie).status_code == 200
    session_id = cookie["Cookie"].split("=", 1)[1]
    sql(database_url, "UPDATE console_sessions SET expires_at = now() - interval '1 second' "
        "WHERE id_hash = sha256($1::bytea)", session_id.encode())
    assert client.get("/console/pipeline", headers=cookie).headers["location"] == "/console?notice=expired"


def test_the_key_never_reaches_the_log(console_server: Server, client: httpx.Client, keys: Keys) -> None:
    client.post("/console/sign-in", data={"key": keys.car})
    client.get("/console/pipeline", headers=session(client, keys.car))
    log = console_server.log_path.read_text()
    assert '"path": "/console/sign-in"' in log.replace('"path":"', '"path": "')
    assert keys.car not in log and keys.car.split("_", 2)[2] not in log


def test_postgres_down_is_a_503_page(database_url: str) -> None:
    dead = f"postgresql://ledger@127.0.0.1:{free_port()}/ledger"
    server = start_server(dead, workers=1, ready_path="/health/live")
    try:
        fake_key = f"bl_{uuid.uuid4().hex[:16]}_{'A' * 43}"
        with httpx.Client(base_url=server.url, headers={"Origin": server.url}, timeout=30) as client:
            some_session = {"Cookie": f"ledger_console={uuid.uuid4().hex}"}
            assert_page(client.get("/console/pipeline", headers=some_session), 503, "The ledger is not reachable")
            assert_page(client.post("/console/sign-in", data={"key": fake_key}), 503, "The ledger is not reachable")
    finally:
        server.stop()
