"""Reading the recorder's output (I/O edge): events/*.parquet and run.json.

Refuses Parquet of another schema or schema version with one clear line, and files
that are not Parquet at all; never reads a partial table as if complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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


@dataclass
class Events:
    table: pd.DataFrame
    run: dict = field(default_factory=dict)  # run.json, {} if absent
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _check_schema(path: Path, schema: pa.Schema) -> None:
    md = schema.metadata or {}
    name = md.get(b"schema", b"").decode()
    version = md.get(b"schema_version", b"").decode()
    if name != SCHEMA_NAME:
        raise SchemaMismatch(f"{path}: not a retranscope events file (schema {name or 'none'}); "
                             "give the directory written by `retranscope record --out`")
    if version != str(SCHEMA_VERSION):
        raise SchemaMismatch(f"{path}: events schema version {version}, this retranscope reads "
                             f"version {SCHEMA_VERSION}; analyze it with the retranscope that "
                             "recorded it, or record again")
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
            raise BadInput(f"{path}: no events-*.parquet files; give the directory written by "
                           "`retranscope record --out`")
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
        tables.append(pq.read_table(f, schema=EVENT_SCHEMA.remove_metadata()
                                    .with_metadata(schema.metadata)))
    for f in journals:
        table, clean = read_arrow_stream(f)
        if table is None:
            warnings.append(f"{f.name}: an events journal without a complete batch (skipped)")
            continue
        _check_schema(f, table.schema)
        tables.append(table.select(EVENT_SCHEMA.names).cast(
            EVENT_SCHEMA.with_metadata(table.schema.metadata)))
        warnings.append(f"{f.name}: {table.num_rows} events read from the journal of a "
                        "recorder still running or stopped uncleanly"
                        + ("" if clean else ", up to its last complete batch (it ends "
                           "mid-write)"))
    if not tables:
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
    table = pa.concat_tables(tables, promote_options="none") if len(tables) > 1 else tables[0]
    if run:
        if run.get("schema_version") not in (None, SCHEMA_VERSION):
            raise SchemaMismatch(f"{path}/run.json: schema version {run.get('schema_version')},"
                                 f" this retranscope reads {SCHEMA_VERSION}")
        if not run.get("complete", False):
            warnings.append(f"the recording did not end cleanly (status: {run.get('status')}); "
                            "events after its last write to disk are missing")
        lost = run.get("events_lost_in_kernel") or 0
        if lost:
            warnings.append(f"{lost} events were lost in the kernel buffer while recording")
        unseen = (run.get("accounting") or {}).get("unreported_segments") or 0
        if unseen:
            warnings.append(f"the kernel retransmitted {unseen} segments that no event reported "
                            "(it ran no probe for them; see summary.json recording.accounting)")
    df = table.to_pandas()
    df = df.sort_values("ts_mono_ns", kind="stable").reset_index(drop=True)
    return Events(table=df, run=run, files=[str(f) for f in files], warnings=warnings)
