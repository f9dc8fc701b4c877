"""Run the capture reader over every file of a directory of third-party captures and
compare the TCP packets it decodes with tshark's, file by file.

    .venv/bin/python bench/reader_vs_tshark.py DIR [DIR...] [--old OLD_READER.py] [--json OUT]

For each file: whether the reader raised something other than a RetranscopeError (a
traceback) or ran past the time limit (a hang), the TCP packets it decoded, and the
frames tshark shows with a TCP header (``-Y "tcp && !icmp && !icmpv6"``: TCP quoted
inside ICMP errors is not a segment). ``--old`` runs a second reader module (a file
defining read_capture, e.g. the reader of an earlier commit) for the before/after
count of tracebacks. Files tshark cannot read either are counted apart. Third-party
captures are read where they are: nothing is copied into the repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import traceback
from collections import Counter
from pathlib import Path

from retranscope.errors import RetranscopeError

TIMEOUT_S = 30
SUFFIXES = (".pcap", ".pcapng", ".cap", ".gz", ".zst", ".xz", ".bz2", ".dump", ".trace")
TSHARK_FILTER = "tcp && !icmp && !icmpv6"


class _Hang(Exception):
    pass


def _alarm(_sig, _frame):
    raise _Hang()


def run_reader(read, path: Path) -> dict:
    """One file through a reader: {"tcp": packets} or {"error": one line} or
    {"traceback": text} or {"hang": True}."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    try:
        cap = read(path)
        meta = cap.meta
        out = {"tcp": int(meta.tcp_packets)}
        for key in ("skipped_other", "undecoded", "encapsulated", "linktypes"):
            if hasattr(meta, key):
                out[key] = getattr(meta, key)
        return out
    except _Hang:
        return {"hang": True}
    except RetranscopeError as err:
        return {"error": str(err)}
    except Exception:
        return {"traceback": traceback.format_exc(limit=4)}
    finally:
        signal.alarm(0)


def tshark_tcp(path: Path) -> int | None:
    try:
        proc = subprocess.run(
            [
                "tshark",
                "-n",
                "-r",
                str(path),
                "-Y",
                TSHARK_FILTER,
                "-T",
                "fields",
                "-e",
                "frame.number",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 and not lines:
        return None
    return len(lines)


def load_reader(path: str | None):
    if path is None:
        from retranscope.analyze.capture import read_capture

        return lambda p: read_capture(p, jobs=1)
    spec = importlib.util.spec_from_file_location("old_reader", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_reader"] = mod
    spec.loader.exec_module(mod)
    return mod.read_capture


def captures_in(dirs: list[str]) -> list[Path]:
    files = []
    for d in dirs:
        for root, _, names in os.walk(d):
            files += [Path(root) / n for n in names if n.lower().endswith(SUFFIXES)]
    return sorted(files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--old", help="a reader module to compare (before/after tracebacks)")
    ap.add_argument("--json", help="write per-file results here")
    args = ap.parse_args(argv)
    new = load_reader(None)
    old = load_reader(args.old) if args.old else None
    rows = []
    for path in captures_in(args.dirs):
        row = {"file": str(path), "new": run_reader(new, path), "tshark": tshark_tcp(path)}
        if old is not None:
            row["old"] = run_reader(old, path)
        rows.append(row)
    report(rows, old is not None)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


def report(rows: list[dict], with_old: bool) -> None:
    def count(which, key):
        return sum(1 for r in rows if key in r[which])

    print(f"files: {len(rows)}")
    for which in (["old"] if with_old else []) + ["new"]:
        print(
            f"  {which}: tracebacks {count(which, 'traceback')}, hangs {count(which, 'hang')}"
            f", refused with one line {count(which, 'error')}, read {count(which, 'tcp')}"
        )
    both = [r for r in rows if r["tshark"] is not None and "tcp" in r["new"]]
    t_total = sum(r["tshark"] for r in both)
    n_total = sum(min(r["new"]["tcp"], r["tshark"]) for r in both)
    over = sum(max(0, r["new"]["tcp"] - r["tshark"]) for r in both)
    print(
        f"files both read: {len(both)}; TCP packets: tshark {t_total}, reader {n_total} "
        f"of those ({100 * n_total / max(t_total, 1):.1f}%), reader beyond tshark {over}"
    )
    if with_old:
        both_old = [r for r in both if "tcp" in r["old"]]
        o_total = sum(min(r["old"]["tcp"], r["tshark"]) for r in both_old)
        t_old = sum(r["tshark"] for r in both_old)
        print(
            f"  old reader on the files it read: {o_total} of tshark's {t_old} "
            f"({100 * o_total / max(t_old, 1):.1f}%)"
        )
    gaps = sorted(both, key=lambda r: r["new"]["tcp"] - r["tshark"])
    print("largest gaps (reader - tshark):")
    for r in gaps[:15]:
        d = r["new"]["tcp"] - r["tshark"]
        if d >= 0:
            break
        why = {k: v for k, v in r["new"].items() if k in ("skipped_other", "undecoded") and v}
        print(f"  {d:+6d}  {Path(r['file']).name}  lt={r['new'].get('linktypes')} {why}")
    refused = Counter(r["new"]["error"].split(":")[-1][:60] for r in rows if "error" in r["new"])
    print("refusals by message:", refused.most_common(8))
    for r in rows:
        if "traceback" in r["new"] or "hang" in r["new"]:
            print("FAIL", r["file"], r["new"].get("traceback", "hang")[-300:])


if __name__ == "__main__":
    sys.exit(main())
