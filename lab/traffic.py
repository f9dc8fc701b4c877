"""Traffic programs the lab runs inside its namespaces.

    python -m retranscope.lab.traffic server --port P --mode sink|echo-slow [--think-ms 15-30]
    python -m retranscope.lab.traffic bulk --host H --port P --bytes N [--conns K]
    python -m retranscope.lab.traffic requests --host H --port P --count N --burst K --size S
    python -m retranscope.lab.traffic connect --host H --port P [--fastopen]
    python -m retranscope.lab.traffic trickle --host H --port P --count N --size 100-1400 \
        --interval-ms 10-30

The server prints one line, ``LISTENING <family> <addr> <port>``, once its socket listens: the
caller waits for that line instead of sleeping. Every client prints one JSON line with what it
did and how long it took, and exits 0 on success, 1 if the peer answered wrongly, 2 on a
socket error and 124 when its ``--timeout-s`` deadline passes (the deadline covers the whole
program, so no scenario can hang). IPv4 or IPv6 follows from the address given.

Wire protocol (both ends are ours, so it is as simple as the scenarios allow):

* ``sink``: the client sends its bytes and shuts down its write side; the server counts to EOF
  and answers ``b"<count>\\n"``. The client checks the count, so it exits only after every
  byte (and every retransmission of it) was delivered.
* ``trickle`` (to a ``sink`` server): an app-limited sender. ``--count`` writes of
  ``--size`` bytes (uniform in LO-HI), ``--interval-ms`` apart (uniform in LO-HI), with
  TCP_NODELAY unless ``--nagle``: each write leaves at once as its own segment, so only one
  or two segments are in flight (PTO = 2*SRTT + 200 ms clamped to the RTO with one;
  docs/kernel-notes.md). Then the same shutdown/count check as ``bulk``.
* ``echo-slow``: the client sends bursts of ``--burst`` requests, each its own ``send()`` with
  TCP_NODELAY set, each framed by an 8-byte header ``!IHH`` = (payload bytes, index in burst,
  burst length). The server "thinks" ``--think-ms`` per burst and sends one reply (same
  header, ``--reply-bytes`` payload) after the burst's last request; the client waits for it
  before the next burst.

  By default the server thinks *before* reading the burst (a busy server whose requests wait
  in the receive queue). With 15-30 ms that is the no-loss spurious TLP of docs/kernel-notes.md: the
  server's delayed ACK outlasts the client's PTO = 2·SRTT + 2 ms (``tcp_schedule_loss_probe``),
  the probe is answered with a D-SACK (RFC 2883). Thinking *after* reading
  (``--think-where after-read``) almost never gives one, measured: reading a small pushed
  segment until the queue is empty makes ``tcp_cleanup_rbuf`` ACK at once, and the burst's
  last segment then sits alone in flight, where PTO includes the 200 ms RTO floor.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time

from retranscope.lab._child import die_with_parent

REQ_HDR = struct.Struct("!IHH")  # payload bytes, index in burst, burst length
CHUNK_BYTES = 64 * 1024
EXIT_OK, EXIT_BAD_PEER, EXIT_SOCKET, EXIT_TIMEOUT = 0, 1, 2, 124


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _arm_deadline(timeout_s: float, role: str) -> None:
    """Exit with 124 when the whole program has run ``timeout_s`` (any thread may be stuck)."""

    def expire(_signum: int, _frame: object) -> None:
        print(json.dumps({"role": role, "error": f"timeout after {timeout_s} s"}), flush=True)
        os._exit(EXIT_TIMEOUT)

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)


def _recv_exact(sock: socket.socket, n_bytes: int) -> bytes:
    buf = bytearray()
    while len(buf) < n_bytes:
        chunk = sock.recv(n_bytes - len(buf))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(buf)} of {n_bytes} bytes")
        buf += chunk
    return bytes(buf)


def _recv_to_eof(sock: socket.socket) -> bytes:
    buf = bytearray()
    while True:
        chunk = sock.recv(CHUNK_BYTES)
        if not chunk:
            return bytes(buf)
        buf += chunk


def _parse_range(text: str) -> tuple[float, float]:
    """``X`` or ``LO-HI`` (non-negative) as (lo, hi)."""
    lo, _, hi = text.partition("-")
    lo_ms = float(lo)
    hi_ms = float(hi) if hi else lo_ms
    if lo_ms < 0 or hi_ms < lo_ms:
        raise argparse.ArgumentTypeError(f"{text!r}: want X or LO-HI with 0 <= LO <= HI")
    return lo_ms, hi_ms


# --- server -----------------------------------------------------------------------------


def _serve_sink(conn: socket.socket) -> None:
    count = 0
    while True:
        chunk = conn.recv(CHUNK_BYTES)
        if not chunk:
            break
        count += len(chunk)
    conn.sendall(b"%d\n" % count)


def _serve_echo_slow(
    conn: socket.socket,
    think_ms: tuple[float, float],
    reply_bytes: int,
    rng: random.Random,
    think_where: str = "before-read",
    close_after: int = 0,
) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    fresh_burst = True
    replies = 0
    while True:
        if think_where == "before-read" and fresh_burst:
            # A busy server: the request waits unread in the receive queue while it thinks.
            select.select([conn], [], [], conn.gettimeout())
            time.sleep(rng.uniform(*think_ms) / 1000.0)
        hdr = conn.recv(REQ_HDR.size, socket.MSG_WAITALL)
        if not hdr:
            return
        if len(hdr) < REQ_HDR.size:
            raise ConnectionError(f"short request header: got {len(hdr)}, {REQ_HDR.size} needed")
        size, index, burst = REQ_HDR.unpack(hdr)
        _recv_exact(conn, size)
        fresh_burst = index + 1 == burst
        if fresh_burst:
            if think_where == "after-read":
                time.sleep(rng.uniform(*think_ms) / 1000.0)
            conn.sendall(REQ_HDR.pack(reply_bytes, 0, 1) + b"r" * reply_bytes)
            replies += 1
            if replies == close_after:
                return  # the caller closes: the server's FIN follows its last reply


def cmd_server(args: argparse.Namespace) -> int:
    _arm_deadline(args.timeout_s, "server")
    family = (
        _family(args.bind)
        if args.bind
        else (socket.AF_INET6 if args.family == 6 else socket.AF_INET)
    )
    bind = args.bind or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    lsock.bind((bind, args.port))
    lsock.listen(128)
    print(f"LISTENING {6 if family == socket.AF_INET6 else 4} {bind} {args.port}", flush=True)
    rng = random.Random(args.seed)
    errors: list[str] = []
    threads: list[threading.Thread] = []

    def handle(conn: socket.socket, conn_rng: random.Random) -> None:
        try:
            conn.settimeout(args.timeout_s)
            if args.mode == "sink":
                _serve_sink(conn)
            else:
                _serve_echo_slow(
                    conn,
                    args.think_ms,
                    args.reply_bytes,
                    conn_rng,
                    args.think_where,
                    args.close_after,
                )
        except OSError as err:
            errors.append(repr(err))
        finally:
            conn.close()

    accepted = 0
    while args.max_conns == 0 or accepted < args.max_conns:
        conn, _ = lsock.accept()
        accepted += 1
        thread = threading.Thread(
            target=handle, args=(conn, random.Random(rng.random())), daemon=True
        )
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    print(json.dumps({"role": "server", "conns": accepted, "errors": errors}), flush=True)
    return EXIT_SOCKET if errors else EXIT_OK


# --- clients ----------------------------------------------------------------------------


TCPI_RTT_OFFSET = 68  # struct tcp_info: 8 bytes of u8 fields, then 15 u32s before tcpi_rtt


def tcpi_rtt_us(sock: socket.socket) -> int:
    """The kernel's smoothed RTT of the connection (tcp_info.tcpi_rtt, microseconds).

    Right after connect() it is the handshake's RTT as the kernel timed it in softirq
    (tcp_synack_rtt_meas on the client side too), unaffected by when this process runs.
    """
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, TCPI_RTT_OFFSET)[0]


TCP_FASTOPEN_CONNECT = 30  # linux/tcp.h (Python's socket module lacks it before 3.12)


def _connect(args: argparse.Namespace) -> tuple[socket.socket, float]:
    sock = socket.socket(_family(args.host), socket.SOCK_STREAM)
    sock.settimeout(args.timeout_s)
    if getattr(args, "fastopen", False):
        # connect() returns at once and the first write leaves in the SYN (TCP Fast Open,
        # RFC 7413; tcp_fastopen_connect). Whether data may go without a cookie is the
        # namespace's net.ipv4.tcp_fastopen (0x4: TFO_CLIENT_NO_COOKIE).
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
    start = time.monotonic()
    sock.connect((args.host, args.port))
    return sock, time.monotonic() - start


def _bulk_one(args: argparse.Namespace, out: dict) -> None:
    start = time.monotonic()
    try:
        sock, connect_s = _connect(args)
        with sock:
            out["connect_s"] = connect_s
            payload = b"\0" * CHUNK_BYTES
            left = args.bytes
            while left > 0:
                sent = sock.send(payload[: min(left, CHUNK_BYTES)])
                left -= sent
            sock.shutdown(socket.SHUT_WR)
            reply = _recv_to_eof(sock)
        out["server_count"] = int(reply or b"-1")
        out["ok"] = out["server_count"] == args.bytes
    except OSError as err:
        out["error"] = repr(err)
        out["ok"] = False
    out["duration_s"] = time.monotonic() - start


def cmd_bulk(args: argparse.Namespace) -> int:
    _arm_deadline(args.timeout_s, "bulk")
    results: list[dict] = [{"conn": i, "bytes": args.bytes} for i in range(args.conns)]
    threads = [threading.Thread(target=_bulk_one, args=(args, r), daemon=True) for r in results]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ok = all(r["ok"] for r in results)
    print(
        json.dumps(
            {"role": "bulk", "ok": ok, "duration_s": time.monotonic() - start, "conns": results}
        ),
        flush=True,
    )
    if ok:
        return EXIT_OK
    return EXIT_SOCKET if any("error" in r for r in results) else EXIT_BAD_PEER


SIOCOUTQNSD = 0x894B  # linux/sockios.h: bytes in the send queue not yet sent


def _wait_sent(sock: socket.socket, timeout_s: float = 0.05) -> None:
    """Until the socket has handed every byte written so far to the device (TCP_NODELAY
    alone does not promise it: a request written while the previous one is still queued in
    the host joins its skb, and two requests leave as one segment)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, b"\0" * 4))[0]
        if unsent == 0:
            return
        time.sleep(0.0001)


def _request_rounds(args: argparse.Namespace, round_ms: list[float]) -> float:
    """One connection's bursts and replies; returns its connect() time."""
    sock, connect_s = _connect(args)
    with sock:
        # Each request must leave as its own segment: that is what lets the last one of a
        # burst be the tail a TLP repairs, and the burst keep packets_out > 1.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(args.count):
            t0 = time.monotonic()
            for index in range(args.burst):
                sock.sendall(REQ_HDR.pack(args.size, index, args.burst) + b"q" * args.size)
                _wait_sent(sock)
            size, _, _ = REQ_HDR.unpack(_recv_exact(sock, REQ_HDR.size))
            _recv_exact(sock, size)
            round_ms.append((time.monotonic() - t0) * 1000.0)
            if args.gap_ms:
                time.sleep(args.gap_ms / 1000.0)
        sock.shutdown(socket.SHUT_WR)
        if _recv_to_eof(sock):
            raise ConnectionError("server sent data after the last reply")
    return connect_s


def cmd_requests(args: argparse.Namespace) -> int:
    _arm_deadline(args.timeout_s, "requests")
    start = time.monotonic()
    round_ms: list[float] = []
    try:
        connect_s = [_request_rounds(args, round_ms) for _ in range(args.conns)][0]
    except OSError as err:
        print(
            json.dumps(
                {"role": "requests", "ok": False, "error": repr(err), "rounds_done": len(round_ms)}
            ),
            flush=True,
        )
        return EXIT_SOCKET
    median_ms = sorted(round_ms)[len(round_ms) // 2] if round_ms else 0.0
    print(
        json.dumps(
            {
                "role": "requests",
                "ok": True,
                "connect_s": connect_s,
                "duration_s": time.monotonic() - start,
                "rounds": len(round_ms),
                "round_ms_max": max(round_ms, default=0.0),
                "round_ms_median": median_ms,
            }
        ),
        flush=True,
    )
    return EXIT_OK


def cmd_trickle(args: argparse.Namespace) -> int:
    _arm_deadline(args.timeout_s, "trickle")
    rng = random.Random(args.seed)
    start = time.monotonic()
    total = 0
    try:
        sock, connect_s = _connect(args)
        with sock:
            if not args.nagle:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(args.count):
                size = int(rng.uniform(*args.size))
                sock.sendall(b"t" * max(1, size))
                total += max(1, size)
                time.sleep(rng.uniform(*args.interval_ms) / 1000.0)
            sock.shutdown(socket.SHUT_WR)
            reply = _recv_to_eof(sock)
    except OSError as err:
        print(
            json.dumps({"role": "trickle", "ok": False, "error": repr(err), "bytes_sent": total}),
            flush=True,
        )
        return EXIT_SOCKET
    ok = int(reply or b"-1") == total
    print(
        json.dumps(
            {
                "role": "trickle",
                "ok": ok,
                "connect_s": connect_s,
                "bytes": total,
                "duration_s": time.monotonic() - start,
            }
        ),
        flush=True,
    )
    return EXIT_OK if ok else EXIT_BAD_PEER


def cmd_connect(args: argparse.Namespace) -> int:
    _arm_deadline(args.timeout_s, "connect")
    start = time.monotonic()
    try:
        sock, connect_s = _connect(args)
        with sock:
            rtt_us = tcpi_rtt_us(sock)
            sock.sendall(b"c" * args.bytes)
            sock.shutdown(socket.SHUT_WR)
            reply = _recv_to_eof(sock)
    except OSError as err:
        print(json.dumps({"role": "connect", "ok": False, "error": repr(err)}), flush=True)
        return EXIT_SOCKET
    ok = int(reply or b"-1") == args.bytes
    print(
        json.dumps(
            {
                "role": "connect",
                "ok": ok,
                "connect_s": connect_s,
                "tcpi_rtt_us": rtt_us,
                "duration_s": time.monotonic() - start,
            }
        ),
        flush=True,
    )
    return EXIT_OK if ok else EXIT_BAD_PEER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retranscope.lab.traffic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    server = sub.add_parser("server", help="listen; sink bytes or answer bursts slowly")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--mode", choices=("sink", "echo-slow"), default="sink")
    server.add_argument("--family", type=int, choices=(4, 6), default=4)
    server.add_argument("--bind", default="", help="address to bind (default: any)")
    server.add_argument(
        "--think-ms",
        type=_parse_range,
        default=(0.0, 0.0),
        help="echo-slow: delay before each reply, X or LO-HI (uniform)",
    )
    server.add_argument(
        "--think-where",
        choices=("after-read", "before-read"),
        default="before-read",
        help="echo-slow: think before reading the burst (a busy server: the "
        "default) or after reading it",
    )
    server.add_argument("--reply-bytes", type=int, default=100)
    server.add_argument(
        "--close-after",
        type=int,
        default=0,
        help="echo-slow: close the connection after this many replies (the "
        "server's FIN then rides on the last reply; 0: at the client's)",
    )
    server.add_argument("--seed", type=int, default=1, help="think-time RNG seed")
    server.add_argument(
        "--max-conns",
        type=int,
        default=0,
        help="exit after serving this many connections (0: until killed)",
    )
    server.add_argument("--timeout-s", type=float, default=30.0)
    server.set_defaults(func=cmd_server)

    def client(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--timeout-s", type=float, default=20.0)
        p.add_argument(
            "--fastopen",
            action="store_true",
            help="TCP Fast Open: the first write rides in the SYN",
        )
        return p

    bulk = client("bulk", "send N bytes on each of K parallel connections")
    bulk.add_argument("--bytes", type=int, required=True)
    bulk.add_argument("--conns", type=int, default=1)
    bulk.set_defaults(func=cmd_bulk)

    req = client("requests", "bursts of small requests with TCP_NODELAY, one reply each")
    req.add_argument("--count", type=int, default=10, help="bursts")
    req.add_argument("--burst", type=int, default=3, help="requests per burst")
    req.add_argument("--size", type=int, default=100, help="payload bytes per request")
    req.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="pause after each reply (the last one too, before closing)",
    )
    req.add_argument(
        "--conns",
        type=int,
        default=1,
        help="connections, one after the other, each doing --count bursts",
    )
    req.set_defaults(func=cmd_requests)

    trickle = client("trickle", "small writes at intervals to a sink (app-limited)")
    trickle.add_argument("--count", type=int, default=100, help="writes")
    trickle.add_argument(
        "--size",
        type=_parse_range,
        default=(100.0, 100.0),
        help="bytes per write, X or LO-HI (uniform)",
    )
    trickle.add_argument(
        "--interval-ms",
        type=_parse_range,
        default=(20.0, 20.0),
        help="pause after each write, X or LO-HI (uniform)",
    )
    trickle.add_argument("--nagle", action="store_true", help="leave Nagle on (no NODELAY)")
    trickle.add_argument("--seed", type=int, default=1, help="size/interval RNG seed")
    trickle.set_defaults(func=cmd_trickle)

    conn = client("connect", "connect, send a little, close")
    conn.add_argument("--bytes", type=int, default=100)
    conn.set_defaults(func=cmd_connect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    die_with_parent()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
