"""Writing the analysis (I/O edge). Each file is written to a temporary name and renamed,
summary.json last: a directory with a summary.json holds a complete analysis.

The column types are fixed here, whether the rows come as numpy tables (a capture alone,
analyze/table.py) or as DataFrames (with events): both give the same Arrow schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retranscope.analyze.table import Nullable
from retranscope.fileio import write_atomic

if TYPE_CHECKING:
    import pandas as pd

INT_COLS = {"ts_wall_ns": "int64", "flow_id": "int64", "frame": "int64", "frames": "int64",
            "spurious_frames": "int64",
            "sport": "uint16", "dport": "uint16", "family": "uint8"}
NULLABLE_INT = {"seq": pa.uint32(), "end_seq": pa.uint32(), "since_original_ns": pa.int64(),
                "since_last_send_ns": pa.int64(), "since_last_ack_ns": pa.int64(),
                "since_prev_retransmit_ns": pa.int64(), "expected_pto_ns": pa.int64(),
                "expected_rto_ns": pa.int64(), "since_trigger_ns": pa.int64(),
                "trigger_frame": pa.int64(), "backoff": pa.int32(), "tx_index": pa.int32(),
                "kernel_srtt_us": pa.uint32(), "kernel_backoff": pa.int32()}
FLOAT_COLS = {"srtt_us": pa.float64()}
BOOL_COLS = {"spurious", "kind_agrees"}
STRING_COLS = {"source", "saddr", "daddr", "kind", "kind_pcap", "spurious_by", "match",
               "kernel_ca_state"}


def _table_to_arrow(table: dict) -> pa.Table:
    """A numpy table (Nullable columns; object columns: None is null) -> Arrow, with
    the types _to_arrow gives the same columns of a DataFrame.

    Arrays are assembled from their buffers: pa.array() on a numpy array first asks
    whether it is a pandas object, which imports pandas (~0.3 s), for nothing here.
    """
    arrays = []
    for col, c in table.items():
        valid = c.valid if isinstance(c, Nullable) else None
        data = c.values if isinstance(c, Nullable) else np.asarray(c)
        if data.dtype == object and (col in NULLABLE_INT or col in FLOAT_COLS
                                     or col in BOOL_COLS):
            # a column this source leaves empty, or fills with Python values
            valid = np.array([v is not None for v in data.tolist()], dtype=bool)
            data = np.where(valid, data, 0)
        if col in INT_COLS:
            arr = _numeric(data.astype(INT_COLS[col]), None)
        elif col in NULLABLE_INT or col in FLOAT_COLS:
            typ = NULLABLE_INT.get(col) or FLOAT_COLS[col]
            arr = _numeric(data.astype(_NUMPY_OF[typ]), valid, typ)
        elif col in BOOL_COLS:
            arr = _booleans(data.astype(bool), valid)
        elif col in STRING_COLS or data.dtype == object:
            arr = _strings(data)
        elif data.dtype == bool:
            arr = _booleans(data, valid)
        else:
            arr = _numeric(data, valid)
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, names=list(table))


_NUMPY_OF = {pa.uint32(): np.uint32, pa.int64(): np.int64, pa.int32(): np.int32,
             pa.float64(): np.float64}


def _validity(valid: np.ndarray | None) -> tuple[pa.Buffer | None, int]:
    """Arrow validity bitmap (LSB first) and null count; no bitmap without nulls."""
    if valid is None:
        return None, 0
    nulls = int(len(valid) - np.count_nonzero(valid))
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls


def _numeric(values: np.ndarray, valid: np.ndarray | None, typ=None) -> pa.Array:
    values = np.ascontiguousarray(values)
    if valid is not None:
        values = np.where(valid, values, 0).astype(values.dtype)  # nulls hold 0
    typ = typ or pa.from_numpy_dtype(values.dtype)
    bitmap, nulls = _validity(valid)
    return pa.Array.from_buffers(typ, len(values), [bitmap, pa.py_buffer(values)],
                                 null_count=nulls)


def _booleans(values: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    bits = np.packbits(values & (True if valid is None else valid), bitorder="little")
    bitmap, nulls = _validity(valid)
    return pa.Array.from_buffers(pa.bool_(), len(values), [bitmap, pa.py_buffer(bits)],
                                 null_count=nulls)


def _strings(values: np.ndarray) -> pa.Array:
    """Object array of str (None: null) -> Arrow utf8 (int32 offsets)."""
    items = values.tolist()
    valid = np.array([v is not None for v in items], dtype=bool)
    encoded = [v.encode() if v is not None else b"" for v in items]
    offsets = np.zeros(len(items) + 1, dtype=np.int32)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    bitmap, nulls = _validity(valid)
    return pa.Array.from_buffers(pa.string(), len(items),
                                 [bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
                                 null_count=nulls)


def _to_arrow(df: pd.DataFrame) -> pa.Table:
    if isinstance(df, dict):
        return _table_to_arrow(df)
    import pandas as pd

    arrays, names = [], []
    for col in df.columns:
        s = df[col]
        if col in INT_COLS:
            arr = pa.array(s.to_numpy().astype(INT_COLS[col]))
        elif col in NULLABLE_INT:
            vals = pd.to_numeric(s, errors="coerce")
            mask = vals.isna().to_numpy()
            values = np.where(mask, 0, vals.fillna(0))
            arr = pa.array(values.astype(NULLABLE_INT[col].to_pandas_dtype()),
                           type=NULLABLE_INT[col], mask=mask)
        elif col in FLOAT_COLS:
            arr = pa.array(pd.to_numeric(s, errors="coerce").to_numpy(float), type=pa.float64(),
                           from_pandas=True)
        elif col in BOOL_COLS:
            vals = s.to_numpy(object)
            mask = pd.isna(s).to_numpy()
            arr = pa.array([bool(v) if not m else None for v, m in zip(vals, mask)], pa.bool_())
        elif (col in STRING_COLS or pd.api.types.is_object_dtype(s)
              or pd.api.types.is_string_dtype(s)):
            arr = pa.array([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                            for v in s.to_numpy(object)], pa.string())
        else:
            arr = pa.array(s.to_numpy())
        arrays.append(arr)
        names.append(col)
    return pa.Table.from_arrays(arrays, names=names)


def write_outputs(result, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = out / "summary.json"
    if stale.exists():
        stale.unlink()  # until the new one is written, the directory is not a complete analysis
    rt = _to_arrow(result.retransmits)
    version = str(result.summary["output_schema_version"]).encode()
    rt = rt.replace_schema_metadata({b"schema": b"retranscope.retransmits",
                                     b"schema_version": version})
    fl = _to_arrow(result.flows)
    paths = [out / "retransmits.parquet", out / "flows.parquet", out / "summary.json"]
    write_atomic(paths[0], lambda p: pq.write_table(rt, p))
    write_atomic(paths[1], lambda p: pq.write_table(fl, p))
    summary = dict(result.summary, complete=True)
    write_atomic(paths[2],
                 lambda p: p.write_text(json.dumps(summary, indent=2, default=_json) + "\n"))
    return paths


def _json(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
