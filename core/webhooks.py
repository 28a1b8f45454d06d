"""Which receivers a subscription may reach: the rules the API checks at creation and the `deliver`
worker checks again before every delivery (a name can resolve elsewhere by then).

- `https` only; plain `http` only to a host listed in LEDGER_WEBHOOK_ALLOWED_HOSTS.
- No user name or password in the URL (it would be a secret in every log line), no fragment.
- Every address the host resolves to must be public: loopback, link-local (the cloud metadata
  address 169.254.169.254 among them), private, shared (100.64/10), multicast, reserved and
  unspecified addresses are refused, IPv4 inside IPv6 included, unless the host is allowed.
- The worker connects to the address it checked (never resolving the name a second time), follows
  no redirect, and reads at most MAX_ANSWER_BYTES of an answer (cdc/deliver.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

# NOTIFY channel: a subscription was created, changed or deleted (the API sends it, the worker listens).
SUBSCRIPTIONS_CHANNEL = "ledger_subscriptions"

MAX_URL_BYTES = 2048
MAX_ANSWER_BYTES = 64 * 1024
RESOLVE_TIMEOUT = 5.0

# Outside the ranges Python's `is_global` already excludes: the metadata services' IPv6 address.
_METADATA_V6 = ipaddress.ip_network("fd00:ec2::254/128")


class UnsafeUrl(ValueError):
    """A receiver URL (or the addresses it resolves to) that a subscription may not use."""


@dataclass(frozen=True)
class Receiver:
    """A receiver URL taken apart: where to connect, and what to say in Host and TLS SNI."""

    url: str
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int
    target: str  # path and query


def parse(url: str, allowed: frozenset[str]) -> Receiver:
    """`url` checked for its form (not yet its addresses); UnsafeUrl saying why otherwise."""
    if len(url.encode()) > MAX_URL_BYTES:
        raise UnsafeUrl(f"the URL is over {MAX_URL_BYTES} bytes")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UnsafeUrl("the URL holds white space or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeUrl(f"not a URL: {error}") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not host:
        raise UnsafeUrl("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL may not carry a user name or password (it would show in logs)")
    if parts.fragment:
        raise UnsafeUrl("the URL may not carry a fragment")
    if scheme != "https" and not (scheme == "http" and host in allowed):
        raise UnsafeUrl("the URL must be https (plain http only to a host in LEDGER_WEBHOOK_ALLOWED_HOSTS)")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Receiver(url=url, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80),
                    target=target)


def refused_address(address: str) -> str | None:
    """Why `address` is not a public one a receiver may have, or None when it is."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local or ip in _METADATA_V6:
        return "link-local (the metadata range)"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "not a unicast address"
    if not ip.is_global:
        return "private"
    return None


async def resolve(receiver: Receiver, allowed: frozenset[str]) -> list[str]:
    """The addresses to connect to for `receiver`, every one checked; UnsafeUrl when the host does
    not resolve, or resolves to any address a receiver may not have (unless the host is allowed)."""
    loop = asyncio.get_running_loop()
    try:
        found = await asyncio.wait_for(
            loop.getaddrinfo(receiver.host, receiver.port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT)
    except (OSError, TimeoutError) as error:
        raise UnsafeUrl(f"the host {receiver.host!r} does not resolve ({type(error).__name__})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if not addresses:
        raise UnsafeUrl(f"the host {receiver.host!r} does not resolve")
    if receiver.host not in allowed:
        for address in addresses:
            why = refused_address(address)
            if why is not None:
                raise UnsafeUrl(f"the host {receiver.host!r} resolves to a {why} address, which receivers may not "
                                "have (unless listed in LEDGER_WEBHOOK_ALLOWED_HOSTS)")
    return addresses


async def check(url: str, allowed: frozenset[str]) -> Receiver:
    """`url` checked for its form and its addresses (what the API does at creation)."""
    receiver = parse(url, allowed)
    await resolve(receiver, allowed)
    return receiver
