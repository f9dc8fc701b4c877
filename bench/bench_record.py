"""Recorder under a retransmission storm, side by side with bcc's tcpretrans.

    sudo .venv/bin/python bench/bench_record.py [--seconds 8] [--loss 15] [--conns 8]
        [--repeat 3] [--tools retranscope retranscope-bcc tcpretrans]

A lab (two namespaces, veth, TSO off) carries several bulk flows through nftables random
loss. An independent BPF counter (bench/retrans_counter.bpf.c) counts every
tcp_retransmit_skb the kernel made in the lab's namespace (other labs on the machine may
use the same port). Each tool runs on its own storm of the same shape, the
tools in turn (A B C A B C ...: paired runs on a machine whose load drifts); printed per
run: events the tool kept vs the kernel's count, lost, rate, and CPU time per event during
the storm (the tool's user + system time from the storm's start to its end, so neither
tool's start-up compile counts); then per tool the median over the runs.
``retranscope`` reads the ring buffer's memory directly (record/ringbuf.py);
``retranscope-bcc`` is the same recorder through bcc's per-event callback
(--ring-reader bcc), for comparison. Not a test: no assertion on timing.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORT = 5001
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class KernelCount:
    def __init__(self):
        from bcc import BPF

        from retranscope.record.btf import BTF, kernel_offsets

        offsets, _ = kernel_offsets(BTF.load())
        self.bpf = BPF(
            src_file=str(HERE / "retrans_counter.bpf.c").encode(),
            cflags=[
                f"-DBENCH_PORT={PORT}",
                *(f"-D{k}={offsets[k]}" for k in ("RTS_OFF_SK_NET", "RTS_OFF_NET_INUM")),
            ],
        )

    def watch(self, lab) -> None:
        """Count only the lab's sender namespace."""
        ino = os.stat(f"/run/netns/{lab.sender_ns}").st_ino
        self.bpf[b"watch"][ct.c_int(0)] = ct.c_uint32(ino)

    def read(self) -> int:
        return sum(int(v) for v in self.bpf[b"made"][ct.c_int(0)])


def storm(lab, seconds: float, conns: int):
    from retranscope.lab.recorded import start_bulk, start_server

    server = start_server(lab, "--port", PORT, "--mode", "sink", "--timeout-s", seconds + 30)
    client = start_bulk(lab, PORT, 10**11, conns=conns, timeout_s=seconds + 20)
    time.sleep(seconds)
    client.send_signal(signal.SIGKILL)
    client.wait()
    server.kill()
    server.wait()


def run_recorder(
    lab, seconds: float, conns: int, kc: KernelCount, out: Path, reader: str = "mmap"
) -> dict:
    from retranscope.analyze.events import read_events
    from retranscope.lab.recorded import RecorderProcess

    rec = RecorderProcess(
        lab,
        lab.sender_ns,
        ["--out", str(out), "--quiet", "--port", str(PORT), "--ring-reader", reader],
    )
    k0, cpu0 = kc.read(), cpu_seconds(rec.proc.pid)
    storm(lab, seconds, conns)
    time.sleep(0.5)
    k1, cpu1 = kc.read(), cpu_seconds(rec.proc.pid)
    code = rec.stop()
    meta = json.loads((out / "run.json").read_text())
    if code != 0 or not meta.get("complete"):
        print(f"recorder exit {code}, status {meta.get('status')}: {rec.stderr_lines[-2:]}")
    ev = read_events(out).frame()
    kept = int((ev["dport"] == PORT).sum())
    return {
        "tool": "retranscope" if reader == "mmap" else "retranscope-bcc",
        "kernel": k1 - k0,
        "kept": kept,
        "cpu_s": cpu1 - cpu0,
        "self_reported_lost": meta.get("events_lost_in_kernel"),
        "missed": meta.get("events_missed_in_kernel"),
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
    k0, cpu0 = kc.read(), cpu_seconds(proc.pid)
    storm(lab, seconds, conns)
    time.sleep(0.5)
    k1, cpu1 = kc.read(), cpu_seconds(proc.pid)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    log.close()
    text = (out / "tcpretrans.txt").read_text()
    # "R> RADDR:RPORT": retransmissions sent to the server's port, as counted in the kernel.
    port_re = re.compile(rf"[RL]> +\S+:{PORT}\b")
    kept = sum(1 for line in text.splitlines() if port_re.search(line))
    return {"tool": "tcpretrans-bpfcc", "kernel": k1 - k0, "kept": kept, "cpu_s": cpu1 - cpu0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--loss", type=int, nargs="+", default=[15])
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3, help="paired runs per tool and loss")
    ap.add_argument(
        "--tools",
        nargs="+",
        default=["retranscope", "retranscope-bcc", "tcpretrans"],
        choices=["retranscope", "retranscope-bcc", "tcpretrans"],
    )
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
            for rep in range(args.repeat):
                for tool in args.tools:
                    out = Path(tmp) / f"{tool}-{loss}-{rep}"
                    out.mkdir()
                    with Lab(ipv6=False, tso=False) as lab:
                        lab.add_rule(f"tcp dport {PORT} numgen random mod 100 < {loss} drop")
                        kc.watch(lab)
                        if tool == "tcpretrans":
                            r = run_tcpretrans(lab, args.seconds, args.conns, kc, out)
                        else:
                            r = run_recorder(
                                lab,
                                args.seconds,
                                args.conns,
                                kc,
                                out,
                                "mmap" if tool == "retranscope" else "bcc",
                            )
                    if r is None:
                        continue
                    r["loss_pct"] = loss
                    rows.append(r)
                    print_row(r, args.seconds)
    print_medians(rows, args.seconds)
    return 0


def print_medians(rows: list[dict], seconds: float) -> None:
    print("\nmedians over the paired runs:")
    for tool in dict.fromkeys(r["tool"] for r in rows):
        mine = [r for r in rows if r["tool"] == tool]
        per = statistics.median(r["cpu_s"] / max(1, r["kept"]) * 1e6 for r in mine)
        lost = statistics.median(
            100 * (r["kernel"] - r["kept"]) / max(1, r["kernel"]) for r in mine
        )
        rate = statistics.median(r["kernel"] / seconds for r in mine)
        print(
            f"{tool:20} {per:5.2f} us of CPU per event, {lost:.2f}% lost, at "
            f"{rate:,.0f} retransmissions/s ({len(mine)} runs)"
        )


def print_row(r: dict, seconds: float) -> None:
    lost = r["kernel"] - r["kept"]
    rate = r["kernel"] / seconds
    per = r["cpu_s"] / max(1, r["kept"]) * 1e6
    print(
        f"{r['tool']:20} loss {r['loss_pct']:>2}%  kernel made {r['kernel']:>8}  kept "
        f"{r['kept']:>8}  lost {lost:>6} ({100 * lost / max(1, r['kernel']):.2f}%)  "
        f"rate {rate:>8,.0f}/s  cpu in the storm {r['cpu_s']:.2f} s = {per:.2f} us/event"
        + (
            f"  (lost by its own count: {r['self_reported_lost']}, program not run: "
            f"{r['missed']}; segments the kernel "
            f"resent without running a probe: {r['unreported']})"
            if "self_reported_lost" in r
            else ""
        ),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
