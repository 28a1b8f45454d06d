"""Hosts of our own: network namespaces on one bridge, and the network faults between them.

Each host is a network namespace (`ip netns`) with one veth pair whose other end is on a bridge
in the root namespace; the hosts have the project's own addresses in one private /24
(LEDGER_NETNS_SUBNET, default 10.213.47.0/24: refused when any route of this machine overlaps it).
The bridge itself holds the subnet's first address (`gateway`): the campaign's clients and checks
run in the root namespace and reach every host through it, and no fault ever cuts it, so what a
fault cuts is the traffic between hosts. A process runs on a host as `ip netns exec NS command`
(`Host.wrap`), which execs the command itself: its pid is the process's, for kill -9 and SIGSTOP.

Faults are iptables rules in a chain of their own (`BLFAULT`, jumped to from INPUT and OUTPUT)
in a host's namespace, so a heal is one flush per host:
  - `isolate(host)`: nothing between it and any other host;
  - `partition(side_a, side_b)`: nothing between the two sides (each side still talks within);
  - `drop_one_way(src, dst)`: src's packets to dst are dropped, dst's to src arrive;
  - `loss(host, fraction)`: that share of its packets to and from other hosts dropped at random;
  - `delay(host, ms)`: its packets to other hosts held `ms` ms (devstack/nfdelay.py: this kernel
    has no netem qdisc; `tc netem` is used instead where the kernel has it).
Everything is removed by `close()` (also on an exception: use the Network as a context manager),
and `Network.open()` first removes what a crashed earlier run left (namespaces and links with
the prefix), holding a lock so that two runs on one machine never share or remove each other's.
Root only.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

DEFAULT_SUBNET = "10.213.47.0/24"
PREFIX = "blp"  # of every namespace and link this module makes (kept short: link names ≤ 15 chars)
LOCK = Path("/run/lock/booking-ledger-netns.lock")
CHAIN = "BLFAULT"
DELAY_QUEUE = 7


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc (`tc qdisc ... netem`); tried on a throwaway dummy link."""
    name = f"{PREFIX}-probe"
    if _ip("link", "add", name, "type", "dummy", check=False).returncode:
        return False
    try:
        return subprocess.run(["tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms"],
                              capture_output=True).returncode == 0
    finally:
        _ip("link", "del", name, check=False)


@dataclass
class Host:
    """One namespace, its address, and the processes of its faults (the delayer)."""

    name: str
    namespace: str
    address: str
    index: int
    delayer: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def wrap(self, command: list[str]) -> list[str]:
        """`command` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.wrap(list(command)), check=check, capture_output=True, text=True)

    def iptables(self, *rule: str) -> None:
        self.run("iptables", "-w", *rule)

    def append_rules(self, rules: list[list[str]]) -> None:
        """Rules appended to CHAIN all at once (one iptables-restore): a fault starts at one moment."""
        text = "*filter\n" + "".join(f"-A {CHAIN} {' '.join(rule)}\n" for rule in rules) + "COMMIT\n"
        subprocess.run(self.wrap(["iptables-restore", "-w", "--noflush"]), input=text, check=True,
                       capture_output=True, text=True)


class Network:
    """A bridge and the hosts on it; faults between them; everything removed on `close()`."""

    def __init__(self, subnet: str | None = None, log_dir: Path | None = None) -> None:
        self.subnet = ipaddress.ip_network(subnet or os.environ.get("LEDGER_NETNS_SUBNET") or DEFAULT_SUBNET)
        if self.subnet.prefixlen > 26:
            raise ValueError(f"{self.subnet} is too small for the hosts")
        self.gateway = str(self.subnet.network_address + 1)
        self.bridge = f"{PREFIX}-br"
        self.hosts: dict[str, Host] = {}
        self.log_dir = log_dir
        self.netem = False
        self._lock: IO[str] | None = None

    # Set-up and tear-down

    def open(self) -> Network:
        if os.geteuid() != 0:
            raise PermissionError("network namespaces need root")
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is missing: run `make install` (scripts/system-deps.sh)")
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(LOCK, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise RuntimeError("another run holds the network namespaces (lock " + str(LOCK) + ")") from None
        try:
            remove_leftovers()
            self._refuse_overlap()
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            self.netem = netem_available()
        except BaseException:
            self.close()
            raise
        return self

    def _refuse_overlap(self) -> None:
        routes = json.loads(_ip("-j", "route", "show", "table", "all").stdout or "[]")
        for route in routes:
            dst = route.get("dst", "")
            if not dst or dst == "default" or ":" in dst:
                continue
            try:
                other = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            if other.version == 4 and other.prefixlen > 0 and other.overlaps(self.subnet) \
                    and not other.is_loopback and route.get("dev") != self.bridge:
                raise RuntimeError(f"{self.subnet} overlaps the route to {dst} on {route.get('dev')}: "
                                   "choose another with LEDGER_NETNS_SUBNET")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        address = str(self.subnet.network_address + 10 + index)
        namespace = f"{PREFIX}-{name}"
        outer = f"{PREFIX}{index}"
        _ip("netns", "add", namespace)
        _ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", outer, "master", self.bridge, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "route", "add", "default", "via", self.gateway)
        host = Host(name, namespace, address, index)
        host.iptables("-N", CHAIN)
        host.iptables("-A", "INPUT", "-j", CHAIN)
        host.iptables("-A", "OUTPUT", "-j", CHAIN)
        self.hosts[name] = host
        return host

    def close(self) -> None:
        """Heal, stop every process left in the namespaces, remove namespaces and bridge; release the lock."""
        for host in self.hosts.values():
            self._stop_delayer(host)
        remove_leftovers()
        self.hosts.clear()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Network:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Faults

    def _others(self, host: Host) -> list[str]:
        return [h.address for h in self.hosts.values() if h is not host]

    def _cut(self, host: Host, peers: list[str], inbound: bool = True, outbound: bool = True,
             extra: tuple[str, ...] = ()) -> None:
        rules = []
        for peer in peers:
            if inbound:
                rules.append(["-s", peer, *extra, "-j", "DROP"])
            if outbound:
                rules.append(["-d", peer, *extra, "-j", "DROP"])
        host.append_rules(rules)

    def isolate(self, name: str) -> None:
        host = self.hosts[name]
        self._cut(host, self._others(host))

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        peers = [self.hosts[n].address for n in side_b]
        for name in side_a:
            self._cut(self.hosts[name], peers)

    def drop_one_way(self, src: str, dst: str) -> None:
        """src's packets to dst are lost (dropped as they leave src); dst's to src still arrive."""
        self._cut(self.hosts[src], [self.hosts[dst].address], inbound=False)

    def loss(self, name: str, fraction: float) -> None:
        host = self.hosts[name]
        self._cut(host, self._others(host),
                  extra=("-m", "statistic", "--mode", "random", "--probability", f"{fraction:.3f}"))

    def delay(self, name: str, ms: float, jitter_ms: float = 0.0) -> None:
        host = self.hosts[name]
        if self.netem:
            host.run("tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", f"{ms:.0f}ms",
                     f"{jitter_ms:.0f}ms")
            return
        log_path = self.log_dir / f"nfdelay-{name}.log" if self.log_dir else Path(os.devnull)
        with open(log_path, "ab") as log:
            host.delayer = subprocess.Popen(
                host.wrap([sys.executable, "-m", "devstack.nfdelay", "--queue", str(DELAY_QUEUE),
                           "--delay-ms", str(ms), "--jitter-ms", str(jitter_ms)]),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent)
        time.sleep(0.3)  # bound before the rule sends packets to it (bypassed until then anyway)
        host.append_rules([["-d", peer, "-j", "NFQUEUE", "--queue-num", str(DELAY_QUEUE), "--queue-bypass"]
                           for peer in self._others(host)])

    def heal(self, name: str | None = None) -> None:
        """Every fault of host `name` (of every host when None) removed."""
        for host in ([self.hosts[name]] if name else list(self.hosts.values())):
            host.iptables("-F", CHAIN)
            if self.netem:
                host.run("tc", "qdisc", "del", "dev", "eth0", "root", check=False)
            self._stop_delayer(host)

    @staticmethod
    def _stop_delayer(host: Host) -> None:
        if host.delayer is not None:
            if host.delayer.poll() is None:
                os.killpg(host.delayer.pid, signal.SIGKILL)
            host.delayer.wait()
            host.delayer = None

    def faults(self) -> dict[str, list[str]]:
        """The rules in force per host (empty lists when healed)."""
        found = {}
        for host in self.hosts.values():
            rules = host.run("iptables", "-w", "-S", CHAIN).stdout.splitlines()[1:]
            found[host.name] = rules
        return found


def remove_leftovers() -> None:
    """Every namespace and link named with PREFIX, and the processes still in those namespaces."""
    for line in _ip("netns", "list").stdout.splitlines():
        namespace = line.split()[0] if line.strip() else ""
        if not namespace.startswith(f"{PREFIX}-"):
            continue
        pids = _ip("netns", "pids", namespace, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        deadline = time.monotonic() + 10
        while _ip("netns", "pids", namespace, check=False).stdout.split() and time.monotonic() < deadline:
            time.sleep(0.1)
        _ip("netns", "del", namespace, check=False)
    links = json.loads(_ip("-j", "link", "show").stdout or "[]")
    for link in links:
        name = link.get("ifname", "")
        if name.startswith(PREFIX):
            _ip("link", "del", name, check=False)
