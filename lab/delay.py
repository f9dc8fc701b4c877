"""A delay line between two interfaces: real round-trip times without netem.

``python -m retranscope.lab.delay IF_A IF_B --delay-ms X`` reads every frame arriving on
either interface with an AF_PACKET socket and writes it out of the other one ``X`` ms later
(one-way delay: the RTT through it is ``2·X``). One select loop and a heap of release times
serve both directions; FIFO order per direction is kept because the delay is constant and
ties are broken by arrival order. Good for about 10k frames/s, far more than a lab flow needs.

The kernel has no ``sch_netem`` here (docs/kernel-notes.md), so ``Lab(rtt_ms=...)`` starts this in a
middle namespace that joins the sender's and the receiver's veth pairs.

Frames are read and written with ``PACKET_VNET_HDR``: each carries a ``virtio_net_hdr`` that
keeps the GSO type/size and the partial-checksum offsets (``virtio_net_hdr_from_skb`` on
receive, ``virtio_net_hdr_to_skb`` on send). So a 64 KB TSO super-frame from a sender with TSO
on crosses the line intact (a plain packet socket would refuse it: larger than the MTU), and a
frame whose checksum was left to offload still has it filled in later instead of arriving with
a bad checksum. Without vnet headers the caller must turn TX checksum offload off instead.

Disorder, for reordering scenarios (all off by default; each applies to the frames arriving
on ``IF_A``, i.e. the sender->receiver direction of a lab, unless ``--disorder-dir both``):

* ``--reorder-pct P --reorder-ms X``: P % of the frames (chosen at random) are held X ms
  longer than the rest, so the frames sent just after them overtake them: the receiver sees
  a hole, SACKs beyond it, and the sender's RACK may retransmit a segment that was never lost
  (answered by a D-SACK).
* ``--jitter-ms J``: every frame gets an extra delay uniform in [0, J] ms; frames closer
  together than the jitter leave out of order.

FIFO order per direction holds only with both off (constant delay, ties by arrival order).

Loss, for captures taken elsewhere than at the sender (``--drop DIR:WHAT:PCT``, repeatable):
PCT % of the TCP frames arriving on ``IF_A`` (DIR ``a``) or ``IF_B`` (``b``) that carry data
(WHAT ``data``: payload, SYNs spared so no scenario waits a 1 s SYN timeout) or are pure ACKs
(``ack``: no payload, no SYN/FIN/RST) are dropped, chosen by a generator seeded apart from
the disorder's. Unlike an nftables rule at an endpoint this is loss *in the network*: a
capture at the far endpoint, or at a tap behind this line, never sees the frame.

It prints ``READY`` on stdout once both sockets are bound, and one JSON line of counters on
stderr when it stops (SIGTERM/SIGINT). It asks the kernel to SIGTERM it when its parent dies
(``PR_SET_PDEATHSIG``), so a lab killed with SIGKILL does not leave it spinning.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import os
import random
import select
import signal
import socket
import sys
import time

from retranscope.lab._child import die_with_parent

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15  # linux/if_packet.h
PACKET_IGNORE_OUTGOING = 23  # linux/if_packet.h, since 4.20
PACKET_OUTGOING = 4  # sll_pkttype of a frame this host sent
VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr)
FRAME_MAX = 65536 + VNET_HDR_LEN + 64  # a full GSO super-frame plus headers
SOCK_BUF_BYTES = 8 << 20  # absorb bursts at line rate without socket drops
QUEUE_MAX_FRAMES = 200_000  # a queue limit, as a real bottleneck would have


def _open(ifname: str, vnet_hdr: bool) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    if vnet_hdr:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    try:
        # Frames we write out of this interface must not be read back and forwarded again.
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass  # older kernels: the sll_pkttype check in the loop covers it
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF_BYTES)
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


ETH_HLEN = 14
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IPPROTO_TCP = 6
TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04
DROP_WHAT = ("data", "ack")


def tcp_kind(frame: bytes, offset: int = 0) -> str | None:
    """``"data"`` (TCP with payload, not a SYN), ``"ack"`` (no payload, no SYN/FIN/RST),
    ``"other"`` TCP, or None for anything else. ``offset``: where the Ethernet header
    starts (after the virtio_net_hdr). Lengths come from the frame itself, so a GSO
    super-frame counts as one frame of data."""
    eth_type = int.from_bytes(frame[offset + 12 : offset + 14], "big")
    ip = offset + ETH_HLEN
    if eth_type == ETH_P_IP and len(frame) >= ip + 20:
        if frame[ip + 9] != IPPROTO_TCP:
            return None
        tcp = ip + (frame[ip] & 0x0F) * 4
    elif eth_type == ETH_P_IPV6 and len(frame) >= ip + 40:
        if frame[ip + 6] != IPPROTO_TCP:  # the lab sends no extension headers
            return None
        tcp = ip + 40
    else:
        return None
    if len(frame) < tcp + 20:
        return None
    payload = len(frame) - tcp - (frame[tcp + 12] >> 4) * 4
    flags = frame[tcp + 13]
    if payload > 0 and not flags & TCP_SYN:
        return "data"
    if payload <= 0 and not flags & (TCP_SYN | TCP_FIN | TCP_RST):
        return "ack"
    return "other"


def parse_drop(text: str) -> tuple[str, str, float]:
    """``DIR:WHAT:PCT`` (e.g. ``a:data:2``) as (dir, what, pct)."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in ("a", "b") or parts[1] not in DROP_WHAT:
        raise argparse.ArgumentTypeError(
            f"{text!r}: want DIR:WHAT:PCT, DIR a|b, WHAT {'|'.join(DROP_WHAT)}"
        )
    try:
        pct = float(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: PCT is not a number") from None
    if not 0 <= pct <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: PCT must be 0-100")
    return parts[0], parts[1], pct


class _Stop(Exception):
    """Raised by the signal handler to leave the select loop at once."""


class DelayLine:
    """Forward frames between two packet sockets after ``delay_ms``, both directions."""

    def __init__(
        self,
        if_a: str,
        if_b: str,
        delay_ms: float,
        vnet_hdr: bool = True,
        reorder_pct: float = 0.0,
        reorder_ms: float = 0.0,
        jitter_ms: float = 0.0,
        disorder_dir: str = "a",
        seed: int | None = None,
        drops: tuple[tuple[str, str, float], ...] = (),
    ):
        if not 0.0 <= reorder_pct <= 100.0:
            raise ValueError(f"reorder_pct={reorder_pct}: want 0-100")
        if reorder_ms < 0 or jitter_ms < 0:
            raise ValueError("reorder_ms and jitter_ms must be >= 0")
        if disorder_dir not in ("a", "both"):
            raise ValueError(f"disorder_dir={disorder_dir!r}: want 'a' or 'both'")
        self.delay_s = delay_ms / 1000.0
        self.reorder_p = reorder_pct / 100.0
        self.reorder_s = reorder_ms / 1000.0
        self.jitter_s = jitter_ms / 1000.0
        self.rng = random.Random(seed)
        self.sock_a = _open(if_a, vnet_hdr)
        self.sock_b = _open(if_b, vnet_hdr)
        self.peer = {self.sock_a.fileno(): self.sock_b, self.sock_b.fileno(): self.sock_a}
        #: Input sockets whose frames get the disorder (reorder/jitter), by fileno.
        self.disordered = (
            {self.sock_a.fileno()}
            if disorder_dir == "a"
            else {self.sock_a.fileno(), self.sock_b.fileno()}
        )
        self.held_back = 0
        self.vnet_hdr = vnet_hdr
        # Its own generator: adding loss to a scenario leaves its disorder as it was.
        self.drop_rng = random.Random(None if seed is None else seed + 1_000_003)
        #: {input fileno: {what: probability}}
        self.drops: dict[int, dict[str, float]] = {}
        for direction, what, pct in drops:
            sock = self.sock_a if direction == "a" else self.sock_b
            self.drops.setdefault(sock.fileno(), {})[what] = pct / 100.0
        self.dropped = {what: 0 for what in DROP_WHAT}
        # (release_monotonic_s, arrival_no, out_socket, frame)
        self.heap: list[tuple[float, int, socket.socket, bytes]] = []
        self.arrivals = 0
        self.forwarded = 0
        self.dropped_queue_full = 0
        self.send_errors = 0

    def _extra_s(self, fileno: int) -> float:
        """Extra delay of one frame from this input (0 without reorder/jitter)."""
        if fileno not in self.disordered:
            return 0.0
        extra = 0.0
        if self.jitter_s:
            extra += self.rng.uniform(0.0, self.jitter_s)
        if self.reorder_p and self.rng.random() < self.reorder_p:
            extra += self.reorder_s
            self.held_back += 1
        return extra

    def _drop(self, fileno: int, frame: bytes) -> bool:
        rules = self.drops.get(fileno)
        if not rules:
            return False
        kind = tcp_kind(frame, VNET_HDR_LEN if self.vnet_hdr else 0)
        p = rules.get(kind or "")
        if not p or self.drop_rng.random() >= p:
            return False
        self.dropped[kind or ""] += 1
        return True

    def _drain(self, sock: socket.socket, now_s: float) -> None:
        out = self.peer[sock.fileno()]
        while True:
            try:
                frame, addr = sock.recvfrom(FRAME_MAX)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            if self._drop(sock.fileno(), frame):
                continue
            if len(self.heap) >= QUEUE_MAX_FRAMES:
                self.dropped_queue_full += 1
                continue
            self.arrivals += 1
            release_s = now_s + self.delay_s + self._extra_s(sock.fileno())
            heapq.heappush(self.heap, (release_s, self.arrivals, out, frame))

    def _release(self, now_s: float) -> None:
        while self.heap and self.heap[0][0] <= now_s:
            _, _, out, frame = heapq.heappop(self.heap)
            try:
                out.send(frame)
                self.forwarded += 1
            except OSError as err:
                # ENOBUFS/EAGAIN: the peer's queue is full; a real link would drop it too.
                if err.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ENETDOWN, errno.ENXIO):
                    raise
                self.send_errors += 1

    def run(self) -> None:
        socks = [self.sock_a, self.sock_b]
        while True:
            now_s = time.monotonic()
            timeout_s = max(0.0, self.heap[0][0] - now_s) if self.heap else 0.5
            try:
                readable, _, _ = select.select(socks, [], [], timeout_s)
            except InterruptedError:
                continue
            now_s = time.monotonic()
            for sock in readable:
                self._drain(sock, now_s)
            self._release(time.monotonic())

    def stats(self) -> dict[str, int]:
        return {
            "arrivals": self.arrivals,
            "forwarded": self.forwarded,
            "queued": len(self.heap),
            "dropped_queue_full": self.dropped_queue_full,
            "send_errors": self.send_errors,
            "held_back": self.held_back,
            "dropped_data": self.dropped["data"],
            "dropped_ack": self.dropped["ack"],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retranscope.lab.delay", description=__doc__)
    parser.add_argument("if_a")
    parser.add_argument("if_b")
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="run under SCHED_FIFO so a busy machine does not stretch the delay",
    )
    parser.add_argument(
        "--no-vnet-hdr",
        action="store_true",
        help="plain frames (then turn TX checksum offload and TSO off on both ends)",
    )
    parser.add_argument(
        "--reorder-pct",
        type=float,
        default=0.0,
        help="share of frames (%%) held --reorder-ms longer than the rest",
    )
    parser.add_argument(
        "--reorder-ms", type=float, default=0.0, help="extra delay of the held-back frames"
    )
    parser.add_argument(
        "--jitter-ms",
        type=float,
        default=0.0,
        help="extra delay uniform in [0, J] ms for every frame",
    )
    parser.add_argument(
        "--disorder-dir",
        choices=("a", "both"),
        default="a",
        help="disorder frames arriving on IF_A only (default) or both ways",
    )
    parser.add_argument("--seed", type=int, default=None, help="disorder/drop RNG seed")
    parser.add_argument(
        "--drop",
        type=parse_drop,
        action="append",
        default=[],
        metavar="DIR:WHAT:PCT",
        help="drop PCT %% of the TCP data (WHAT=data) or pure-ACK (ack) "
        "frames arriving on IF_A (DIR=a) or IF_B (b); repeatable",
    )
    args = parser.parse_args(argv)
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")
    if not 0 <= args.reorder_pct <= 100 or args.reorder_ms < 0 or args.jitter_ms < 0:
        parser.error("--reorder-pct must be 0-100; --reorder-ms and --jitter-ms >= 0")
    die_with_parent()
    if args.realtime:
        try:
            # It sleeps in select() between frames, so it cannot starve the machine; what
            # it gains is being scheduled at once when a frame is due, under load too.
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except (OSError, AttributeError) as err:
            print(f"delay: no SCHED_FIFO ({err}); timing may stretch under load", file=sys.stderr)
    line = DelayLine(
        args.if_a,
        args.if_b,
        args.delay_ms,
        vnet_hdr=not args.no_vnet_hdr,
        reorder_pct=args.reorder_pct,
        reorder_ms=args.reorder_ms,
        jitter_ms=args.jitter_ms,
        disorder_dir=args.disorder_dir,
        seed=args.seed,
        drops=tuple(args.drop),
    )

    def stop(_signum: int, _frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("READY", flush=True)
    try:
        line.run()
    except _Stop:
        pass
    print(json.dumps(line.stats()), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
