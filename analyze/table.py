"""Tables inside analyze/: a dict of equal-length numpy columns.

The capture-only path (read, flows, retransmissions, classify, outputs) runs on these and
never imports pandas: importing it costs ~0.3 s, a quarter of the time the whole analysis
of a 1.3M-packet capture may take. A column with nulls is a Nullable (values + valid).
pandas appears only at the edges that want it: the DataFrame-returning public functions
(tests, notebooks) and the events join.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Table = dict  # column name -> 1-D numpy array, or Nullable


class Nullable:
    """A column with nulls: ``values`` (numpy, 0 where null) and ``valid`` (bool) of one
    length, as Arrow stores it (numpy's masked arrays add arithmetic and fill rules that
    nothing here wants)."""

    __slots__ = ("values", "valid")

    def __init__(self, values: np.ndarray, valid: np.ndarray):
        self.values = values
        self.valid = valid

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, idx) -> Nullable:
        return Nullable(self.values[idx], self.valid[idx])

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype


def nullable(values: np.ndarray, valid: np.ndarray, dtype=np.int64) -> Nullable:
    """``values`` where ``valid``, null elsewhere."""
    valid = np.asarray(valid, dtype=bool)
    return Nullable(np.where(valid, values, 0).astype(dtype), valid)


def filled(col, fill) -> np.ndarray:
    """The values of a column, ``fill`` where null."""
    if isinstance(col, Nullable):
        return np.where(col.valid, col.values, fill)
    return np.asarray(col)


def n_rows(table: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(table.values()))) if table else 0


def take(table: Mapping[str, np.ndarray], idx: np.ndarray) -> Table:
    """Rows ``idx`` of every column (nulls follow)."""
    return {k: v[idx] for k, v in table.items()}


def present(values: np.ndarray) -> np.ndarray:
    """Not null, for an object column whose nulls are None (or NaN from pandas)."""
    return np.array([v is not None and v == v for v in values.tolist()], dtype=bool)


def to_pandas(table: Mapping[str, np.ndarray]):
    """DataFrame of a table: Nullable columns become pandas' nullable Int64 / boolean."""
    import pandas as pd

    cols = {}
    for name, col in table.items():
        if isinstance(col, Nullable):
            dtype = "boolean" if col.dtype == bool else "Int64"
            arr = pd.array(col.values.astype(bool if dtype == "boolean" else np.int64),
                           dtype=dtype)
            arr[~col.valid] = pd.NA
            cols[name] = arr
        else:
            cols[name] = col
    return pd.DataFrame(cols)


def from_pandas(df) -> Table:
    """Table of a DataFrame: nullable Int64 / boolean columns become Nullable, string
    columns object arrays with None for null."""
    import pandas as pd

    out: Table = {}
    for name in df.columns:
        s = df[name]
        if isinstance(s.dtype, (pd.Int64Dtype, pd.BooleanDtype)):
            mask = s.isna().to_numpy()
            kind = bool if isinstance(s.dtype, pd.BooleanDtype) else np.int64
            out[name] = Nullable(s.to_numpy(dtype=kind, na_value=0), ~mask)
        elif s.dtype == object or pd.api.types.is_string_dtype(s.dtype):
            out[name] = s.to_numpy(dtype=object, na_value=None)
        else:
            out[name] = s.to_numpy()
    return out
