"""`retranscope analyze` against the tools people use today, on the same capture.

    .venv/bin/python bench/bench_analyze.py [CAPTURE]     (default bench/data/big.pcap,
                                                          made by bench/make_big_capture.py)

Each tool runs as its own process; wall time and peak RSS come from wait4(). Printed side
by side, with ratios. tshark does Wireshark's TCP analysis (it labels retransmissions,
fast and spurious ones, never TLP); tcptrace -l counts retransmissions per connection with
no classification; retranscope classifies every retransmission and writes its outputs.
Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


def run(argv: list[str], repeat: int = 1) -> dict:
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise SystemExit(f"{argv[0]} failed ({code}): {err.strip()[-300:]}")
        r = {"wall_s": wall, "peak_mb": rusage.ru_maxrss / 1024}
        if best is None or r["wall_s"] < best["wall_s"]:
            best = r
    return best


def main() -> int:
    capture = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "data" / "big.pcap"
    if not capture.exists():
        print(f"bench_analyze: {capture} missing: sudo .venv/bin/python bench/make_big_capture.py",
              file=sys.stderr)
        return 2
    from retranscope.analyze.pcap import read_capture

    n = len(read_capture(capture).packets["frame"])
    print(f"capture: {capture} ({capture.stat().st_size / 1e6:.0f} MB, {n:,} TCP packets)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("retranscope analyze", run([str(VENV_BIN / "retranscope"), "analyze",
                                                 "--pcap", str(capture), "--out", tmp, "-q"],
                                                repeat=3)))
        if shutil.which("tcptrace"):
            rows.append(("tcptrace -l", run(["tcptrace", "-l", str(capture)], repeat=3)))
        if shutil.which("tshark"):
            rows.append(("tshark TCP analysis", run(
                ["tshark", "-r", str(capture), "-n", "-Y",
                 "tcp.analysis.retransmission or tcp.analysis.fast_retransmission or "
                 "tcp.analysis.spurious_retransmission",
                 "-T", "fields", "-e", "frame.number", "-e", "tcp.analysis.fast_retransmission"])))
    ours = rows[0][1]
    print(f"{'tool':24} {'wall s':>8} {'peak MB':>9} {'time / ours':>12} {'packets/s':>12}")
    for name, r in rows:
        print(f"{name:24} {r['wall_s']:8.2f} {r['peak_mb']:9.0f} {r['wall_s'] / ours['wall_s']:11.2f}x "
              f"{n / r['wall_s']:12,.0f}")
    for name, r in rows[1:]:
        if name.startswith("tshark"):
            print(f"retranscope is {r['wall_s'] / ours['wall_s']:.1f}x faster than tshark, "
                  f"peak memory {ours['peak_mb']:.0f} MB vs {r['peak_mb']:.0f} MB")
        else:
            print(f"retranscope takes {ours['wall_s'] / r['wall_s']:.2f}x the time of {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
