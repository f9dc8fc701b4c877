"""One run, analyzed on a worker: a pure function of paths that returns a small result.

``analyze_run`` calls the same ``run_analysis`` as `retranscope analyze` into a scratch
directory, then writes what it wrote, plus a run_id column, into the run's partition of the
dataset (fleet/dataset.py). So the fleet's rows are those of the single-run analysis by
construction. It never raises for a bad run: the result is the run's row, with its status
and error. A worker lost mid-task is the engine's business (Dask runs the task again
elsewhere; the files it writes are the same, under the same names, each written whole).
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from retranscope.errors import BadInput, RetranscopeError
from retranscope.fleet.dataset import TABLES, day_of, write_run_table
from retranscope.schemas.vocabulary import KINDS

#: Bump when what the fleet writes for a run changes: every run is analyzed again.
FLEET_FORMAT = 1

NO_EVENTS_WARNING = (
    "the recording has no events files (the recorder saw no retransmission); "
    "analyzed the capture alone, as `retranscope analyze --pcap` would"
)


@dataclass(frozen=True)
class Job:
    """What a worker needs for one run; every path absolute."""

    dataset: str
    root: str
    path: str
    run_dir: str | None  # the recording directory (run.json), None for a capture alone
    capture: str | None
    run_id: str
    host: str
    started_wall_ns: int | None


@functools.lru_cache(maxsize=1)
def analyzer_version() -> str:
    """The package version and a digest of the code an analysis runs (analyze/, schemas/,
    the shared helpers) and of FLEET_FORMAT: any change there makes every run stale."""
    import retranscope
    import retranscope.analyze
    import retranscope.schemas

    h = hashlib.sha256(f"fleet-format {FLEET_FORMAT}\n".encode())
    dirs = [
        Path(str(m.__file__)).parent
        for m in (retranscope, retranscope.analyze, retranscope.schemas)
    ]
    for d in dirs:
        for f in sorted(d.glob("*.py")):
            if f.name not in ("cli.py", "__main__.py"):
                h.update(f.name.encode() + b"\0" + f.read_bytes())
    try:
        pkg = version("retranscope")
    except PackageNotFoundError:
        pkg = "0+unknown"
    return f"{pkg}+{h.hexdigest()[:12]}"


def analyze_run(job: Job) -> dict:
    """Analyze one run into the dataset; return its runs.parquet row (fleet/dataset.py)."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    row: dict = {
        "run_id": job.run_id,
        "host": job.host,
        "root": job.root,
        "path": job.path,
        "analyzer_version": analyzer_version(),
        "worker": _worker_name(),
        "has_events": False,
        "warnings": [],
    }
    if job.started_wall_ns:
        row["date"] = day_of(job.started_wall_ns)
    try:
        row.update(_analyze(job, row["warnings"]))
        row["status"] = "ok"
    except RetranscopeError as err:
        row["status"] = "bad_input" if err.exit_code == 2 else "failed"
        row["error"] = str(err)
    except Exception as err:  # a bug: keep where it happened, never lose the run
        row["status"] = "failed"
        row["error"] = f"{type(err).__name__}: {err}".splitlines()[0]
        row["traceback"] = traceback.format_exc(limit=-8)
    row["task_s"] = time.perf_counter() - t0
    row["task_cpu_s"] = time.process_time() - cpu0
    row["analyzed_at_ns"] = time.time_ns()
    return row


def _analyze(job: Job, warnings: list[str]) -> dict:
    from retranscope.analyze.run import run_analysis

    events = Path(job.run_dir) if job.run_dir else None
    if events is not None and not any((events / "events").glob("*.parquet")):
        warnings.append(NO_EVENTS_WARNING)
        events = None
    capture = Path(job.capture) if job.capture else None
    with tempfile.TemporaryDirectory(prefix="retranscope-fleet-") as scratch:
        out = Path(scratch)
        # one process a run: the engine runs as many runs at once as it has workers, and
        # a worker may have threads, which a fork (split reading, shard workers) must not
        # run beside
        run_analysis(capture, events, out, jobs=1, decode_jobs=1, warn=warnings.append)
        summary = json.loads((out / "summary.json").read_text())
        started = (
            (summary.get("recording") or {}).get("started_wall_ns")
            or job.started_wall_ns
            or (summary.get("capture") or {}).get("first_ts_ns")
        )
        if not started:
            raise BadInput(
                "no timestamp to date the run by: no run.json start and no packet in the capture"
            )
        date = day_of(int(started))
        written = {}
        for table in TABLES:
            rows = pq.read_table(out / f"{table}.parquet")
            if table == "flows" and "n_data" in rows.column_names:
                written["data_segments"] = pc.sum(rows.column("n_data")).as_py() or 0
            written[f"{table}_schema"] = write_run_table(
                Path(job.dataset), table, job.host, date, job.run_id, rows
            )
            written[f"{table}_rows"] = rows.num_rows
    result = dict(figures(summary), **written, date=date, has_events=events is not None)
    if job.run_dir and not result.get("counters_delta"):
        result["counters_delta"] = _run_json_counters(Path(job.run_dir))
    return result


def figures(summary: dict) -> dict:
    """The runs.parquet figures of one summary.json (absent keys are null)."""
    cap = summary.get("capture") or {}
    rec = summary.get("recording") or {}
    acct = rec.get("accounting") or {}
    match = summary.get("match") or {}
    by_kind = summary.get("by_kind") or {}
    spurious_by_kind = summary.get("spurious_by_kind") or {}
    out = {
        "packets": cap.get("tcp_packets"),
        "capture_records": cap.get("records"),
        "capture_truncated": cap.get("truncated"),
        "capture_if_drops": cap.get("if_drops"),
        "tcpdump_dropped": (rec.get("tcpdump") or {}).get("dropped_by_kernel"),
        "first_ts_ns": cap.get("first_ts_ns"),
        "last_ts_ns": cap.get("last_ts_ns"),
        "started_wall_ns": rec.get("started_wall_ns"),
        "ended_wall_ns": rec.get("ended_wall_ns"),
        "kernel_release": rec.get("kernel_release"),
        "retransmissions": summary.get("retransmissions"),
        "spurious": summary.get("spurious"),
        "events": match.get("events"),
        "events_matched": match.get("events_matched"),
        "frames_without_event": match.get("frames_without_event"),
        "disagreements": match.get("disagreements"),
        "events_lost_in_kernel": rec.get("events_lost_in_kernel"),
        "event_segments": acct.get("event_segments"),
        "unreported_segments": acct.get("unreported_segments"),
        "kernel_retrans_segs": acct.get("kernel_retrans_segs"),
        "counters_delta": _int_map(rec.get("counters_delta")),
        "summary_json": json.dumps(summary),  # key order kept: the report shows it
    }
    for k in KINDS:
        out[k] = int(by_kind.get(k, 0))
        out[f"spurious_{k}"] = int(spurious_by_kind.get(k, 0))
    return out


def _int_map(d) -> dict | None:
    if not isinstance(d, dict):
        return None
    return {str(k): int(v) for k, v in d.items() if isinstance(v, (int, float))}


def _run_json_counters(run_dir: Path) -> dict | None:
    try:
        return _int_map(json.loads((run_dir / "run.json").read_text()).get("counters_delta"))
    except (OSError, ValueError):
        return None


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return socket.gethostname()
