"""Make the analyzer benchmark's input: a real lab capture of about 1.3 million packets.

    sudo .venv/bin/python bench/make_big_capture.py [--out bench/data/big.pcap] [--packets 1300000]
    sudo .venv/bin/python bench/make_big_capture.py --conn-bytes 100000 --conns 50 \
        --out bench/data/many.pcap       (many short connections: rounds of 50 at once)

Four bulk flows (or, with --conn-bytes, rounds of --conns connections of that many bytes
each, one round after the other) through 0.3% random loss (nftables), TSO off so the
capture holds MSS-sized segments, tcpdump on the sender with a headers-only snaplen,
stopped once it has the asked number of packets (-c).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

PORT = 5001


def main() -> int:
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import start_bulk, start_server

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "big.pcap")
    ap.add_argument("--packets", type=int, default=1_300_000)
    ap.add_argument("--loss-permille", type=int, default=3)
    ap.add_argument("--conns", type=int, default=4, help="connections at once")
    ap.add_argument("--max-seconds", type=float, default=280, help="give up after this long")
    ap.add_argument(
        "--conn-bytes", type=int, default=0, help="bytes a connection (0: until -c is reached)"
    )
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with Lab(ipv6=False, tso=False) as lab:
        lab.add_rule(f"tcp dport {PORT} numgen random mod 1000 < {args.loss_permille} drop")
        dump = lab.popen(
            lab.sender_ns,
            [
                "tcpdump",
                "-Z",
                "root",
                "-i",
                lab.sender_if,
                "-s",
                "128",
                "-B",
                "65536",
                "-n",
                "-w",
                str(args.out),
                "-c",
                str(args.packets),
                "tcp",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        server = start_server(
            lab, "--port", PORT, "--mode", "sink", "--timeout-s", args.max_seconds + 20
        )
        deadline = time.monotonic() + args.max_seconds
        try:
            if not args.conn_bytes:
                client = start_bulk(lab, PORT, 10**12, conns=args.conns, timeout_s=args.max_seconds)
                dump.wait(timeout=args.max_seconds)
            while dump.poll() is None and time.monotonic() < deadline:
                client = start_bulk(lab, PORT, args.conn_bytes, conns=args.conns, timeout_s=60)
                client.wait(timeout=70)
        finally:
            client.kill()
            server.kill()
        print(dump.stderr.read().strip().splitlines()[-3:], file=sys.stderr)
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
