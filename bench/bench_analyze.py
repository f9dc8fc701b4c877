"""`retranscope analyze` against the tools people use today, on the same captures.

    .venv/bin/python bench/bench_analyze.py [CAPTURE ...]   (default bench/data/big.pcap,
                            made by bench/make_big_capture.py; the 13M-packet one with
                            bench/make_big_capture.py --packets 13000000 --out ...)
    .venv/bin/python bench/bench_analyze.py --pairs 7       (default 7 turns)
    .venv/bin/python bench/bench_analyze.py --tshark-runs 0 (skip tshark: ~20-30 s a run)
    .venv/bin/python bench/bench_analyze.py --memory-limit-mb 768 CAPTURE
                            (also run analyze inside a memory cgroup of that size and check
                            that it completes with the same outputs)
    .venv/bin/python bench/bench_analyze.py --baseline REV --pairs 9
                            (this tree against git revision REV, in turns: medians, ratio)

Each tool runs as its own process; wall and CPU time (user + system) and peak RSS come
from wait4(). retranscope and tcptrace -l run in turns (A B A B ...), so both see the same
load; printed are the medians of each and the median of the per-pair ratios, never the
best run: this machine is shared and noisy. tshark does Wireshark's TCP analysis (it labels
retransmissions, fast and spurious ones, never TLP); tcptrace -l counts retransmissions per
connection with no classification; retranscope classifies every retransmission and writes
its outputs. Not a test: nothing here asserts on time.

retranscope runs with Python's bytecode cache, as after any install (an untimed first run
fills it, in a temporary directory). This process never reads a capture itself: a child
forked from a big parent would report the parent's RSS as its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process under it (/proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass  # gone meanwhile
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class TreeSampler(threading.Thread):
    """The peak of the summed PSS of a process and all under it, sampled every
    SAMPLE_S: what several processes at once (split reading, --jobs) hold together, which
    ru_maxrss (the largest single process) does not say. PSS splits the pages forked
    processes share between them, so nothing is counted twice; a sample can miss a peak
    shorter than SAMPLE_S."""

    SAMPLE_S = 0.02

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.SAMPLE_S):
            total = sum(_pss_kb(p) for p in _descendants(self.pid))
            self.peak_kb = max(self.peak_kb, total)


def run(
    argv: list[str], env: dict | None = None, cwd: str | None = None, tree: bool = False
) -> dict:
    """One run of ``argv``: wall, CPU, the largest process's peak, and with ``tree`` all
    its processes' summed peak (TreeSampler). The sampler reads every process's
    smaps_rollup 50 times a second, which takes CPU the tool would have (it slowed
    the 1.3M-packet capture's analysis by ~7% on 2 cores): timed runs are not sampled,
    and the tree is measured in runs of its own (tree_runs)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd
    )
    sampler = TreeSampler(proc.pid)
    if tree:
        sampler.start()
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if tree:
        sampler.done.set()
        sampler.join()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{argv[0]} failed ({code}): {err.strip()[-300:]}")
    return {
        "wall_s": wall,
        "cpu_s": rusage.ru_utime + rusage.ru_stime,
        "peak_mb": rusage.ru_maxrss / 1024,
        "tree_mb": sampler.peak_kb / 1024 if tree else None,
    }


#: untimed runs of each tool in which its processes' summed memory is sampled
TREE_RUNS = 3


def tree_mb(argv: list[str], env: dict | None = None, cwd: str | None = None) -> float:
    """The median over TREE_RUNS sampled runs of the peak of all ``argv``'s processes
    together (MB)."""
    return median([run(argv, env, cwd, tree=True)["tree_mb"] for _ in range(TREE_RUNS)])


def median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def in_turns(tools: dict[str, tuple[list[str], dict | None]], pairs: int) -> dict[str, list]:
    """Each tool ``pairs`` times, in turns (A B A B ...): every run kept."""
    runs: dict[str, list[dict]] = {name: [] for name in tools}
    for _ in range(pairs):
        for name, (argv, env) in tools.items():
            runs[name].append(run(argv, env))
    return runs


def memory_cgroup(limit_mb: int, tmp: str) -> tuple[Path, Path]:
    """A memory cgroup of ``limit_mb`` (cgroup v2's memory.max where mounted, else v1's
    memory.limit_in_bytes), its procs file, for the child to join."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    name = f"retranscope-bench-{os.getpid()}"
    if v2.exists() and "memory" in v2.read_text():
        d = Path("/sys/fs/cgroup") / name
        d.mkdir()
        (d / "memory.max").write_text(str(limit_mb << 20))
        (d / "memory.swap.max").write_text("0") if (d / "memory.swap.max").exists() else None
    else:
        d = Path("/sys/fs/cgroup/memory") / name
        d.mkdir()
        (d / "memory.limit_in_bytes").write_text(str(limit_mb << 20))
        sw = d / "memory.memsw.limit_in_bytes"
        if sw.exists():
            sw.write_text(str(limit_mb << 20))
    return d, d / "cgroup.procs"


def run_limited(argv: list[str], env: dict, limit_mb: int, tmp: str) -> dict:
    """``argv`` inside a fresh memory cgroup; its exit code (137: killed at the limit)."""
    d, procs = memory_cgroup(limit_mb, tmp)
    try:
        wrapped = ["sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *argv]
        t0 = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        _, status, rusage = os.wait4(proc.pid, 0)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        return {
            "wall_s": time.perf_counter() - t0,
            "cpu_s": rusage.ru_utime + rusage.ru_stime,
            "peak_mb": rusage.ru_maxrss / 1024,
            "exit": os.waitstatus_to_exitcode(status),
            "stderr": err.strip()[-300:],
        }
    finally:
        for _ in range(50):
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.1)


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


def build_extensions(src: Path) -> None:
    """Build a git revision's compiled modules (pyproject's ext-modules: the record walk,
    analyze/capture/_walk.c) in its tree, as the editable install builds this tree's:
    without them a revision from before or after them would run its Python fallbacks."""
    import tomllib

    if not tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"].get(
        "ext-modules"
    ):
        return
    done = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()"]
        + ["-q", "build_ext", "--inplace"],
        cwd=src,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"building the compiled modules of {src} failed: {done.stderr[-300:]}")


def paired(capture: Path, rev: str, pairs: int, tmp: str, env: dict, args_extra: list[str]) -> None:
    """This tree and git revision ``rev`` analyze the capture in turns (A B A B ...): the
    median wall and CPU (user + system) time of each, and their ratios. Both import the
    same way (package_tree). On a shared machine the CPU time is the steadier figure.
    ``args_extra`` (--analyze-args) go to this tree's runs only."""
    base_src = Path(tmp, "baseline-src")
    base_src.mkdir()
    # piped, not read into this process (its high-water RSS floors every peak measured:
    # same_outputs_apart)
    git = subprocess.Popen(["git", "-C", str(HERE.parent), "archive", rev], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(base_src)], stdin=git.stdout, check=True)
    git.stdout.close()
    if git.wait() != 0:
        raise SystemExit(f"git archive {rev} failed")
    build_extensions(base_src)
    sides = {
        "this tree": package_tree(HERE.parent, Path(tmp, "this")),
        f"baseline {rev}": package_tree(base_src, Path(tmp, "baseline")),
    }
    argvs = {
        name: [
            sys.executable,
            "-m",
            "retranscope",
            "analyze",
            "--pcap",
            str(capture.resolve()),
            "--out",
            os.path.join(tmp, "out-" + name.split()[0]),
            "-q",
        ]
        + (args_extra if name == "this tree" else [])
        for name in sides
    }
    envs = {name: dict(env, PYTHONPATH=str(site)) for name, site in sides.items()}
    # Run from outside any source tree: `python -m` puts the working directory first on
    # sys.path, and the repository's own retranscope/ there would shadow PYTHONPATH's
    # (both sides would then run this tree).
    for name in sides:
        run(argvs[name], envs[name], cwd=tmp)  # untimed: fills the bytecode cache
    outs = [Path(argv[argv.index("--out") + 1]) for argv in argvs.values()]
    print(f"outputs: {same_outputs_apart(*outs) or 'identical'} (this tree against {rev})")
    check = "import retranscope.analyze.run as r; print(r.__file__)"
    for name in sides:
        where = subprocess.run(
            [sys.executable, "-c", check], env=envs[name], cwd=tmp, capture_output=True, text=True
        ).stdout.strip()
        print(f"{name}: runs {where}")
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(pairs):
        for name in sides:
            runs[name].append(run(argvs[name], envs[name], cwd=tmp))
    for name, rs in runs.items():
        peaks = sorted(r["peak_mb"] for r in rs)
        print(f"peak  {name:24} median {peaks[len(peaks) // 2]:.0f} MB (max {peaks[-1]:.0f})")
        print(
            f"tree  {name:24} median {tree_mb(argvs[name], envs[name], tmp):.0f} MB over "
            f"{TREE_RUNS} untimed runs: all its processes together (PSS, sampled)"
        )
    print_peak_floor()
    for clock in ("wall_s", "cpu_s"):
        times = {name: [r[clock] for r in rs] for name, rs in runs.items()}
        med = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
        for name, t in times.items():
            print(
                f"{clock[:-2]:5} {name:24} median {med[name]:.3f} s over {len(t)} runs "
                f"(min {min(t):.3f}, max {max(t):.3f})"
            )
        a, b = med.values()
        ratios = sorted(x / y for x, y in zip(*times.values()))
        print(
            f"{clock[:-2]:5} this tree takes {a / b:.3f}x the time of {rev} (ratio of "
            f"medians); per pair, median {ratios[len(ratios) // 2]:.3f}x (quartiles "
            f"{ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f})"
        )


def print_peak_floor() -> None:
    """The smallest peak this bench can report: what `true` shows (this process's own
    high-water RSS, which every child's ru_maxrss starts from: same_outputs_apart)."""
    print(f"peak  floor (`true` measured alike)  {run(['true'])['peak_mb']:.0f} MB")


def same_outputs_apart(a: Path, b: Path) -> str:
    """same_outputs in a process of its own. Not in this one: a child's ru_maxrss starts
    from the high-water RSS of the process that spawned it (Python spawns with vfork, and
    exec keeps the larger of the old memory's peak and the new one's), so reading two big
    outputs here (~300 MB for a capture of 125k connections) would put a floor under every
    peak measured after it."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_analyze as b; "
    code += f"print(b.same_outputs(b.Path({str(a)!r}), b.Path({str(b)!r})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"comparing the outputs failed: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def same_outputs(a: Path, b: Path) -> str:
    """What differs between two `analyze --out` directories ('' when nothing does): the
    Parquet tables compared whole, summary.json but for the capture's path as given."""
    import pyarrow.parquet as pq

    differ = [
        name
        for name in ("retransmits.parquet", "flows.parquet")
        if not pq.read_table(a / name).equals(pq.read_table(b / name))
    ]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for s in (sa, sb):
        s["capture"].pop("path", None)
        for f in s["capture"].get("files", []):
            f.pop("path", None)
    differ += [f"summary.json {k}" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
    return "DIFFER: " + ", ".join(differ) if differ else ""


def bench_capture(capture: Path, args, tmp: str, env: dict) -> None:
    out = Path(tmp, "out-" + capture.stem)

    def analyze_argv(into: Path) -> list[str]:
        return [
            str(VENV_BIN / "retranscope"),
            "analyze",
            "--pcap",
            str(capture),
            "--out",
            str(into),
            "-q",
            *args.analyze_args,
        ]

    ours_argv = analyze_argv(out)
    run(ours_argv, env)  # untimed: fills the bytecode cache; gives the packet count
    summary = json.loads((out / "summary.json").read_text())
    n = summary["capture"]["tcp_packets"]
    print(
        f"\ncapture: {capture} ({capture.stat().st_size / 1e6:,.0f} MB, {n:,} TCP packets, "
        f"{summary['retransmissions']:,} retransmissions); load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    tools = {"retranscope analyze": (ours_argv, env)}
    if shutil.which("tcptrace"):
        tools["tcptrace -l"] = (["tcptrace", "-l", str(capture)], None)
    runs = in_turns(tools, args.pairs)
    if (
        shutil.which("tshark")
        and args.tshark_runs
        and capture.stat().st_size <= args.tshark_max_mb << 20
    ):
        runs["tshark TCP analysis"] = [
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
            )
            for _ in range(args.tshark_runs)
        ]
    print(
        f"{'tool':22} {'runs':>4} {'wall s':>8} {'CPU s':>7} {'peak MB':>8} {'tree MB':>8} "
        f"{'packets/s':>11}   (medians)"
    )
    med = {}
    for name, rs in runs.items():
        keys = ("wall_s", "cpu_s", "peak_mb")
        med[name] = {k: median([r[k] for r in rs]) for k in keys}
        m = med[name]
        tree = f"{tree_mb(*tools[name]):8.0f}" if name in tools else f"{'-':>8}"
        print(
            f"{name:22} {len(rs):4} {m['wall_s']:8.2f} {m['cpu_s']:7.2f} {m['peak_mb']:8.0f} "
            f"{tree} {n / m['wall_s']:11,.0f}"
        )
    print(
        "(peak: the largest single process, ru_maxrss; tree: all of a tool's processes "
        f"together, summed PSS sampled every 20 ms, median of {TREE_RUNS} runs apart from "
        "the timed ones; tshark is one process)"
    )
    print_peak_floor()
    ours = runs["retranscope analyze"]
    if "tcptrace -l" in runs:
        ratios = sorted(a["wall_s"] / b["wall_s"] for a, b in zip(ours, runs["tcptrace -l"]))
        print(
            f"retranscope takes {median(ratios):.2f}x tcptrace -l's wall time (median of "
            f"{len(ratios)} paired ratios; quartiles {ratios[len(ratios) // 4]:.2f}-"
            f"{ratios[3 * len(ratios) // 4]:.2f})"
        )
    if "tshark TCP analysis" in runs:
        t = med["tshark TCP analysis"]
        print(
            f"retranscope is {t['wall_s'] / med['retranscope analyze']['wall_s']:.1f}x faster "
            f"than tshark's TCP analysis"
        )
    if args.memory_limit_mb:
        limited = Path(str(out) + "-limited")
        lim = run_limited(analyze_argv(limited), env, args.memory_limit_mb, tmp)
        same = lim["exit"] == 0 and not same_outputs_apart(out, limited)
        print(
            f"inside a {args.memory_limit_mb} MiB memory cgroup: exit {lim['exit']}, "
            f"peak {lim['peak_mb']:.0f} MB, wall {lim['wall_s']:.2f} s, outputs "
            f"{'identical' if same else 'DIFFERENT or missing'}"
            + (f" ({lim['stderr']})" if lim["exit"] else "")
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("captures", nargs="*", type=Path, default=[HERE / "data" / "big.pcap"])
    ap.add_argument("--pairs", type=int, default=7, help="turns of retranscope and tcptrace")
    ap.add_argument("--tshark-runs", type=int, default=3, help="tshark runs (0: none)")
    ap.add_argument(
        "--tshark-max-mb",
        type=int,
        default=400,
        help="skip tshark on captures bigger than this (it needs ~5x in memory)",
    )
    ap.add_argument(
        "--memory-limit-mb",
        type=int,
        default=0,
        help="also analyze inside a memory cgroup of this size (root)",
    )
    ap.add_argument(
        "--analyze-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra arguments for retranscope analyze (last on the line)",
    )
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="time this tree against git revision REV instead, in turns",
    )
    args = ap.parse_args()
    missing = [c for c in args.captures if not c.exists()]
    if missing:
        print(
            f"bench_analyze: {missing[0]} missing: sudo .venv/bin/python bench/make_big_capture.py",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
        if args.baseline:
            paired(args.captures[0], args.baseline, args.pairs, tmp, env, args.analyze_args)
            return 0
        for capture in args.captures:
            bench_capture(capture, args, tmp, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
