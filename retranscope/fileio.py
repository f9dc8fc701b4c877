"""Files that are either complete or absent: written to a temporary name, synced, renamed.

Shared by the recorder (events files, run.json) and the analyzer (its outputs): a reader
that finds a file under its final name may trust it whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa


def write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a disk that filled: nothing half-written is left
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str) + "\n"))


def read_arrow_stream(path: Path) -> tuple[pa.Table | None, bool]:
    """Every complete record batch of an Arrow IPC stream that may end mid-batch (a
    writer killed, or a disk that filled): (the table, or None if not even the schema
    is there; whether the stream ended cleanly)."""
    batches = []
    schema = None
    try:
        with pa.memory_map(str(path)) as src:
            reader = pa.ipc.open_stream(src)
            schema = reader.schema
            for batch in reader:
                batches.append(batch)
        return pa.Table.from_batches(batches, schema=schema), True
    except (OSError, pa.ArrowInvalid):
        if schema is None:
            return None, False
        return pa.Table.from_batches(batches, schema=schema), False
