"""Recorder under a retransmission storm, side by side with bcc's tcpretrans.

    sudo .venv/bin/python bench/bench_record.py [--seconds 8] [--loss 15 20 25] [--conns 8]

A lab (two namespaces, veth, TSO off) carries several bulk flows through nftables random
loss. An independent BPF counter (bench/retrans_counter.bpf.c) counts every
tcp_retransmit_skb the kernel made. Each tool runs on its own storm of the same shape;
printed: events the tool kept vs the kernel's count, lost, rate, CPU time per event.
Not a test: no assertion on timing. Prints the highest rate at which the recorder lost
nothing.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
PORT = 5001
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class KernelCount:
    def __init__(self):
        from bcc import BPF

        self.bpf = BPF(
            src_file=str(HERE / "retrans_counter.bpf.c").encode(), cflags=[f"-DBENCH_PORT={PORT}"]
        )

    def read(self) -> int:
        return sum(int(v) for v in self.bpf["made"][ct.c_int(0)])


def storm(lab, seconds: float, conns: int):
    from retranscope.lab.recorded import start_bulk, start_server

    server = start_server(lab, "--port", PORT, "--mode", "sink", "--timeout-s", seconds + 30)
    client = start_bulk(lab, PORT, 10**11, conns=conns, timeout_s=seconds + 20)
    time.sleep(seconds)
    client.send_signal(signal.SIGKILL)
    client.wait()
    server.kill()
    server.wait()


def run_recorder(lab, seconds: float, conns: int, kc: KernelCount, out: Path) -> dict:
    from retranscope.lab.recorded import RecorderProcess

    rec = RecorderProcess(lab, lab.sender_ns, ["--out", str(out), "--quiet", "--port", str(PORT)])
    k0 = kc.read()
    storm(lab, seconds, conns)
    time.sleep(0.5)
    k1 = kc.read()
    cpu = cpu_seconds(rec.proc.pid)
    rec.stop()
    kept = sum(
        pq.read_table(f, filters=[("dport", "=", PORT)]).num_rows
        for f in (out / "events").glob("*.parquet")
    )
    meta = json.loads((out / "run.json").read_text())
    return {
        "tool": "retranscope record",
        "kernel": k1 - k0,
        "kept": kept,
        "cpu_s": cpu,
        "self_reported_lost": meta.get("events_lost_in_kernel"),
        # Segments the kernel resent without running any probe (the reference counter,
        # a BPF program too, cannot see those either): from the sockets' own totals.
        "unreported": (meta.get("accounting") or {}).get("unreported_segments"),
    }


def run_tcpretrans(lab, seconds: float, conns: int, kc: KernelCount, out: Path) -> dict | None:
    exe = shutil.which("tcpretrans-bpfcc")
    if exe is None:
        return None
    log = open(out / "tcpretrans.txt", "w")
    proc = subprocess.Popen([exe], stdout=log, stderr=subprocess.STDOUT)
    # tcpretrans prints its header when attached.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "TIME" not in (out / "tcpretrans.txt").read_text():
        time.sleep(0.1)
    k0 = kc.read()
    storm(lab, seconds, conns)
    time.sleep(0.5)
    k1 = kc.read()
    cpu = cpu_seconds(proc.pid)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    log.close()
    text = (out / "tcpretrans.txt").read_text()
    # "R> RADDR:RPORT": retransmissions sent to the server's port, as counted in the kernel.
    port_re = re.compile(rf"[RL]> +\S+:{PORT}\b")
    kept = sum(1 for line in text.splitlines() if port_re.search(line))
    return {"tool": "tcpretrans-bpfcc", "kernel": k1 - k0, "kept": kept, "cpu_s": cpu}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--loss", type=int, nargs="+", default=[15])
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--no-tcpretrans", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_record: needs root", file=sys.stderr)
        return 2
    from retranscope.lab.netns import Lab
    from retranscope.record.probe import ensure_tracefs

    ensure_tracefs()
    kc = KernelCount()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for loss in args.loss:
            for tool in ("retranscope", "tcpretrans"):
                if tool == "tcpretrans" and args.no_tcpretrans:
                    continue
                out = Path(tmp) / f"{tool}-{loss}"
                out.mkdir()
                with Lab(ipv6=False, tso=False) as lab:
                    lab.add_rule(f"tcp dport {PORT} numgen random mod 100 < {loss} drop")
                    fn = run_recorder if tool == "retranscope" else run_tcpretrans
                    r = fn(lab, args.seconds, args.conns, kc, out)
                if r is None:
                    continue
                r["loss_pct"] = loss
                rows.append(r)
                print_row(r, args.seconds)
    best = [r for r in rows if r["tool"] == "retranscope record" and r["kept"] >= r["kernel"]]
    if best:
        top = max(best, key=lambda r: r["kernel"])
        print(
            f"highest rate with zero loss (retranscope): {top['kernel'] / args.seconds:,.0f} "
            f"retransmissions/s (loss {top['loss_pct']}%)"
        )
    return 0


def print_row(r: dict, seconds: float) -> None:
    lost = r["kernel"] - r["kept"]
    rate = r["kernel"] / seconds
    per = r["cpu_s"] / max(1, r["kept"]) * 1e6
    print(
        f"{r['tool']:20} loss {r['loss_pct']:>2}%  kernel made {r['kernel']:>8}  kept "
        f"{r['kept']:>8}  lost {lost:>6} ({100 * lost / max(1, r['kernel']):.2f}%)  "
        f"rate {rate:>8,.0f}/s  cpu {r['cpu_s']:.2f} s = {per:.1f} us/event"
        + (
            f"  (lost by its own count: {r['self_reported_lost']}; segments the kernel "
            f"resent without running a probe: {r['unreported']})"
            if "self_reported_lost" in r
            else ""
        ),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
