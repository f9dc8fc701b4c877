"""The fleet at scale: a simulated fleet of 1,000 runs made from the lab corpus (each run its
own host, shifted times, rewritten addresses: fleet/simulate.py), then

- `fleet analyze` with 1 and 2 LocalCluster workers, paired (1 2 1 2 ...), median: runs/s,
  packets/s, and the per-core throughput from the tasks' own time;
- scheduler overhead per task: empty tasks through the same submit/as_completed path, and
  what the real runs spent outside their tasks;
- an incremental re-run with nothing new (target: under 5 s for 1,000 runs);
- DuckDB latency of the five ready questions over the whole dataset (target: each under 1 s);
- optionally the fleet report (--report).

The machine is shared: the load average is printed beside every measurement.

    .venv/bin/python bench/bench_fleet.py                      # everything, 1,000 runs
    .venv/bin/python bench/bench_fleet.py --runs 200 --pairs 2 # quicker
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from retranscope.fleet import engine
from retranscope.fleet.query import connect, resolve
from retranscope.fleet.questions import QUESTIONS
from retranscope.fleet.simulate import build_fleet

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "corpus"


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def fleet_cli(*args: str) -> tuple[float, str]:
    """Wall time of `retranscope fleet ...` as a user runs it (a fresh process)."""
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "retranscope", "fleet", *args], capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"fleet {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return wall, p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""


def build(root: Path, n: int) -> float:
    originals = sorted(p for p in CORPUS.iterdir() if (p / "run.json").exists())
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    build_fleet(originals, root, n)
    return time.perf_counter() - t0


def measure_analyze(root: Path, dataset: Path, pairs: int) -> dict:
    walls: dict[int, list[float]] = {1: [], 2: []}
    task_s: dict[int, list[float]] = {1: [], 2: []}
    task_cpu: dict[int, list[float]] = {1: [], 2: []}
    packets = runs = 0
    for i in range(pairs):
        for workers in (1, 2):
            wall, line = fleet_cli(
                "analyze",
                str(root),
                "--out",
                str(dataset),
                "--force",
                "--quiet",
                "--workers",
                str(workers),
            )
            t = pq.read_table(
                dataset / "runs.parquet", columns=["status", "packets", "task_s", "task_cpu_s"]
            ).to_pandas()
            assert (t["status"] == "ok").all(), t[t["status"] != "ok"]
            runs, packets = len(t), int(t["packets"].sum())
            walls[workers].append(wall)
            task_s[workers].append(float(t["task_s"].sum()))
            task_cpu[workers].append(float(t["task_cpu_s"].sum()))
            print(
                f"  pair {i + 1}, {workers} worker(s): {wall:.1f} s ({runs / wall:.1f} runs/s)"
                f"  [{load()}]",
                flush=True,
            )
    out = {"runs": runs, "packets": packets}
    for w in (1, 2):
        med = statistics.median(walls[w])
        out[f"workers_{w}"] = {
            "wall_s": walls[w],
            "median_s": med,
            "runs_per_s": runs / med,
            "packets_per_s": packets / med,
            "task_s_median": statistics.median(task_s[w]),
            "task_cpu_s_median": statistics.median(task_cpu[w]),
            # what the tasks alone cost a core, in CPU time (the machine is shared: wall
            # time inside a task includes waiting for the CPU): the cluster size for a load
            "per_core_runs_per_s": runs / statistics.median(task_cpu[w]),
            "per_core_packets_per_s": packets / statistics.median(task_cpu[w]),
        }
    out["paired_speedup"] = [a / b for a, b in zip(walls[1], walls[2])]
    out["speedup_median"] = statistics.median(out["paired_speedup"])
    # Outside the tasks: cluster start, scheduling, result transfer, commits, idle tail.
    for w in (1, 2):
        d = out[f"workers_{w}"]
        d["outside_tasks_per_run_ms"] = 1000 * (d["median_s"] * w - d["task_s_median"]) / runs
    return out


def cost_model(dataset: Path) -> dict:
    """task CPU s = fixed + per_packet * packets, least squares over the runs: what a run costs
    a worker core whatever its size, and what each packet adds (for sizing a cluster to
    runs larger than the lab's)."""
    t = pq.read_table(dataset / "runs.parquet", columns=["packets", "task_cpu_s"]).to_pandas()
    x, y = t["packets"].to_numpy(float), t["task_cpu_s"].to_numpy(float)
    slope, fixed = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (fixed + slope * x)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return {
        "fixed_s_per_run": float(fixed),
        "s_per_packet": float(slope),
        "r2": float(r2),
        "packets_per_run_mean": float(x.mean()),
        "packets_per_run_max": float(x.max()),
        "task_cpu_s_mean": float(y.mean()),
    }


def dataset_bytes(dataset: Path) -> dict:
    out = {}
    for table in ("retransmits", "flows"):
        files = list((dataset / table).rglob("*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        size = sum(f.stat().st_size for f in files)
        out[table] = {"files": len(files), "rows": rows, "bytes": size}
    out["runs_parquet_bytes"] = (dataset / "runs.parquet").stat().st_size
    return out


def _noop(i: int) -> dict:
    return {"run_id": str(i), "status": "ok"}


def measure_scheduler(n: int) -> dict:
    """Empty tasks through the fleet's own path: submit each, gather as completed."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # shutdown chatter
    with engine.local(2) as client:
        client.submit(_noop, -1, pure=False).result()  # warm: workers imported
        t0 = time.perf_counter()
        futs = [client.submit(_noop, i, key=f"noop-{i}", pure=False) for i in range(n)]
        for fut in engine.as_completed(futs):
            fut.result()
        bulk = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(200):
            client.submit(_noop, i, key=f"one-{i}", pure=False).result()
        one = (time.perf_counter() - t0) / 200
    return {
        "tasks": n,
        "per_task_ms_in_bulk": 1000 * bulk / n,
        "round_trip_ms_one_at_a_time": 1000 * one,
    }


def measure_incremental(root: Path, dataset: Path, repeats: int) -> dict:
    walls = []
    for _ in range(repeats):
        wall, line = fleet_cli("analyze", str(root), "--out", str(dataset), "--quiet")
        assert " 0 analyzed" in line, line
        walls.append(wall)
    return {"wall_s": walls, "median_s": statistics.median(walls), "last_line": line}


def measure_queries(dataset: Path, repeats: int) -> dict:
    """Each question from a fresh connection (views made again), interleaved, median."""
    times: dict[str, list[float]] = {q: [] for q in QUESTIONS}
    rows: dict[str, int] = {}
    for _ in range(repeats):
        for name in QUESTIONS:
            t0 = time.perf_counter()
            sql = resolve(name)
            con = connect(dataset, sql)
            rows[name] = len(con.execute(sql).fetchall())
            times[name].append(time.perf_counter() - t0)
            con.close()
    cli = {}
    for name in QUESTIONS:  # as a user runs it: a fresh process, imports included
        cli[name] = fleet_cli(
            "query", str(dataset), name, "--out", str(dataset.parent / f"{name}.csv")
        )[0]
    return {
        name: {
            "median_s": statistics.median(times[name]),
            "all_s": times[name],
            "rows": rows[name],
            "cli_process_s": cli[name],
        }
        for name in QUESTIONS
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=3, help="paired 1/2-worker analyses")
    ap.add_argument("--work", type=Path, default=Path("/tmp/retranscope-bench-fleet"))
    ap.add_argument("--report", action="store_true", help="also time `fleet report`")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    root, dataset = args.work / "root", args.work / "dataset"
    print(f"cores: {os.cpu_count()}  [{load()}]")
    built_s = build(root, args.runs)
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"built {args.runs} runs in {built_s:.1f} s ({size / 1e6:.0f} MB)  [{load()}]")
    if dataset.exists():
        shutil.rmtree(dataset)
    figures: dict = {"runs": args.runs, "build_s": built_s, "fleet_bytes": size}
    print("fleet analyze, paired 1 and 2 workers:")
    figures["analyze"] = measure_analyze(root, dataset, args.pairs)
    a = figures["analyze"]
    for w in (1, 2):
        d = a[f"workers_{w}"]
        print(
            f"  {w} worker(s): median {d['median_s']:.1f} s, {d['runs_per_s']:.1f} runs/s, "
            f"{d['packets_per_s'] / 1e3:.0f}k packets/s; per core (task CPU time) "
            f"{d['per_core_runs_per_s']:.1f} runs/s, "
            f"{d['per_core_packets_per_s'] / 1e3:.0f}k packets/s; outside tasks "
            f"{d['outside_tasks_per_run_ms']:.1f} ms/run"
        )
    print(
        f"  speedup 2 vs 1 worker: median of pairs {a['speedup_median']:.2f}x "
        f"({', '.join(f'{x:.2f}' for x in a['paired_speedup'])})"
    )
    figures["cost_model"] = m = cost_model(dataset)
    print(
        f"  cost per run on a worker core: {1000 * m['fixed_s_per_run']:.0f} ms + "
        f"{1e6 * m['s_per_packet']:.2f} us/packet (R2 {m['r2']:.2f}; runs of "
        f"{m['packets_per_run_mean']:.0f} packets on average)"
    )
    figures["dataset"] = d = dataset_bytes(dataset)
    for table in ("retransmits", "flows"):
        print(
            f"  {table}: {d[table]['files']} files, {d[table]['rows']} rows, "
            f"{d[table]['bytes'] / 1e6:.1f} MB"
        )
    figures["scheduler"] = measure_scheduler(2000)
    s = figures["scheduler"]
    print(
        f"scheduler: {s['per_task_ms_in_bulk']:.2f} ms per empty task in bulk (2 workers), "
        f"{s['round_trip_ms_one_at_a_time']:.2f} ms round trip one at a time  [{load()}]"
    )
    figures["incremental"] = measure_incremental(root, dataset, 5)
    print(
        f"incremental, nothing new: median {figures['incremental']['median_s']:.2f} s "
        f"({figures['incremental']['last_line']})  [{load()}]"
    )
    figures["queries"] = measure_queries(dataset, 7)
    for name, q in figures["queries"].items():
        print(
            f"query {name}: median {1000 * q['median_s']:.0f} ms in-process, "
            f"{q['cli_process_s']:.2f} s as a command, {q['rows']} rows"
        )
    print(f"  [{load()}]")
    if args.report:
        out = args.work / "site" / "fleet.html"
        first = fleet_cli("report", str(dataset), "--out", str(out))
        again = fleet_cli("report", str(dataset), "--out", str(out))
        figures["report"] = {
            "first_s": first[0],
            "again_s": again[0],
            "html_bytes": out.stat().st_size,
        }
        print(
            f"fleet report: {first[0]:.1f} s making every run's report, {again[0]:.1f} s "
            f"after; {out.stat().st_size / 1e3:.0f} kB  [{load()}]"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
