"""Erasure over HTTP, on an API whose whole log the test reads: personal data is sealed
per booking, opened for readers, and after POST .../erase every read shows "erased" while prices,
versions, times and hashes stay; no plaintext personal data reaches a log, a metric or an error."""

from __future__ import annotations

import json
import uuid

import httpx

from tests.conftest import random_code
from tests.e2e.conftest import Server, auth, make_key, signed_in
from tests.e2e.test_http import assert_problem, events_url, priced


def streamed(client: httpx.Client, api: str, key: str, code: str, after: int, count: int) -> list[dict]:
    """The first `count` events of booking `code` after `after`, as the live stream sends them."""
    events: list[dict] = []
    with client.stream("GET", f"{api}/v1/events/stream", params={"after": after, "booking_code": code},
                       headers=auth(key)) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
                if len(events) == count:
                    break
    return events


def test_erasure_keeps_the_money_and_forgets_the_traveller(console_server: Server, database_url: str) -> None:
    server = console_server  # an API of the session's whose log this test can read (its Kafka and DynamoDB: none)
    api = server.url
    marker = f"Traveller-{uuid.uuid4().hex}"  # plaintext personal data nobody may log or show after erasure
    traveller = {"name": marker, "email": f"{marker}@example.org"}
    hotel = make_key(database_url, "hotel", "read,write,erase")
    car = make_key(database_url, "car", "read,write,erase")
    code = random_code("ERASE")
    seen: list[str] = []  # every answer's body, for the grep at the end
    with httpx.Client(timeout=10) as client:
        def call(method: str, url: str, key: str, **kwargs) -> httpx.Response:
            answer = client.request(method, url, headers=auth(key), **kwargs)
            seen.append(answer.text)
            return answer

        body = {"expected_version": 0, "events": [
            priced(data={"reason": "booked", "personal": traveller}, occurred_at="2026-11-26T10:00:00Z"),
            {"type": "Note", "data": {"personal": {"seat": "12A", "name": marker}}}]}
        created = call("POST", events_url(api, code), hotel, json=body)
        assert created.status_code == 201, created.text
        assert created.json()["events"][0]["data"]["personal"] == traveller  # the writer reads it back
        stored = created.json()["events"]
        retried = call("POST", events_url(api, code), hotel, json={**body, "events": [
            {**e, "event_id": ev["event_id"]} for e, ev in zip(body["events"], stored, strict=True)]})
        assert retried.status_code == 200, retried.text  # the same personal data seals to the same bytes
        call("POST", events_url(api, code), hotel, json={"events": [priced("80.00")]})
        before = call("GET", events_url(api, code), car).json()["events"]
        assert before[1]["data"]["personal"] == {"seat": "12A", "name": marker}  # any reader, as any field
        feed = call("GET", f"{api}/v1/events?after={before[0]['position'] - 1}&limit=1000", car).json()["events"]
        assert [e for e in feed if e["booking_code"] == code] == before
        cookie = signed_in(api, car)

        def console() -> str:
            page = client.get(f"{api}/console/booking", params={"code": code}, headers=cookie)
            assert page.status_code == 200, page.text[:300]
            seen.append(page.text)
            return page.text

        assert marker in console() and "enc:v1:" not in seen[-1]
        assert [e["data"]["personal"] for e in streamed(client, api, car, code, before[0]["position"] - 1, 2)] == \
               [traveller, {"seat": "12A", "name": marker}]
        proof = call("GET", f"{api}/v1/bookings/{code}/proof", car).json()
        assert marker not in str(proof) and '"personal": "enc:v1:' in proof["links"][0]["canonical"]

        # Refused, and said without the data: a personal field that is not an object, the erasing
        # event's type, an erasure by a department that does not own the booking.
        not_object = call("POST", events_url(api, code), hotel, json={"events": [{"type": "Note",
                                                                         "data": {"personal": marker}}]})
        assert_problem(not_object, 422, "validation_error")
        forged = call("POST", events_url(api, code), hotel, json={"events": [{"type": "PersonalDataErased"}]})
        assert_problem(forged, 422, "validation_error")
        assert_problem(call("POST", f"{api}/v1/bookings/{code}/erase", car), 403, "not_owner")
        assert_problem(call("POST", f"{api}/v1/bookings/{code}/erase",
                            make_key(database_url, "hotel", "read,write")), 403, "forbidden")
        assert_problem(call("POST", f"{api}/v1/bookings/{random_code('NONE')}/erase", hotel), 404,
                       "booking_not_found")

        erased = call("POST", f"{api}/v1/bookings/{code}/erase", hotel)
        assert erased.status_code == 201, erased.text
        assert erased.json()["event"]["type"] == "PersonalDataErased" and erased.json()["version"] == 4

        after = call("GET", events_url(api, code), car).json()["events"]
        assert [(e["data"] or {}).get("personal") for e in after] == ["erased", "erased", None, None]
        for old, new in zip(before, after[:3], strict=True):  # everything but the personal data stays
            assert {**old, "data": None} == {**new, "data": None}
            assert {k: v for k, v in (old["data"] or {}).items() if k != "personal"} == \
                   {k: v for k, v in (new["data"] or {}).items() if k != "personal"}
        feed = call("GET", f"{api}/v1/events?after={before[0]['position'] - 1}&limit=1000", car).json()["events"]
        assert [e["data"]["personal"] for e in feed if e["booking_code"] == code and e["version"] <= 2] == \
               ["erased", "erased"]
        assert [e["data"]["personal"] for e in streamed(client, api, car, code, before[0]["position"] - 1, 2)] == \
               ["erased", "erased"]
        assert "erased" in console() and "enc:v1:" not in seen[-1]
        price = call("GET", f"{api}/v1/bookings/{code}/price?version=2", car).json()
        assert price["price"] == {"amount": "120.00", "currency": "EUR"}
        assert call("GET", f"{api}/v1/bookings/{code}/proof", car).json()["links"][:3] == proof["links"]
        again = call("POST", events_url(api, code), hotel, json={"events": [
            {"type": "Note", "data": {"personal": {"name": marker}}}]})
        assert_problem(again, 409, "personal_data_erased")
        metrics = client.get(f"{api}/metrics").text

    problems = [text for text in seen if '"code":' in text and '"status":' in text]
    assert len(problems) == 6 and not any(marker in text for text in problems), "an error answer shows the data"
    assert not any(marker in text for text in seen[seen.index(erased.text):]), "a read after the erasure shows it"
    assert marker not in metrics
    assert marker not in server.log(), "the API's log holds plaintext personal data"
