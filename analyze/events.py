"""Reading the recorder's output (I/O edge): events/*.parquet and run.json.

Refuses Parquet of another schema or schema version with one clear line, and files
that are not Parquet at all; never reads a partial table as if complete.

The events become a table of analyze/table.py (numpy columns; Nullable where the schema
allows nulls; text as object arrays), the type every stage of analyze/ works on, with the
addresses also as the packet table's numeric halves (``saddr_hi``/``saddr_lo``, ...):
each distinct address is parsed once here, and the join compares numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retranscope.analyze.table import Nullable, Table, take, to_pandas
from retranscope.errors import BadInput, SchemaMismatch
from retranscope.fileio import read_arrow_stream
from retranscope.schemas.events import (
    EVENT_SCHEMA,
    EVENTS_DIR,
    JOURNAL_SUFFIX,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    event_files,
)
from retranscope.schemas.packets import addr_from_str


@dataclass
class Events:
    table: Table  # one row per event, in CLOCK_MONOTONIC order
    run: dict = field(default_factory=dict)  # run.json, {} if absent
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def frame(self):
        """The events as a pandas DataFrame (null-holding columns as pandas' nullable
        dtypes): for tests, benchmarks and notebooks, not the analysis."""
        return to_pandas(self.table)


def _check_schema(path: Path, schema: pa.Schema) -> None:
    md = schema.metadata or {}
    name = md.get(b"schema", b"").decode()
    version = md.get(b"schema_version", b"").decode()
    if name != SCHEMA_NAME:
        raise SchemaMismatch(
            f"{path}: not a retranscope events file (schema {name or 'none'}); "
            "give the directory written by `retranscope record --out`"
        )
    if version != str(SCHEMA_VERSION):
        raise SchemaMismatch(
            f"{path}: events schema version {version}, this retranscope reads "
            f"version {SCHEMA_VERSION}; analyze it with the retranscope that "
            "recorded it, or record again"
        )
    missing = [f.name for f in EVENT_SCHEMA if f.name not in schema.names]
    if missing:
        raise SchemaMismatch(f"{path}: columns missing: {', '.join(missing)}")


def read_event_files(path: Path) -> tuple[list[pa.Table], list[Path], list[str]]:
    """The tables of a recording's event files, in file order, with warnings: closed
    Parquet files, then the journal (Arrow IPC stream) a running or killed recorder
    writes, up to its last complete batch. ``path``: the recording, its events/ folder,
    or one file."""
    if path.is_dir():
        folder = path / EVENTS_DIR if (path / EVENTS_DIR).is_dir() else path
        parquet, journals = event_files(folder)
        if not parquet and not journals:
            parquet = sorted(folder.glob("*.parquet"))
        if not parquet and not journals:
            return [], [], []
    elif path.name.endswith(JOURNAL_SUFFIX):
        parquet, journals = [], [path]
    else:
        parquet, journals = [path], []
    # A running recorder may convert a journal between the listing and the reading.
    converted = [f.with_suffix(".parquet") for f in journals if not f.exists()]
    parquet += [f for f in converted if f.exists()]
    journals = [f for f in journals if f.exists()]
    tables, warnings = [], []
    for f in parquet:
        try:
            schema = pq.read_schema(f)
        except (OSError, pa.ArrowInvalid) as exc:
            first_line = str(exc).splitlines()[0]
            raise BadInput(f"{f}: not a readable Parquet file ({first_line})") from exc
        _check_schema(f, schema)
        tables.append(
            pq.read_table(f, schema=EVENT_SCHEMA.remove_metadata().with_metadata(schema.metadata))
        )
    for f in journals:
        table, clean = read_arrow_stream(f)
        if table is None:
            warnings.append(f"{f.name}: an events journal without a complete batch (skipped)")
            continue
        _check_schema(f, table.schema)
        tables.append(
            table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA.with_metadata(table.schema.metadata))
        )
        warnings.append(
            f"{f.name}: {table.num_rows} events read from the journal of a "
            "recorder still running or stopped uncleanly"
            + ("" if clean else ", up to its last complete batch (it ends mid-write)")
        )
    if not tables and (parquet or journals):
        raise BadInput(f"{path}: no complete events in its files")
    return tables, parquet + journals, warnings


def read_events(path: str | Path) -> Events:
    path = Path(path)
    if not path.exists():
        raise BadInput(f"no such file or directory: {path}")
    run: dict = {}
    if path.is_dir():
        run_file = path / "run.json"
        if run_file.exists():
            try:
                run = json.loads(run_file.read_text())
            except (OSError, ValueError) as exc:
                raise BadInput(f"{run_file}: unreadable run metadata ({exc})") from exc
    tables, files, warnings = read_event_files(path)
    if not tables:
        # A quiet host: the recorder ran, wrote run.json and saw no retransmission, so it
        # made no events file. Only a run.json that says so stands in for the files.
        if not (run.get("complete") and run.get("events_written") == 0):
            raise BadInput(
                f"{path}: no events-*.parquet files; give the directory written by "
                "`retranscope record --out`"
            )
        tables = [EVENT_SCHEMA.empty_table()]
    table = pa.concat_tables(tables, promote_options="none") if len(tables) > 1 else tables[0]
    if run:
        if run.get("schema_version") not in (None, SCHEMA_VERSION):
            raise SchemaMismatch(
                f"{path}/run.json: schema version {run.get('schema_version')},"
                f" this retranscope reads {SCHEMA_VERSION}"
            )
        if not run.get("complete", False):
            warnings.append(
                f"the recording did not end cleanly (status: {run.get('status')}); "
                "events after its last write to disk are missing"
            )
        lost = run.get("events_lost_in_kernel") or 0
        if lost:
            warnings.append(f"{lost} events were lost in the kernel buffer while recording")
        unseen = (run.get("accounting") or {}).get("unreported_segments") or 0
        if unseen:
            warnings.append(
                f"the kernel retransmitted {unseen} segments that no event reported "
                "(it ran no probe for them; see summary.json recording.accounting)"
            )
    events = events_table(table)
    return Events(table=events, run=run, files=[str(f) for f in files], warnings=warnings)


def events_table(table: pa.Table) -> Table:
    """An events Arrow table -> analyze/table.py's type, sorted by ts_mono_ns (stable),
    with numeric address halves beside the text."""
    out: Table = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            # large_string: what a table that went through pandas' Arrow-backed strings has
            out[name] = np.array(col.to_pylist(), dtype=object)
        elif pa.types.is_null(col.type):
            out[name] = Nullable(np.zeros(len(col), np.int64), np.zeros(len(col), bool))
        elif col.null_count:
            valid = col.is_valid().to_numpy(zero_copy_only=False)
            values = col.fill_null(0).to_numpy()
            out[name] = Nullable(values, valid)
        else:
            out[name] = col.to_numpy()
    for side in ("saddr", "daddr"):
        out[f"{side}_hi"], out[f"{side}_lo"] = address_halves(out[side])
    return take(out, np.argsort(out["ts_mono_ns"], kind="stable"))


def address_halves(text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Addresses as text -> the packet table's (hi, lo) uint64 halves, each distinct
    address parsed once."""
    uniq, codes = np.unique(text.astype(str), return_inverse=True)
    parsed = np.array([addr_from_str(a)[:2] for a in uniq.tolist()], dtype=np.uint64).reshape(-1, 2)
    if not len(uniq):
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    return parsed[codes, 0], parsed[codes, 1]
