"""How the spill's 4-tuple numbering (analyze/spill.TupleNumbers) scales with connections.

    .venv/bin/python bench/bench_tuple_numbers.py [--tuples N] [--chunks K] [--baseline REV]

Feeds K chunks of 65,536 rows (the reader's chunk size) whose 4-tuples come from a window
sliding over N distinct tuples (each chunk brings ~N/K new ones, the rest seen before: a
capture of N connections, each a few chunks long) through TupleNumbers.code, as the spill
does, and prints the time. With --baseline, the same at a git revision, in turns (A B A
B), the median of 3 each. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHUNK_ROWS = 65_536


def feed(n_tuples: int, n_chunks: int) -> tuple[int, float]:
    """(tuples numbered, seconds) for this interpreter's retranscope."""
    import numpy as np

    from retranscope.analyze.flows import _mix64
    from retranscope.analyze.spill import TupleNumbers

    rng = np.random.default_rng(1)
    numbers = TupleNumbers()
    step = max(1, n_tuples // n_chunks)
    elapsed = 0.0
    for c in range(n_chunks):
        ids = c * step + rng.integers(0, 2 * step, CHUNK_ROWS)
        canon = [
            np.zeros(CHUNK_ROWS, np.uint64),
            (ids // 60_000).astype(np.uint64),
            (ids % 60_000).astype(np.uint16),
            np.zeros(CHUNK_ROWS, np.uint64),
            np.full(CHUNK_ROWS, 7, np.uint64),
            np.full(CHUNK_ROWS, 443, np.uint16),
        ]
        h = _mix64(canon)
        t0 = time.perf_counter()
        numbers.code(h, canon, np.ones(CHUNK_ROWS, dtype=bool))
        elapsed += time.perf_counter() - t0
    return numbers.n, elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tuples", type=int, default=1_000_000)
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--baseline", help="also time this git revision, in turns")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a timed run
    args = ap.parse_args()
    if args.one:
        n, s = feed(args.tuples, args.chunks)
        print(f"{n} {s:.3f}")
        return 0
    if not args.baseline:
        n, s = feed(args.tuples, args.chunks)
        print(f"{n:,} tuples over {args.chunks} chunks of {CHUNK_ROWS:,} rows: {s:.2f} s")
        return 0
    sys.path.insert(0, str(HERE))
    from bench_analyze import package_tree

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        src.mkdir()
        git = subprocess.Popen(
            ["git", "-C", str(HERE.parent), "archive", args.baseline], stdout=subprocess.PIPE
        )
        subprocess.run(["tar", "-x", "-C", str(src)], stdin=git.stdout, check=True)
        git.stdout.close()
        git.wait()
        sides = {
            "this tree": package_tree(HERE.parent, Path(tmp, "this")),
            f"baseline {args.baseline}": package_tree(src, Path(tmp, "base")),
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(3):
            for name, site in sides.items():
                done = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--one", "--tuples",
                     str(args.tuples), "--chunks", str(args.chunks)],
                    env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                    cwd=tmp, capture_output=True, text=True, check=True,
                )  # fmt: skip
                n, s = done.stdout.split()
                times[name].append(float(s))
        for name, ts in times.items():
            print(f"{name:24} {n:>10} tuples: median {sorted(ts)[1]:.2f} s over 3 runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
