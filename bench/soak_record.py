"""The recorder for half an hour at a moderate, steady retransmission rate: does its
memory stay flat?

    sudo .venv/bin/python bench/soak_record.py [--minutes 30] [--loss 3] [--every 2]

A lab (two namespaces, veth, TSO off) with nftables random loss; every ``--every``
seconds a new bulk client opens ``--conns`` connections and sends ``--bytes`` on each, so
sockets come and go all the time (the recorder must forget the ones the kernel destroys).
The recorder runs as a service would: default settings, plus a ring of event files and
the metrics endpoint (scraped once a minute here), in the root namespace filtering on
the lab's. Memory is sampled every 2 s; every minute: events so far, the rate, the
minute's RSS floor (its lowest sample: what the recorder keeps) and peak (what a batch
or a file rotation holds for a moment), the same for anonymous memory, CPU. At the end:
the spread of the floors from the second minute on (the first is warm-up: imports, the
compiled program, the first files), whether it stays within ``--max-growth-mb`` (exit 0
if so, 1 if not), and the highest peak. Not a test: it takes half an hour.
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


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and its parts: RssAnon (the heap: what a leak grows), RssFile (mapped files:
    the libraries, LLVM's among them), RssShmem (shared mappings: the BPF ring buffer)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) / 1024
    return out


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
    ap.add_argument("--sample-s", type=float, default=2.0, help="seconds between samples")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak_record: needs root (a lab of network namespaces)", file=sys.stderr)
        return 2
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import start_bulk, start_server

    metrics = f"127.0.0.1:{args.metrics_port}"
    series: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, Lab(ipv6=False, tso=False) as lab:
        out = Path(tmp) / "rec"
        lab.add_rule(f"tcp dport {PORT} numgen random mod 1000 < {int(args.loss * 10)} drop")
        start_server(lab, "--port", PORT, "--mode", "sink", "--timeout-s", args.minutes * 60 + 120)
        ino = os.stat(f"/run/netns/{lab.sender_ns}").st_ino
        rec = start_recorder(out, ino, metrics)
        try:
            series = watch(lab, rec, out, metrics, args, start_bulk)
        finally:
            rec.send_signal(signal.SIGINT)
            try:
                code = rec.wait(timeout=60)
            except subprocess.TimeoutExpired:
                rec.kill()
                code = rec.wait()
        meta = json.loads((out / "run.json").read_text())
    return report(series, meta, code, args.max_growth_mb)


def watch(lab, rec, out: Path, metrics: str, args, start_bulk) -> list[dict]:
    """Start clients as the load asks; sample the recorder's memory every --sample-s and
    summarise each minute by its floor (the lowest sample: what the recorder keeps) and
    its peak (the highest: what a batch or a file rotation holds for a moment)."""
    t0 = time.monotonic()
    next_client = t0
    next_sample = t0
    clients: list = []
    series: list[dict] = []
    minute: list[dict] = []
    print(
        f"{'min':>4} {'events':>9} {'rate/s':>6} {'RSS floor':>9} {'peak':>6} "
        f"{'anon floor':>10} {'peak':>6} {'CPU s':>6} {'CPU %':>5} {'scraped':>9}   (MB)",
        flush=True,
    )
    last = {"cpu": cpu_s(rec.pid), "events": 0}
    while len(series) < int(args.minutes):
        now = time.monotonic()
        if now >= next_client:
            clients = [c for c in clients if c.poll() is None]
            clients.append(start_bulk(lab, PORT, args.bytes, conns=args.conns, timeout_s=60))
            next_client = now + args.every
        if now >= next_sample:
            next_sample += args.sample_s
            minute.append(memory_mb(rec.pid))
        if now - t0 >= 60 * (len(series) + 1):
            meta = json.loads((out / "run.json").read_text())
            row = {
                "minute": len(series) + 1,
                "cpu": cpu_s(rec.pid),
                "events": int(meta.get("events_received", 0)),
                "floor": min(m["VmRSS"] for m in minute),
                "peak": max(m["VmRSS"] for m in minute),
                "anon_floor": min(m["RssAnon"] for m in minute),
                "anon_peak": max(m["RssAnon"] for m in minute),
            }
            minute = []
            series.append(row)
            print(
                f"{row['minute']:>4} {row['events']:>9} "
                f"{(row['events'] - last['events']) / 60:>6.0f} "
                f"{row['floor']:>9.1f} {row['peak']:>6.1f} {row['anon_floor']:>10.1f} "
                f"{row['anon_peak']:>6.1f} {row['cpu']:>6.1f} "
                f"{100 * (row['cpu'] - last['cpu']) / 60:>5.1f} {scrape(metrics):>9.0f}",
                flush=True,
            )
            last = row
        time.sleep(0.2)
    for c in clients:
        c.kill()
    return series


def report(series: list[dict], meta: dict, code: int, limit_mb: float) -> int:
    steady = [r for r in series if r["minute"] >= 2]
    if len(steady) < 2:
        print("soak too short for a figure (needs 3 minutes)")
        return 1
    floor = [r["floor"] for r in steady]
    peak = [r["peak"] for r in steady]
    cpu = series[-1]["cpu"] - series[0]["cpu"]
    events = series[-1]["events"] - series[0]["events"]
    span_s = 60 * (series[-1]["minute"] - series[0]["minute"])
    print(
        f"recorder exit {code}; {meta.get('events_written')} events written, "
        f"{meta.get('events_lost_in_kernel')} lost in the kernel buffer; ring deleted "
        f"{(meta.get('ring') or {}).get('deleted_files')} files"
    )
    print(
        f"minutes 2-{steady[-1]['minute']}: RSS floor {min(floor):.1f}-{max(floor):.1f} MB "
        f"(spread {max(floor) - min(floor):.1f} MB, limit {limit_mb:g}; first "
        f"{floor[0]:.1f}, last {floor[-1]:.1f}); peaks {min(peak):.1f}-{max(peak):.1f} MB "
        f"(at most {max(p - f for p, f in zip(peak, floor)):.1f} MB above that minute's "
        f"floor); CPU {cpu / max(1, events) * 1e6:.1f} us per event at "
        f"{events / max(1, span_s):.0f} events/s"
    )
    ok = max(floor) - min(floor) <= limit_mb and code == 0 and not meta.get("events_lost_in_kernel")
    print("flat" if ok else "NOT flat (or the recorder failed)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
