"""The fleet dataset on disk, declared once: where each run's rows go, and the runs table.

    DATASET/retransmits/host=H/date=D/<run_id>.parquet   what `analyze` wrote, plus run_id
    DATASET/flows/host=H/date=D/<run_id>.parquet         likewise
    DATASET/runs.parquet                                 one row per run (RUNS_SCHEMA)

``host`` and ``date`` exist only as directory names (hive partitioning: DuckDB, pyarrow and
Spark read them as columns); ``date`` is the UTC day the run started. A partition value is
percent-encoded where it holds anything but letters, digits and ``-_.`` (readers decode it).

runs.parquet is the commit log: a run's data files count once its row says ``ok`` with the
same host and date (fleet/query.py's views join on it). Files of a run being rewritten, or
left by a process killed between writing them and committing, are invisible until then.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

from retranscope.errors import SchemaMismatch
from retranscope.fileio import write_atomic
from retranscope.schemas.vocabulary import KINDS

#: The per-run tables `retranscope analyze` writes, carried into the dataset as they are.
TABLES = ("retransmits", "flows")
RUNS_FILE = "runs.parquet"
RUNS_SCHEMA_NAME = b"retranscope.fleet.runs"
RUNS_SCHEMA_VERSION = 1

#: Run status: ``ok`` analyzed; ``bad_input`` the run's files are unusable (the analyzer's
#: BadInput: truncated capture, wrong schema...), settled until its inputs change;
#: ``failed`` anything else (a bug, a worker lost three times), retried on the next run.
STATUSES = ("ok", "bad_input", "failed")
SETTLED = ("ok", "bad_input")

_PLAIN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def _field(name: str, typ: pa.DataType, doc: str) -> pa.Field:
    return pa.field(name, typ, metadata={b"doc": doc.encode()})


_BOOKKEEPING = [
    _field(
        "run_id",
        pa.string(),
        "the recorder's run_id (run.json); for a capture alone, "
        "'cap-' and a digest of its size, first and last 64 KiB",
    ),
    _field("host", pa.string(), "run.json's host, or what --host-from found in the path"),
    _field("date", pa.date32(), "UTC day the run started (recording start, else first packet)"),
    _field("status", pa.string(), "ok | bad_input | failed"),
    _field("error", pa.string(), "one line: what was wrong and what to do"),
    _field("traceback", pa.string(), "for a failure that is a bug: where it happened"),
    _field("root", pa.string(), "ROOT the run was found under (absolute)"),
    _field("path", pa.string(), "the run directory, or the capture alone, relative to root"),
    _field("capture", pa.string(), "capture file, relative to root (null: none)"),
    _field("has_events", pa.bool_(), "analyzed with the recorder's events"),
    _field(
        "duplicate_paths",
        pa.list_(pa.string()),
        "other places under root holding the same run_id (analyzed once, here)",
    ),
    _field("fingerprint", pa.string(), "digest of the inputs' names, sizes and mtimes"),
    _field("analyzer_version", pa.string(), "package version + digest of the analyzer's code"),
    _field("analyzed_at_ns", pa.int64(), "wall clock when the task finished"),
    _field("task_s", pa.float64(), "seconds the task took on its worker (wall clock)"),
    _field("task_cpu_s", pa.float64(), "CPU seconds of the worker process during the task"),
    _field("worker", pa.string(), "the Dask worker that ran the task"),
    _field("retransmits_rows", pa.int64(), "rows written to retransmits/ for this run"),
    _field("flows_rows", pa.int64(), "rows written to flows/ for this run"),
    _field("retransmits_schema", pa.string(), "digest of its retransmits file's columns"),
    _field("flows_schema", pa.string(), "digest of its flows file's columns"),
]

#: Summary figures of each run (from its summary.json; null for a run that failed).
_FIGURES = [
    _field("packets", pa.int64(), "TCP packets in the capture"),
    _field("capture_records", pa.int64(), "records in the capture"),
    _field("capture_truncated", pa.bool_(), "the capture ends inside a record"),
    _field("capture_if_drops", pa.int64(), "drops the capture file reports"),
    _field("tcpdump_dropped", pa.int64(), "packets tcpdump says the kernel dropped"),
    _field("first_ts_ns", pa.int64(), "first packet, wall clock"),
    _field("last_ts_ns", pa.int64(), "last packet, wall clock"),
    _field("started_wall_ns", pa.int64(), "recording start (run.json)"),
    _field("ended_wall_ns", pa.int64(), "recording end (run.json)"),
    _field("kernel_release", pa.string(), "run.json kernel_release"),
    _field("data_segments", pa.int64(), "data segments in the capture (flows' n_data, summed)"),
    _field("retransmissions", pa.int64(), "rows of retransmits"),
    *[_field(k, pa.int64(), f"retransmissions of kind {k}") for k in KINDS],
    _field("spurious", pa.int64(), "retransmissions shown spurious (D-SACK, timestamps)"),
    *[_field(f"spurious_{k}", pa.int64(), f"spurious retransmissions of kind {k}") for k in KINDS],
    _field("events", pa.int64(), "kernel events read"),
    _field("events_matched", pa.int64(), "kernel events matched to a frame"),
    _field("frames_without_event", pa.int64(), "retransmitted frames without a kernel event"),
    _field("disagreements", pa.int64(), "capture verdict differs from the kernel's reason"),
    _field("events_lost_in_kernel", pa.int64(), "events lost to a full kernel buffer"),
    _field("event_segments", pa.int64(), "segments the kernel events reported (accounting)"),
    _field("unreported_segments", pa.int64(), "segments resent without an event (accounting)"),
    _field("kernel_retrans_segs", pa.int64(), "RetransSegs over the recording (accounting)"),
    _field(
        "counters_delta",
        pa.map_(pa.string(), pa.int64()),
        "kernel TCP counters over the recording, e.g. counters_delta['Tcp:RetransSegs']",
    ),
    _field("warnings", pa.list_(pa.string()), "the analyzer's warnings"),
    _field("summary_json", pa.string(), "the run's summary.json, whole"),
]

RUNS_SCHEMA = pa.schema(_BOOKKEEPING + _FIGURES).with_metadata(
    {b"schema": RUNS_SCHEMA_NAME, b"schema_version": str(RUNS_SCHEMA_VERSION).encode()}
)


def partition_value(value: str) -> str:
    """A hive partition value for a directory name: percent-encoded beyond ``-_.``
    letters and digits, and never ``.``-led (a hidden or parent directory)."""
    enc = quote(value, safe="-_.")
    return "%2E" + enc[1:] if enc.startswith(".") else enc


def is_plain_id(value: str) -> bool:
    """Whether ``value`` can name a file as it is (run ids)."""
    return bool(_PLAIN_ID.fullmatch(value))


def day_of(wall_ns: int) -> dt.date:
    return dt.datetime.fromtimestamp(wall_ns / 1e9, tz=dt.timezone.utc).date()


def run_file(dataset: Path, table: str, host: str, date: dt.date, run_id: str) -> Path:
    return (
        dataset
        / table
        / f"host={partition_value(host)}"
        / f"date={date.isoformat()}"
        / f"{run_id}.parquet"
    )


def schema_digest(schema: pa.Schema) -> str:
    """Names and types of the columns: runs whose files share it need no union by name."""
    text = "\n".join(f"{f.name}: {f.type}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_run_table(
    dataset: Path, table: str, host: str, date: dt.date, run_id: str, rows: pa.Table
) -> str:
    """One run's rows of ``table``, with a run_id column, written atomically; returns the
    digest of the columns written."""
    path = run_file(dataset, table, host, date, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = rows.append_column("run_id", pa.array([run_id] * rows.num_rows, pa.string()))
    write_atomic(path, lambda p: pq.write_table(rows, p))
    return schema_digest(rows.schema)


def remove_run_files(dataset: Path, host: str, date: dt.date, run_id: str) -> None:
    """A run's data files at a partition it no longer belongs to (its host or day changed)."""
    for table in TABLES:
        run_file(dataset, table, host, date, run_id).unlink(missing_ok=True)


def read_runs(dataset: Path) -> list[dict]:
    """The rows of runs.parquet ([] if the dataset is new)."""
    path = dataset / RUNS_FILE
    if not path.exists():
        return []
    meta = pq.read_schema(path).metadata or {}
    if meta.get(b"schema") != RUNS_SCHEMA_NAME:
        raise SchemaMismatch(
            f"{path}: not a retranscope fleet runs table; give --out a new "
            "directory or one written by `retranscope fleet analyze`"
        )
    return pq.read_table(path).to_pylist()


def write_runs(dataset: Path, rows: list[dict]) -> None:
    """runs.parquet, whole, atomically: sorted by host, date, run_id."""
    rows = sorted(
        rows, key=lambda r: (r.get("host") or "", r.get("date") or dt.date.min, r["run_id"])
    )
    table = pa.Table.from_pylist(
        [{f.name: r.get(f.name) for f in RUNS_SCHEMA} for r in rows], schema=RUNS_SCHEMA
    )
    dataset.mkdir(parents=True, exist_ok=True)
    write_atomic(dataset / RUNS_FILE, lambda p: pq.write_table(table, p))
