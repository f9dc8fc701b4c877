"""Writing the analysis (I/O edge). Each file is written to a temporary name and renamed,
summary.json last: a directory with a summary.json holds a complete analysis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from retranscope.record.writer import write_atomic

INT_COLS = {"ts_wall_ns": "int64", "flow_id": "int64", "frame": "int64", "frames": "int64",
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


def _to_arrow(df: pd.DataFrame) -> pa.Table:
    arrays, names = [], []
    for col in df.columns:
        s = df[col]
        if col in INT_COLS:
            arr = pa.array(s.to_numpy().astype(INT_COLS[col]))
        elif col in NULLABLE_INT:
            vals = pd.to_numeric(s, errors="coerce")
            mask = vals.isna().to_numpy()
            arr = pa.array(np.where(mask, 0, vals.fillna(0)).astype(NULLABLE_INT[col].to_pandas_dtype()),
                           type=NULLABLE_INT[col], mask=mask)
        elif col in FLOAT_COLS:
            arr = pa.array(pd.to_numeric(s, errors="coerce").to_numpy(float), type=pa.float64(),
                           from_pandas=True)
        elif col in BOOL_COLS:
            vals = s.to_numpy(object)
            mask = pd.isna(s).to_numpy()
            arr = pa.array([bool(v) if not m else None for v, m in zip(vals, mask)], pa.bool_())
        elif col in STRING_COLS or pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s):
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
    rt = rt.replace_schema_metadata({b"schema": b"retranscope.retransmits",
                                     b"schema_version": str(result.summary["output_schema_version"]).encode()})
    fl = _to_arrow(result.flows)
    paths = [out / "retransmits.parquet", out / "flows.parquet", out / "summary.json"]
    write_atomic(paths[0], lambda p: pq.write_table(rt, p))
    write_atomic(paths[1], lambda p: pq.write_table(fl, p))
    summary = dict(result.summary, complete=True)
    write_atomic(paths[2], lambda p: p.write_text(json.dumps(summary, indent=2, default=_json) + "\n"))
    return paths


def _json(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
