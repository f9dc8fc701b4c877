"""`retranscope analyze` against the tools people use today, on the same capture.

    .venv/bin/python bench/bench_analyze.py [CAPTURE]     (default bench/data/big.pcap,
                                                          made by bench/make_big_capture.py)
    .venv/bin/python bench/bench_analyze.py --no-tshark   (quick: tshark takes ~50 s)
    .venv/bin/python bench/bench_analyze.py --repeat 5    (best of 5; default 3)
    .venv/bin/python bench/bench_analyze.py --baseline REV --pairs 9
                         (this tree against git revision REV, in turns: medians, ratio)

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
    return {"wall_s": wall, "cpu_s": rusage.ru_utime + rusage.ru_stime,
            "peak_mb": rusage.ru_maxrss / 1024}


def best_of(tools: dict[str, tuple[list[str], dict | None]], repeat: int) -> dict[str, dict]:
    """Each tool ``repeat`` times, in turns; the fastest run of each."""
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for name, (argv, env) in tools.items():
            r = run(argv, env)
            if name not in best or r["wall_s"] < best[name]["wall_s"]:
                best[name] = r
    return best


def package_tree(src: Path, dst: Path) -> Path:
    """A directory to put on PYTHONPATH that imports ``src`` as retranscope.<stage>, as
    pyproject's package-dir maps it (what the editable install does), for a tree that is
    not installed: a git revision's, or this one's, timed alike."""
    import tomllib

    dirs = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    pkg = dst / "retranscope"
    pkg.mkdir(parents=True)
    for item in (src / dirs["retranscope"]).iterdir():
        (pkg / item.name).symlink_to(item)
    for name, folder in dirs.items():
        if name != "retranscope":
            (pkg / name.split(".", 1)[1]).symlink_to(src / folder)
    return dst


def paired(capture: Path, rev: str, pairs: int, tmp: str, env: dict) -> None:
    """This tree and git revision ``rev`` analyze the capture in turns (A B A B ...): the
    median wall and CPU (user + system) time of each, and their ratios. Both import the
    same way (package_tree). On a shared machine the CPU time is the steadier figure."""
    base_src = Path(tmp, "baseline-src")
    base_src.mkdir()
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", rev],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
    sides = {"this tree": package_tree(HERE.parent, Path(tmp, "this")),
             f"baseline {rev}": package_tree(base_src, Path(tmp, "baseline"))}
    argvs = {name: [sys.executable, "-m", "retranscope", "analyze", "--pcap", str(capture),
                    "--out", os.path.join(tmp, "out-" + name.split()[0]), "-q"]
             for name in sides}
    envs = {name: dict(env, PYTHONPATH=str(site)) for name, site in sides.items()}
    for name in sides:
        run(argvs[name], envs[name])  # untimed: fills the bytecode cache
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(pairs):
        for name in sides:
            runs[name].append(run(argvs[name], envs[name]))
    for clock in ("wall_s", "cpu_s"):
        times = {name: [r[clock] for r in rs] for name, rs in runs.items()}
        med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
        for name, t in times.items():
            print(f"{clock[:-2]:5} {name:24} median {med[name]:.3f} s over {len(t)} runs "
                  f"(min {min(t):.3f}, max {max(t):.3f})")
        a, b = med.values()
        ratios = sorted(x / y for x, y in zip(*times.values()))
        print(f"{clock[:-2]:5} this tree takes {a / b:.3f}x the time of {rev} (ratio of "
              f"medians); per pair, median {ratios[len(ratios) // 2]:.3f}x (quartiles "
              f"{ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path, default=HERE / "data" / "big.pcap")
    ap.add_argument("--no-tshark", action="store_true", help="skip tshark (~50 s)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the fast tools")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="run retranscope as PYTHONDONTWRITEBYTECODE=1 leaves it: compiling")
    ap.add_argument("--baseline", metavar="REV",
                    help="time this tree against git revision REV instead, in turns")
    ap.add_argument("--pairs", type=int, default=9, help="turns for --baseline")
    args = ap.parse_args()
    capture = args.capture
    if not capture.exists():
        print(f"bench_analyze: {capture} missing: sudo .venv/bin/python bench/make_big_capture.py",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        if not args.no_bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        if args.baseline:
            paired(capture, args.baseline, args.pairs, tmp, env)
            return 0
        ours_argv = [str(VENV_BIN / "retranscope"), "analyze", "--pcap", str(capture),
                     "--out", os.path.join(tmp, "out"), "-q"]
        run(ours_argv, env)  # untimed: fills the bytecode cache; gives the packet count
        summary = json.loads(Path(tmp, "out", "summary.json").read_text())
        n = summary["capture"]["tcp_packets"]
        print(f"capture: {capture} ({capture.stat().st_size / 1e6:.0f} MB, {n:,} TCP packets)")
        print("bytecode cache: " + ("off (every run compiles)" if args.no_bytecode_cache
                                    else "on (as after an install)"))
        tools = {"retranscope analyze": (ours_argv, env)}
        if shutil.which("tcptrace"):
            tools["tcptrace -l"] = (["tcptrace", "-l", str(capture)], None)
        rows = list(best_of(tools, args.repeat).items())
        if shutil.which("tshark") and not args.no_tshark:
            rows.append(("tshark TCP analysis", run(
                ["tshark", "-r", str(capture), "-n", "-Y",
                 "tcp.analysis.retransmission or tcp.analysis.fast_retransmission or "
                 "tcp.analysis.spurious_retransmission",
                 "-T", "fields", "-e", "frame.number", "-e", "tcp.analysis.fast_retransmission"])))
    ours = rows[0][1]
    print(f"{'tool':24} {'wall s':>8} {'peak MB':>9} {'time / ours':>12} {'packets/s':>12}")
    for name, r in rows:
        print(f"{name:24} {r['wall_s']:8.2f} {r['peak_mb']:9.0f} "
              f"{r['wall_s'] / ours['wall_s']:11.2f}x {n / r['wall_s']:12,.0f}")
    for name, r in rows[1:]:
        if name.startswith("tshark"):
            print(f"retranscope is {r['wall_s'] / ours['wall_s']:.1f}x faster than tshark, "
                  f"peak memory {ours['peak_mb']:.0f} MB vs {r['peak_mb']:.0f} MB")
        else:
            print(f"retranscope takes {ours['wall_s'] / r['wall_s']:.2f}x the time of {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
