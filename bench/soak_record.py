"""The recorder for half an hour at a moderate, steady retransmission rate: does its
memory stay flat?

    sudo .venv/bin/python bench/soak_record.py [--minutes 30] [--loss 3] [--every 2]

A lab (two namespaces, veth, TSO off) with nftables random loss; every ``--every``
seconds a new bulk client opens ``--conns`` connections and sends ``--bytes`` on each, so
sockets come and go all the time (the recorder must forget the ones the kernel destroys).
The recorder runs as a service would: default settings, plus a ring of event files and
the metrics endpoint (scraped once a minute here), in the root namespace filtering on
the lab's. Every minute: events so far, the rate, RSS, CPU. At the end: the RSS spread
from the second minute on (the first is warm-up: imports, the compiled program, the
first files), and whether it stays within ``--max-growth-mb``. Exit 0 if so, 1 if not.
Not a test: it takes half an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PORT = 5001
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def scrape(addr: str) -> float:
    """Sum of retranscope_retransmissions_total over its labels."""
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("retranscope_retransmissions_total{")
    )


def start_recorder(out: Path, netns_ino: int, metrics: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "retranscope",
        "record",
        "--out",
        str(out),
        "--quiet",
        "--netns",
        str(netns_ino),
        "--max-size",
        "20",
        "--max-files",
        "20",
        "--metrics",
        metrics,
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "retranscope: recording" in line:
            return proc
        print(line, end="", file=sys.stderr)
    raise RuntimeError(f"recorder exited before it was ready ({proc.wait()})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--loss", type=float, default=3)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between bulk clients")
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--bytes", type=int, default=20_000_000)
    ap.add_argument("--metrics-port", type=int, default=19977)
    ap.add_argument("--max-growth-mb", type=float, default=5.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak_record: needs root (a lab of network namespaces)", file=sys.stderr)
        return 2
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import start_bulk, start_server

    metrics = f"127.0.0.1:{args.metrics_port}"
    seconds = args.minutes * 60
    series: list[tuple[float, float, float, int]] = []  # minute, rss MB, cpu s, events
    with tempfile.TemporaryDirectory() as tmp, Lab(ipv6=False, tso=False) as lab:
        out = Path(tmp) / "rec"
        lab.add_rule(f"tcp dport {PORT} numgen random mod 1000 < {int(args.loss * 10)} drop")
        start_server(lab, "--port", PORT, "--mode", "sink", "--timeout-s", seconds + 120)
        ino = os.stat(f"/run/netns/{lab.sender_ns}").st_ino
        rec = start_recorder(out, ino, metrics)
        try:
            t0 = time.monotonic()
            next_client = t0
            next_report = t0 + 60
            clients: list = []
            print(
                f"{'min':>4} {'events':>10} {'rate/s':>8} {'RSS MB':>8} {'CPU s':>7} "
                f"{'CPU %':>6} {'scraped':>10}",
                flush=True,
            )
            last_cpu, last_events = cpu_s(rec.pid), 0
            while len(series) < int(args.minutes):
                now = time.monotonic()
                if now >= next_client:
                    clients = [c for c in clients if c.poll() is None]
                    clients.append(
                        start_bulk(lab, PORT, args.bytes, conns=args.conns, timeout_s=60)
                    )
                    next_client = now + args.every
                if now >= next_report:
                    next_report += 60
                    minute = round((now - t0) / 60)
                    meta = json.loads((out / "run.json").read_text())
                    events = int(meta.get("events_received", 0))
                    rss, cpu = rss_mb(rec.pid), cpu_s(rec.pid)
                    series.append((minute, rss, cpu, events))
                    print(
                        f"{minute:>4} {events:>10} {(events - last_events) / 60:>8.0f} "
                        f"{rss:>8.1f} {cpu:>7.1f} {100 * (cpu - last_cpu) / 60:>6.1f} "
                        f"{scrape(metrics):>10.0f}",
                        flush=True,
                    )
                    last_cpu, last_events = cpu, events
                time.sleep(0.2)
            for c in clients:
                c.kill()
        finally:
            rec.send_signal(signal.SIGINT)
            try:
                code = rec.wait(timeout=60)
            except subprocess.TimeoutExpired:
                rec.kill()
                code = rec.wait()
        meta = json.loads((out / "run.json").read_text())
    return report(series, meta, code, args.max_growth_mb)


def report(series, meta: dict, code: int, limit_mb: float) -> int:
    steady = [rss for minute, rss, _, _ in series if minute >= 2]
    if not steady:
        print("soak too short for a figure (needs 3 minutes)")
        return 1
    spread = max(steady) - min(steady)
    cpu = series[-1][2] - series[0][2]
    events = series[-1][3] - series[0][3]
    print(
        f"recorder exit {code}; {meta.get('events_written')} events written, "
        f"{meta.get('events_lost_in_kernel')} lost in the kernel buffer; ring deleted "
        f"{(meta.get('ring') or {}).get('deleted_files')} files"
    )
    print(
        f"RSS from minute 2 to {series[-1][0]}: min {min(steady):.1f} MB, max "
        f"{max(steady):.1f} MB, last {steady[-1]:.1f} MB: spread {spread:.1f} MB "
        f"(limit {limit_mb:g}); CPU {cpu / max(1, events) * 1e6:.1f} us per event at "
        f"{events / max(1, 60 * (series[-1][0] - series[0][0])):.0f} events/s"
    )
    ok = spread <= limit_mb and code == 0 and not meta.get("events_lost_in_kernel")
    print("flat" if ok else "NOT flat (or the recorder failed)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
