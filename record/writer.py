"""Crash-safe Parquet output: one complete file per rotation interval.

Rows are buffered for at most one interval (by time or by row count, whichever comes
first, so memory stays bounded), then written to a temporary name and renamed into
place: a file with its final name is always complete. A SIGKILLed recorder loses only
the interval it was buffering. ``run.json`` (the run's metadata) is rewritten the same
way at every rotation, so it always describes the files that exist.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from retranscope.fileio import write_atomic

RUN_META = "run.json"


class RotatingWriter:
    def __init__(
        self,
        out_dir: Path,
        schema: pa.Schema,
        *,
        prefix: str = "events",
        rotate_seconds: float = 10.0,
        rotate_rows: int = 200_000,
        file_metadata: dict[str, str] | None = None,
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.prefix = prefix
        self.rotate_seconds = rotate_seconds
        self.rotate_rows = rotate_rows
        self.file_metadata = dict(file_metadata or {})
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._opened = time.monotonic()
        self.files: list[dict[str, object]] = []
        self.rows_written = 0

    def append(self, table: pa.Table) -> bool:
        """Buffer rows; returns True when a file was written (a rotation happened)."""
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
        return self.maybe_rotate()

    def maybe_rotate(self) -> bool:
        due = time.monotonic() - self._opened >= self.rotate_seconds
        if self._pending_rows >= self.rotate_rows or (due and self._pending_rows):
            self.flush()
            return True
        if due:
            self._opened = time.monotonic()
        return False

    def flush(self) -> None:
        self._opened = time.monotonic()
        if not self._pending_rows:
            return
        table = pa.concat_tables(self._pending)
        self._pending.clear()
        self._pending_rows = 0
        index = len(self.files) + 1
        name = f"{self.prefix}-{index:05d}.parquet"
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): str(v).encode() for k, v in self.file_metadata.items()})
        meta[b"file_index"] = str(index).encode()
        table = table.replace_schema_metadata(meta)
        write_atomic(self.out_dir / name, lambda p: pq.write_table(table, p, compression="zstd"))
        info: dict[str, object] = {"name": name, "rows": table.num_rows}
        if "ts_wall_ns" in table.column_names:
            ts = table.column("ts_wall_ns")
            info["first_ts_wall_ns"] = ts[0].as_py()
            info["last_ts_wall_ns"] = ts[-1].as_py()
        self.files.append(info)
        self.rows_written += table.num_rows

    @property
    def pending_rows(self) -> int:
        return self._pending_rows
