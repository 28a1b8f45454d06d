"""Delay packets by holding them in an NFQUEUE: `tc netem` without the netem qdisc.

Some kernels (this machine's among them) are built without `sch_netem`; every kernel with
iptables' NFQUEUE target can still delay. An iptables rule in a host's namespace sends its
packets to queue N (`-j NFQUEUE --queue-num N --queue-bypass`); this process, run in the same
namespace, receives each one's id over netlink and accepts it `delay` ms later (plus up to
`jitter` ms, in order: a queue is FIFO). With `--queue-bypass` the packets pass untouched when
nothing listens, so a killed delayer fails open.

    ip netns exec NS python -m devstack.nfdelay --queue 7 --delay-ms 200 --jitter-ms 20

Only the packet's id is copied to user space (NFQNL_COPY_META), never its contents.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS = 1, 2
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def _attrs(data: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x7FFF] = data[offset + 4: offset + length]
        offset += (length + 3) & ~3
    return found


class Queue:
    """One bound NFQUEUE: `packets()` yields the ids of waiting packets, `accept(id)` lets one go."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self._request(_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, socket.AF_INET)))
        self._request(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))

    def _request(self, attrs: bytes) -> None:
        self.sock.send(_message(NFQNL_MSG_CONFIG, self.number, attrs, NLM_F_REQUEST | NLM_F_ACK, seq=1))
        answer = self.sock.recv(65536)
        _length, kind = struct.unpack_from("=IH", answer)
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", answer, 16)
            if error:
                raise OSError(-error, f"binding NFQUEUE {self.number}: {os.strerror(-error)}")

    def packets(self) -> list[int]:
        data = self.sock.recv(1 << 20)
        ids = []
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                header = _attrs(data[offset + 20: offset + length]).get(NFQA_PACKET_HDR)
                if header is not None:
                    ids.append(struct.unpack_from("!I", header)[0])
            offset += (length + 3) & ~3
        return ids

    def accept(self, packet_id: int) -> None:
        self.sock.send(_message(NFQNL_MSG_VERDICT, self.number,
                                _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))))


def run(number: int, delay: float, jitter: float, seed: int = 0) -> None:
    """Accept every packet of queue `number` `delay` (+ up to `jitter`) seconds after it came."""
    queue = Queue(number)
    rng = random.Random(seed)
    waiting: list[tuple[float, int]] = []
    last = 0.0
    print(f"delaying queue {number} by {delay * 1000:.0f} ms", flush=True)
    while True:
        timeout = max(0.0, waiting[0][0] - time.monotonic()) if waiting else None
        ready, _, _ = select.select([queue.sock], [], [], timeout)
        if ready:
            now = time.monotonic()
            for packet_id in queue.packets():
                last = max(last, now + delay + rng.uniform(0, jitter))  # in order: no reordering
                heapq.heappush(waiting, (last, packet_id))
        now = time.monotonic()
        while waiting and waiting[0][0] <= now:
            queue.accept(heapq.heappop(waiting)[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run(args.queue, args.delay_ms / 1000, args.jitter_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
