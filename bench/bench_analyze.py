"""`retranscope analyze` against the tools people use today, on the same capture.

    .venv/bin/python bench/bench_analyze.py [CAPTURE]     (default bench/data/big.pcap,
                                                          made by bench/make_big_capture.py)
    .venv/bin/python bench/bench_analyze.py --no-tshark   (quick: tshark takes ~50 s)
    .venv/bin/python bench/bench_analyze.py --repeat 5    (best of 5; default 3)

Each tool runs as its own process; wall time and peak RSS come from wait4(). Printed side
by side, with ratios. tshark does Wireshark's TCP analysis (it labels retransmissions,
fast and spurious ones, never TLP); tcptrace -l counts retransmissions per connection with
no classification; retranscope classifies every retransmission and writes its outputs.
Not a test: nothing here asserts on time.

The fast tools run in turns (retranscope, tcptrace, retranscope, ...), best of --repeat
each, so that both see the same load. retranscope runs with Python's bytecode cache, as
after any install (an untimed first run fills it, in a temporary directory): without it
(PYTHONDONTWRITEBYTECODE=1, as in some sandboxes) every run compiles the project's
modules, ~0.05 s; --no-bytecode-cache measures that. This process never reads the
capture itself: a child forked from a big parent would report the parent's RSS as its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


def run(argv: list[str], env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{argv[0]} failed ({code}): {err.strip()[-300:]}")
    return {"wall_s": wall, "peak_mb": rusage.ru_maxrss / 1024}


def best_of(tools: dict[str, tuple[list[str], dict | None]], repeat: int) -> dict[str, dict]:
    """Each tool ``repeat`` times, in turns; the fastest run of each."""
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for name, (argv, env) in tools.items():
            r = run(argv, env)
            if name not in best or r["wall_s"] < best[name]["wall_s"]:
                best[name] = r
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path, default=HERE / "data" / "big.pcap")
    ap.add_argument("--no-tshark", action="store_true", help="skip tshark (~50 s)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the fast tools")
    ap.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run retranscope as PYTHONDONTWRITEBYTECODE=1 leaves it: compiling",
    )
    args = ap.parse_args()
    capture = args.capture
    if not capture.exists():
        print(
            f"bench_analyze: {capture} missing: sudo .venv/bin/python bench/make_big_capture.py",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if not args.no_bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        ours_argv = [
            str(VENV_BIN / "retranscope"),
            "analyze",
            "--pcap",
            str(capture),
            "--out",
            os.path.join(tmp, "out"),
            "-q",
        ]
        run(ours_argv, env)  # untimed: fills the bytecode cache; gives the packet count
        summary = json.loads(Path(tmp, "out", "summary.json").read_text())
        n = summary["capture"]["tcp_packets"]
        print(f"capture: {capture} ({capture.stat().st_size / 1e6:.0f} MB, {n:,} TCP packets)")
        print(
            "bytecode cache: "
            + ("off (every run compiles)" if args.no_bytecode_cache else "on (as after an install)")
        )
        tools = {"retranscope analyze": (ours_argv, env)}
        if shutil.which("tcptrace"):
            tools["tcptrace -l"] = (["tcptrace", "-l", str(capture)], None)
        rows = list(best_of(tools, args.repeat).items())
        if shutil.which("tshark") and not args.no_tshark:
            rows.append(
                (
                    "tshark TCP analysis",
                    run(
                        [
                            "tshark",
                            "-r",
                            str(capture),
                            "-n",
                            "-Y",
                            "tcp.analysis.retransmission or tcp.analysis.fast_retransmission or "
                            "tcp.analysis.spurious_retransmission",
                            "-T",
                            "fields",
                            "-e",
                            "frame.number",
                            "-e",
                            "tcp.analysis.fast_retransmission",
                        ]
                    ),
                )
            )
    ours = rows[0][1]
    print(f"{'tool':24} {'wall s':>8} {'peak MB':>9} {'time / ours':>12} {'packets/s':>12}")
    for name, r in rows:
        print(
            f"{name:24} {r['wall_s']:8.2f} {r['peak_mb']:9.0f} "
            f"{r['wall_s'] / ours['wall_s']:11.2f}x {n / r['wall_s']:12,.0f}"
        )
    for name, r in rows[1:]:
        if name.startswith("tshark"):
            print(
                f"retranscope is {r['wall_s'] / ours['wall_s']:.1f}x faster than tshark, "
                f"peak memory {ours['peak_mb']:.0f} MB vs {r['peak_mb']:.0f} MB"
            )
        else:
            print(f"retranscope takes {ours['wall_s'] / r['wall_s']:.2f}x the time of {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
