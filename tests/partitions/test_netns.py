"""devstack/netns.py on real namespaces: hosts reach each other and the root namespace, each fault
cuts what it says and a heal restores it, and nothing is left behind, also after an exception or
a crashed earlier run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from devstack import netns
from devstack.netns import Network

pytestmark = pytest.mark.partitions

if os.geteuid() != 0:
    pytest.skip("network namespaces need root", allow_module_level=True)

SERVER = ("import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
          "s.bind(('0.0.0.0', 5555))\ns.listen()\nwhile True:\n    s.accept()[0].close()")


def connect_ms(net: Network, src: str, dst: str) -> float | None:
    """Milliseconds a TCP connect from host src to host dst takes; None when it fails within 1 s."""
    code = (f"import socket, time\nt = time.monotonic()\ntry:\n"
            f"    socket.create_connection(('{net.hosts[dst].address}', 5555), timeout=1).close()\n"
            f"    print((time.monotonic() - t) * 1000)\nexcept OSError:\n    print('none')")
    out = net.hosts[src].run(sys.executable, "-c", code).stdout.strip()
    return None if out == "none" else float(out)


def namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    return [line.split()[0] for line in listed if line.startswith(netns.PREFIX + "-")]


def test_faults_cut_what_they_say_and_everything_is_removed_after_an_exception() -> None:
    subprocess.run(["ip", "netns", "add", f"{netns.PREFIX}-leftover"], check=True)  # a crashed run's
    with pytest.raises(RuntimeError, match="on purpose"), Network() as net:
        assert namespaces() == []  # the leftover went first
        for name in ("a", "b", "c"):
            net.add_host(name)
        servers = [subprocess.Popen(net.hosts[n].wrap([sys.executable, "-c", SERVER])) for n in ("a", "b", "c")]
        deadline = time.monotonic() + 10
        while connect_ms(net, "a", "b") is None or connect_ms(net, "b", "a") is None:
            assert time.monotonic() < deadline, "the hosts never reached each other"
        assert connect_ms(net, "c", "a") is not None

        net.isolate("a")
        assert connect_ms(net, "b", "a") is None and connect_ms(net, "a", "c") is None
        assert connect_ms(net, "b", "c") is not None
        net.heal()
        assert connect_ms(net, "b", "a") is not None

        net.partition(["a"], ["b"])
        assert connect_ms(net, "a", "b") is None and connect_ms(net, "b", "a") is None
        assert connect_ms(net, "a", "c") is not None
        net.heal()

        net.drop_one_way("a", "b")  # a's SYN to b is lost; b's SYN to a arrives but a's answer is lost too
        assert connect_ms(net, "a", "b") is None
        assert net.faults()["a"] and not net.faults()["b"]
        net.heal()
        assert not any(net.faults().values())

        net.delay("a", 200)
        took = connect_ms(net, "a", "b")
        assert took is not None and took >= 190
        net.heal()
        took = connect_ms(net, "a", "b")
        assert took is not None and took < 150
        for server in servers:
            server.kill()
        raise RuntimeError("on purpose")
    assert namespaces() == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f" {netns.PREFIX}" not in links
