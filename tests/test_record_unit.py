"""Unit tests of the recorder's pure parts: BTF parsing, reasons, decoding, writing.
(The recorder itself is tested against the real kernel in test_record_lab.py.)"""

import json
import os
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retranscope.analyze.events import read_event_files, read_events
from retranscope.fileio import read_arrow_stream
from retranscope.record import reasons as R
from retranscope.record.btf import BTF, VMLINUX_BTF, BTFError, kernel_offsets
from retranscope.record.decode import decode, format_addrs
from retranscope.record.writer import EventWriter
from retranscope.schemas.events import (
    EVENT_SCHEMA,
    F_HAS_CA_STATE,
    F_HAS_SEQ,
    RAW_DTYPE,
    SCHEMA_VERSION,
)


def _btf(types: list[bytes], strings: bytes) -> bytes:
    tsec = b"".join(types)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(tsec), len(tsec), len(strings))
    return hdr + tsec + strings


def test_btf_member_offsets_through_anonymous_unions_and_bitfields():
    strings = b"\0outer\0a\0b\0inner\0c\0int\0"
    off = {s: strings.index(s.encode() + b"\0") for s in ("outer", "a", "b", "inner", "c", "int")}
    t_int = struct.pack("<III", off["int"], 1 << 24, 4) + struct.pack("<I", 32)  # id 1
    # id 2: struct inner { int c; } (anonymous member of outer, at byte 8)
    t_inner = struct.pack("<III", 0, (4 << 24) | 1, 4) + struct.pack("<III", off["c"], 1, 0)
    # id 3: struct outer { int a; bitfield b:5 at bit 35; <anon inner> at 64 } kind_flag set
    t_outer = struct.pack("<III", off["outer"], (1 << 31) | (4 << 24) | 3, 16)
    t_outer += struct.pack("<III", off["a"], 1, 0)
    t_outer += struct.pack("<III", off["b"], 1, (5 << 24) | 35)
    t_outer += struct.pack("<III", 0, 2, 64)
    btf = BTF(_btf([t_int, t_inner, t_outer], strings))
    assert btf.offset("outer", "a") == 0
    assert btf.offset("outer", "c") == 8
    m = btf.member("outer", "b")
    assert (m.offset_bits, m.bitfield_size) == (35, 5)
    with pytest.raises(BTFError):
        btf.offset("outer", "b")
    with pytest.raises(BTFError):
        btf.offset("outer", "nope")
    with pytest.raises(BTFError):
        BTF(b"\0" * 30)


@pytest.mark.skipif(not VMLINUX_BTF.exists(), reason="no kernel BTF on this machine")
def test_running_kernel_offsets_are_all_found():
    values, missing = kernel_offsets(BTF.load())
    assert missing == []
    assert values["RTS_OFF_TCB_END_SEQ"] == values["RTS_OFF_TCB_SEQ"] + 4
    assert 0 < values["RTS_OFF_SKB_CB"] < 256


def test_caller_codes_first_known_frame_wins():
    syms = R.KernelSymbols(
        np.array([0x1000, 0x2000, 0x3000, 0x4000], dtype=np.uint64),
        np.array([0, R.CALLER_TLP, R.CALLER_XMIT_QUEUE, 0], dtype=np.uint8),
    )
    stacks = np.zeros((3, 8), dtype=np.uint64)
    stacks[0, :3] = [0x1010, 0x2010, 0x3010]  # tlp first
    stacks[1, :3] = [0x1010, 0x3010, 0x2010]  # queue first
    stacks[2, :3] = [0x1010, 0x4010, 0x0900]  # none (0x900 is below every symbol)
    codes = syms.caller_codes(stacks, np.array([3, 3, 3]))
    assert codes.tolist() == [R.CALLER_TLP, R.CALLER_XMIT_QUEUE, R.CALLER_NONE]
    # Frames beyond stack_len do not count.
    assert syms.caller_codes(stacks[:1], np.array([1])).tolist() == [R.CALLER_NONE]


def test_reasons_from_caller_state_and_ca_state():
    caller = np.array(
        [
            R.CALLER_TLP,
            R.CALLER_TIMER,
            R.CALLER_TIMER,
            R.CALLER_XMIT_QUEUE,
            R.CALLER_XMIT_QUEUE,
            R.CALLER_NONE,
            R.CALLER_NONE,
        ]
    )
    event_type = np.array([1, 1, 1, 1, 1, 1, 2])
    state = np.array([1, 1, 2, 1, 1, 1, 12])
    ca = np.array([0, 4, 0, 3, 4, 0, 0])
    known = np.ones(7, dtype=bool)
    out = R.reasons(caller, event_type, state, ca, known).tolist()
    assert out == ["tlp", "rto", "syn", "fast", "rto_recovery", "other", "synack"]


def test_decode_builds_the_event_schema():
    raw = np.zeros(2, dtype=RAW_DTYPE)
    raw["family"] = [2, 10]
    raw["saddr"][0, :4] = [10, 0, 0, 1]
    raw["saddr"][1] = np.frombuffer(bytes.fromhex("fd000000000000000000000000000001"), np.uint8)
    raw["sport"] = [5001, 443]
    raw["seq"] = [4294967295, 7]
    raw["end_seq"] = [1447, 8]
    raw["flags"] = [F_HAS_SEQ | F_HAS_CA_STATE, 0]
    raw["ca_state"] = [3, 0]
    raw["state"] = [1, 1]
    raw["event_type"] = [1, 1]
    raw["ts_mono_ns"] = [100, 200]
    syms = R.KernelSymbols(np.array([1], dtype=np.uint64), np.array([0], dtype=np.uint8))
    t = decode(raw, syms, wall_offset_ns=1_000)
    assert t.schema.equals(EVENT_SCHEMA, check_metadata=False)
    d = t.to_pydict()
    assert d["saddr"] == ["10.0.0.1", "fd00::1"]
    assert d["family"] == [4, 6]
    assert d["seq"] == [4294967295, None]
    assert d["ca_state"] == ["Recovery", None]
    assert d["ts_wall_ns"] == [1100, 1200]


def test_format_addrs_distinguishes_family():
    raw = np.zeros((2, 16), dtype=np.uint8)
    raw[:, :4] = [10, 0, 0, 1]
    out = format_addrs(raw, np.array([True, False]))
    assert out.tolist() == ["10.0.0.1", "a00:1::"]


def _events(n: int, start: int = 0):
    syms = R.KernelSymbols(np.array([1], dtype=np.uint64), np.array([0], dtype=np.uint8))
    raw = np.zeros(n, dtype=RAW_DTYPE)
    raw["family"] = 2
    raw["ts_mono_ns"] = np.arange(start, start + n)
    return decode(raw, syms, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_writer_rotates_by_rows_and_files_are_complete(tmp_path):
    w = EventWriter(
        tmp_path,
        EVENT_SCHEMA,
        rotate_seconds=3600,
        rotate_rows=4,
        file_metadata={"run_id": "x"},
        sync=False,
    )
    for i in range(10):
        w.append(_events(1, i))
    w.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["events-00001.parquet", "events-00002.parquet", "events-00003.parquet"]
    rows = [pq.read_table(tmp_path / n).num_rows for n in names]
    assert rows == [4, 4, 2]
    md = pq.read_schema(tmp_path / names[0]).metadata
    assert md[b"run_id"] == b"x" and md[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert w.rows_written == 10 and [f["rows"] for f in w.files] == [4, 4, 2]
    json.dumps(w.state())


def test_journal_is_flushed_on_time_and_readable_while_open(tmp_path):
    """Rows reach the journal within flush_seconds, and a directory that ends in a journal
    reads as every flushed row (what a SIGKILL leaves)."""
    clock = Clock()
    w = EventWriter(
        tmp_path / "events",
        EVENT_SCHEMA,
        rotate_seconds=10,
        flush_seconds=0.5,
        sync=False,
        clock=clock,
    )
    w.append(_events(3, 0))
    assert w.rows_written == 0 and not list((tmp_path / "events").glob("*.arrows"))
    clock.now = 0.5
    w.append(_events(2, 3))
    assert w.rows_written == 5
    clock.now = 0.7
    w.append(_events(4, 5))  # pending: not on disk yet
    tables, files, warnings = read_event_files(tmp_path)
    assert [f.name for f in files] == ["events-00001.arrows"]
    got = pa.concat_tables(tables)
    assert got["ts_mono_ns"].to_pylist() == list(range(5))
    assert len(warnings) == 1 and "5 events read from the journal" in warnings[0]
    clock.now = 10.0  # rotation: the journal becomes Parquet with every row
    assert w.tick() is True
    assert sorted(os.listdir(tmp_path / "events")) == ["events-00001.parquet"]
    assert pq.read_table(tmp_path / "events" / "events-00001.parquet").num_rows == 9
    assert read_events(tmp_path).table["ts_mono_ns"].tolist() == list(range(9))


def test_journal_cut_mid_batch_reads_up_to_its_last_complete_batch(tmp_path):
    clock = Clock()
    w = EventWriter(tmp_path, EVENT_SCHEMA, flush_seconds=0, sync=False, clock=clock)
    w.append(_events(7, 0))
    w.append(_events(5, 7))
    journal = tmp_path / "events-00001.arrows"
    size = journal.stat().st_size
    os.truncate(journal, size - 9)  # the power went while the second batch was written
    table, clean = read_arrow_stream(journal)
    assert not clean and table["ts_mono_ns"].to_pylist() == list(range(7))


def test_a_new_writer_recovers_the_journal_a_crash_left(tmp_path):
    clock = Clock()
    w = EventWriter(tmp_path, EVENT_SCHEMA, flush_seconds=0, sync=False, clock=clock)
    w.append(_events(6, 0))  # flushed, then the process dies: no rotation
    w2 = EventWriter(tmp_path, EVENT_SCHEMA, flush_seconds=0, sync=False, clock=clock)
    assert [r["rows"] for r in w2.recovered] == [6]
    assert sorted(os.listdir(tmp_path)) == ["events-00001.parquet"]
    w2.append(_events(2, 6))
    w2.close()  # the new run numbers its files after the old ones
    assert sorted(os.listdir(tmp_path)) == ["events-00001.parquet", "events-00002.parquet"]
    assert read_events(tmp_path).table["ts_mono_ns"].tolist() == list(range(8))


def test_ring_keeps_max_files_and_counts_what_it_deleted(tmp_path):
    w = EventWriter(tmp_path, EVENT_SCHEMA, rotate_rows=3, max_files=3, sync=False)
    for i in range(8):
        w.append(_events(2, 2 * i))  # 16 rows: files of 4 rows (rotation after a batch)
    w.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["events-00003.parquet", "events-00004.parquet"]
    assert w.ring_deleted == {"files": 2, "rows": 8}
    kept = read_events(tmp_path).table["ts_mono_ns"].tolist()
    assert kept == list(range(8, 16))


def test_max_bytes_rotates_the_journal(tmp_path):
    w = EventWriter(tmp_path, EVENT_SCHEMA, flush_seconds=0, max_bytes=20_000, sync=False)
    for i in range(40):
        w.append(_events(50, 50 * i))
    w.close()
    files = sorted(tmp_path.glob("events-*.parquet"))
    assert len(files) > 3
    assert sum(pq.read_metadata(f).num_rows for f in files) == 2000


def test_a_quiet_host_reads_as_no_events_and_a_missing_events_folder_is_refused(tmp_path):
    """The recorder writes no events file when it saw no retransmission: a complete
    run.json that says 0 events written stands in for the files; anything else without
    files is refused with one line."""
    from retranscope.errors import BadInput

    run = {"schema_version": SCHEMA_VERSION, "complete": True, "events_written": 0}
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert len(read_events(tmp_path).table["ts_mono_ns"]) == 0
    (tmp_path / "run.json").write_text(json.dumps({**run, "complete": False}))
    with pytest.raises(BadInput, match="no events-"):
        read_events(tmp_path)
