"""Writing the analysis (I/O edge). Each file is written to a temporary name and renamed,
summary.json last: a directory with a summary.json holds a complete analysis.

The tables are written with exactly the schemas declared in schemas/outputs.py, whatever
the inputs were.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retranscope.analyze.stored import ROW_GROUP_ROWS
from retranscope.analyze.table import Nullable, Text, n_rows
from retranscope.fileio import write_atomic
from retranscope.schemas.outputs import FLOWS_SCHEMA, RETRANSMITS_SCHEMA


def _column(col) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, validity or None) of one column, whatever holds it: a numpy array (object
    arrays: None is null), a Nullable, or a pandas Series (NA/NaN/None are null)."""
    if isinstance(col, Nullable):
        return np.asarray(col.values), np.asarray(col.valid, dtype=bool)
    if hasattr(col, "to_numpy"):  # a pandas Series (the events path)
        import pandas as pd

        valid = ~pd.isna(col).to_numpy()
        return col.to_numpy(dtype=object), valid
    data = np.asarray(col)
    if data.dtype == object:
        items = data.tolist()
        valid = np.array([v is not None and v == v for v in items], dtype=bool)
        return data, valid
    if data.dtype.kind == "f":
        return data, ~np.isnan(data)
    return data, None


def to_arrow(rows, schema: pa.Schema) -> pa.Table:
    """A table of rows (numpy columns, Nullable columns or a DataFrame) -> Arrow, with
    exactly ``schema``'s columns and types (schemas/outputs.py); a column the rows lack is
    all null.

    Arrays are assembled from their buffers: pa.array() on a numpy array first asks
    whether it is a pandas object, which imports pandas (~0.3 s), for nothing here.
    """
    names = list(rows.columns) if hasattr(rows, "columns") else list(rows)
    n = len(rows) if hasattr(rows, "columns") else (len(rows[names[0]]) if names else 0)
    arrays = []
    for f in schema:
        col = rows[f.name] if f.name in names else None
        if isinstance(col, Text):  # a spilled capture's text, encoded by its shards
            if pa.types.is_string(f.type):
                arrays.append(_text(col))
                continue
            col = col.to_objects()
        if col is not None:
            data, valid = _column(col)
        else:
            data, valid = np.zeros(n, dtype=np.int8), np.zeros(n, dtype=bool)
        arrays.append(_array(data, valid, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _array(data: np.ndarray, valid: np.ndarray | None, typ: pa.DataType) -> pa.Array:
    if pa.types.is_string(typ):
        return _strings(data, valid)
    if data.dtype == object:
        data = np.where(valid, data, 0) if valid is not None else data
    if pa.types.is_boolean(typ):
        return _booleans(data.astype(bool), valid)
    return _numeric(data.astype(typ.to_pandas_dtype()), valid, typ)


def _validity(valid: np.ndarray | None) -> tuple[pa.Buffer | None, int]:
    """Arrow validity bitmap (LSB first) and null count; no bitmap without nulls."""
    if valid is None:
        return None, 0
    nulls = int(len(valid) - np.count_nonzero(valid))
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls


def _numeric(values: np.ndarray, valid: np.ndarray | None, typ: pa.DataType) -> pa.Array:
    values = np.ascontiguousarray(values)
    if valid is not None:
        values = np.where(valid, values, 0).astype(values.dtype)  # nulls hold 0
    bitmap, nulls = _validity(valid)
    return pa.Array.from_buffers(typ, len(values), [bitmap, pa.py_buffer(values)], null_count=nulls)


def _booleans(values: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    bits = np.packbits(values & (True if valid is None else valid), bitorder="little")
    bitmap, nulls = _validity(valid)
    return pa.Array.from_buffers(
        pa.bool_(), len(values), [bitmap, pa.py_buffer(bits)], null_count=nulls
    )


def _strings(values: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """Strings (None or invalid: null) -> Arrow utf8 (int32 offsets)."""
    items = values.tolist()
    ok = [True] * len(items) if valid is None else valid.tolist()
    encoded = [str(v).encode() if k and v is not None else b"" for v, k in zip(items, ok)]
    valid_arr = np.array([k and v is not None for v, k in zip(items, ok)], dtype=bool)
    offsets = np.zeros(len(items) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    bitmap, nulls = _validity(valid_arr)
    return pa.Array.from_buffers(
        pa.string(),
        len(items),
        [bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
        null_count=nulls,
    )


def _text(col: Text) -> pa.Array:
    """A Text column -> Arrow utf8 (int32 offsets: a row group is far below 2 GB)."""
    offsets = col.offsets
    if offsets[0] != 0 or offsets[-1] >= 1 << 31:
        return _strings(col.to_objects(), None)
    bitmap, nulls = _validity(col.valid)
    return pa.Array.from_buffers(
        pa.string(),
        len(col),
        [bitmap, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(col.data)],
        null_count=nulls,
    )


def _write_parquet(rows, schema: pa.Schema, path: Path) -> None:
    """``rows`` (what to_arrow takes, or a streamed.StreamedTable) to a Parquet file, a
    row group at a time."""
    from retranscope.analyze.shards import give_back_free_memory

    with pq.ParquetWriter(path, schema) as writer:
        for group in _row_groups(rows):
            table = to_arrow(group, schema)
            del group
            # what reading the group took (the shards' pieces, their concatenation, the
            # rows in output order: ~3 copies of it), given back before the writer's own
            give_back_free_memory()
            writer.write_table(table)
            del table
            # each group's arrays leave holes the next group's, a few rows more or less,
            # do not fit: the heap grew ~1 MB a group (the 13M-packet capture's 22: 18 MB)
            give_back_free_memory()


def _row_groups(rows):
    """``rows`` ROW_GROUP_ROWS at a time (one group, empty, when there are none)."""
    if hasattr(rows, "row_groups"):  # a spilled capture's, read back from its shards
        yield from rows.row_groups(ROW_GROUP_ROWS)
        return
    n = len(rows) if hasattr(rows, "columns") else n_rows(rows)
    for lo in range(0, max(n, 1), ROW_GROUP_ROWS):
        hi = min(n, lo + ROW_GROUP_ROWS)
        yield (
            rows.iloc[lo:hi] if hasattr(rows, "columns") else {k: v[lo:hi] for k, v in rows.items()}
        )


def write_outputs(result, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = out / "summary.json"
    if stale.exists():
        stale.unlink()  # until the new one is written, the directory is not a complete analysis
    version = str(result.summary["output_schema_version"]).encode()
    paths = [out / "retransmits.parquet", out / "flows.parquet", out / "summary.json"]
    try:
        for path, rows, schema in (
            (paths[0], result.retransmits, RETRANSMITS_SCHEMA),
            (paths[1], result.flows, FLOWS_SCHEMA),
        ):
            schema = schema.with_metadata({**schema.metadata, b"schema_version": version})
            write_atomic(path, lambda p, rows=rows, schema=schema: _write_parquet(rows, schema, p))
        summary = dict(result.summary, complete=True)
        write_atomic(
            paths[2], lambda p: p.write_text(json.dumps(summary, indent=2, default=_json) + "\n")
        )
    except BaseException:
        # a disk that filled half-way: no table of this analysis is left beside another's
        for path in paths:
            path.unlink(missing_ok=True)  # (write_atomic removed its temporary file)
        raise
    return paths


def _json(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
