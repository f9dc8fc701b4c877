"""A table stored on disk and read back a row range at a time (analyze/stored.py): what
a spilled capture's shards leave for the outputs to be written from."""

from __future__ import annotations

import numpy as np
import pytest

from retranscope.analyze import stored
from retranscope.analyze.table import Nullable, Text


def _table(n: int) -> dict:
    rng = np.random.default_rng(3)
    text = np.array([None if i % 7 == 0 else f"row {i} ü" for i in range(n)], dtype=object)
    mixed = np.array([[None, 1, "two", 3.5, True][i % 5] for i in range(n)], dtype=object)
    return {
        "i64": rng.integers(-(2**62), 2**62, n),
        "u16": rng.integers(0, 2**16, n).astype(np.uint16),
        "f64": np.where(np.arange(n) % 5 == 0, np.nan, rng.random(n)),
        "flag": rng.random(n) < 0.5,
        "nullable": Nullable(rng.integers(0, 9, n), rng.random(n) < 0.7),
        "text": text,
        "mixed": mixed,
    }


def _same(a, b) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if isinstance(x, Text):  # text (str or None) comes back in Arrow's layout
            assert all(v is None or type(v) is str for v in y.tolist()), name
            assert x.to_objects().tolist() == y.tolist(), name
            continue
        assert isinstance(x, Nullable) == isinstance(y, Nullable), name
        if isinstance(x, Nullable):
            np.testing.assert_array_equal(x.values, y.values)
            np.testing.assert_array_equal(x.valid, y.valid)
            assert x.values.dtype == y.values.dtype
        else:
            assert x.dtype == y.dtype, name
            if x.dtype == object:
                assert x.tolist() == y.tolist(), name
                assert [type(v) for v in x.tolist()] == [type(v) for v in y.tolist()]
            else:
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("run_rows", [3, 4096, None])
def test_any_row_range_reads_back_what_was_stored(tmp_path, run_rows):
    """Ranges that start and end inside and across the pickled runs of object columns,
    empty ranges and ranges past the end."""
    table = _table(50)
    st = stored.store(table, tmp_path / "t", run_rows)
    assert st.n_rows == 50
    for lo, hi in [(0, 50), (0, 1), (2, 9), (3, 6), (49, 50), (10, 10), (0, 0), (45, 80)]:
        want = {k: v[lo:hi] for k, v in table.items()}
        _same(st.read(lo, hi), want)


def test_runs_follow_the_tables_read_together():
    """A row group takes ~ROW_GROUP_ROWS / tables rows of each table read together:
    runs about that size, within bounds."""
    assert stored.run_rows_for(1) == stored.OBJECT_RUN_ROWS
    assert stored.run_rows_for(64) == stored.ROW_GROUP_ROWS // 64
    assert stored.run_rows_for(100_000) == 64


def test_an_empty_table_keeps_its_columns_and_types(tmp_path):
    table = {k: v[:0] for k, v in _table(5).items()}
    got = stored.store(table, tmp_path / "t").read(0, 0)
    _same(got, table)


@pytest.mark.parametrize("cut", ["numbers", "objects"])
def test_a_file_cut_short_is_an_error_not_short_rows(tmp_path, cut):
    """Cut inside the first (numeric) column, or inside the last pickled run of the last
    (object) column."""
    st = stored.store(_table(20), tmp_path / "t", 3)
    at = 8 if cut == "numbers" else st.columns["mixed"][0].runs[-1][0] + 1
    with open(st.path, "r+b") as f:
        f.truncate(at)
    with pytest.raises(OSError, match="shorter than what was written"):
        st.read(15, 20)


def test_text_is_read_back_in_arrows_layout_and_other_objects_pickled(tmp_path):
    st = stored.store(_table(20), tmp_path / "t", 3)
    got = st.read(4, 13)
    assert isinstance(got["text"], Text) and got["mixed"].dtype == object
    assert st.columns["text"][0].text is not None and st.columns["mixed"][0].runs


@pytest.mark.parametrize(
    "idx", [slice(0, 0), slice(2, 5), slice(None), [4, 0, 0, 3], [], list(range(6))[::-1]]
)
def test_text_rows_taken_and_concatenated_are_the_strings(idx):
    items = ["µs · ü", None, "", "plain", None, "ab"]
    t = Text.encode(items)
    want = np.array(items, dtype=object)[idx].tolist()
    rows = idx if isinstance(idx, slice) else np.array(idx, dtype=np.int64)
    assert t[rows].to_objects().tolist() == want
    both = Text.concat([t, Text.encode([]), t[1:3]])
    assert both.to_objects().tolist() == items + items[1:3]
    assert both.offsets[0] == 0 and both.offsets[-1] == len(both.data)


def test_rows_put_at_their_places_from_pieces_are_the_rows_in_order():
    """table.RowsAt (a row group from the shards' pieces): numbers widened as concatenation
    would, nulls kept, text gathered; the columns in the order asked."""
    from retranscope.analyze.table import RowsAt

    a = {
        "n": np.array([1, 2], dtype=np.int32),
        "z": Nullable(np.array([5, 0]), np.array([True, False])),
        "t": Text.encode(["a", None]),
    }
    b = {
        "n": np.array([2**40], dtype=np.int64),
        "z": Nullable(np.array([7]), np.array([True])),
        "t": Text.encode(["µs"]),
    }
    rows = RowsAt(3)
    rows.add(a, np.array([0, 2]))
    rows.add(b, np.array([1]))
    got = rows.result(["t", "n", "z"])
    assert list(got) == ["t", "n", "z"]
    assert got["n"].tolist() == [1, 2**40, 2] and got["n"].dtype == np.int64
    assert got["z"].values.tolist() == [5, 7, 0] and got["z"].valid.tolist() == [True, True, False]
    assert got["t"].to_objects().tolist() == ["a", "µs", None]
