"""The receiver rules (core/webhooks.py), the signature (cdc/deliver.py against the client library's
check), the delivery ids and the backoff: pure values, no server."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from booking_ledger_client import InvalidSignature, verify_signature

from cdc.deliver import FIRST_RETRY, RETRY_CAP, delivery_id, retry_delay, sign
from core import webhooks
from core.events import Event

ALLOWED = frozenset({"127.0.0.1", "hooks.internal"})


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "169.254.169.254", "fe80::1%eth0",
                                     "fd00:ec2::254", "10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1",
                                     "0.0.0.0", "::", "224.0.0.1", "240.0.0.1", "::ffff:127.0.0.1",
                                     "::ffff:169.254.169.254", "fc00::1"])
def test_addresses_inside_are_refused(address: str) -> None:
    assert webhooks.refused_address(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::6810:85e5"])
def test_public_addresses_pass(address: str) -> None:
    assert webhooks.refused_address(address) is None


@pytest.mark.parametrize(("url", "why"), [
    ("http://example.com/x", "must be https"),
    ("ftp://example.com/x", "must be https"),
    ("https://user:pw@example.com/x", "user name or password"),
    ("https://example.com/x#frag", "fragment"),
    ("https:///x", "no host"),
    ("https://exa mple.com/", "white space"),
    ("https://example.com:99999/", "not a URL"),
    ("https://example.com/" + "x" * 2048, "over 2048 bytes"),
])
def test_urls_of_the_wrong_form_are_refused(url: str, why: str) -> None:
    with pytest.raises(webhooks.UnsafeUrl, match=why):
        webhooks.parse(url, ALLOWED)


def test_an_allowed_host_may_use_http_and_the_parts_are_kept() -> None:
    receiver = webhooks.parse("http://127.0.0.1:8080/hooks/in?x=1", ALLOWED)
    assert (receiver.scheme, receiver.host, receiver.port, receiver.target) == ("http", "127.0.0.1", 8080,
                                                                                "/hooks/in?x=1")
    assert webhooks.parse("https://Example.COM", ALLOWED).target == "/"
    assert webhooks.parse("https://example.com", ALLOWED).port == 443


async def test_a_name_that_resolves_inside_is_refused_unless_allowed() -> None:
    with pytest.raises(webhooks.UnsafeUrl, match="loopback"):
        await webhooks.check("https://localhost/x", ALLOWED)
    assert await webhooks.resolve(webhooks.parse("http://127.0.0.1:9/x", ALLOWED), ALLOWED) == ["127.0.0.1"]


def test_the_signature_is_what_the_client_library_checks() -> None:
    body = b'[{"event_id":"x"}]'
    now = int(time.time())
    header = sign("whsec_right", now, body)
    assert header.startswith(f"t={now},v1=")
    verify_signature("whsec_right", header, body)
    with pytest.raises(InvalidSignature, match="no v1 signature matches"):
        verify_signature("whsec_wrong", header, body)
    with pytest.raises(InvalidSignature, match="no v1 signature matches"):
        verify_signature("whsec_right", header, body + b" ")
    with pytest.raises(InvalidSignature, match="away from now"):
        verify_signature("whsec_right", sign("whsec_right", now - 301, body), body)
    with pytest.raises(InvalidSignature, match="no t="):
        verify_signature("whsec_right", "v1=abc", body)


def _event(position: int) -> Event:
    return Event(event_id=uuid.uuid4(), booking_code="B", version=1, type="T", price=None, data=None,
                 department="d", occurred_at=None, recorded_at=datetime.now(UTC), position=position)


def test_the_same_events_of_a_subscription_have_the_same_delivery_id() -> None:
    subscription = uuid.uuid4()
    first, last = _event(10), _event(20)
    assert delivery_id(subscription, [first, last]) == delivery_id(subscription, [_event(10), _event(20)])
    assert delivery_id(subscription, [first]) != delivery_id(subscription, [first, last])
    assert delivery_id(uuid.uuid4(), [first, last]) != delivery_id(subscription, [first, last])


def test_the_backoff_grows_is_capped_and_jittered() -> None:
    for failures in range(1, 40):
        ceiling = min(RETRY_CAP, FIRST_RETRY * 2 ** (failures - 1))
        delays = {retry_delay(failures) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1
