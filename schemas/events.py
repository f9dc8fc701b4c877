"""The retransmit event, declared once for user space.

``RAW_FIELDS`` mirrors ``struct rts_event`` in ``bpf/retranscope.h`` field by field
(tests/test_schema.py parses the header and proves they agree, offsets included).
From it come the numpy dtype that decodes ring-buffer records in bulk, and the Arrow
schema of the Parquet files the recorder writes (``EVENT_SCHEMA``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from retranscope.schemas.vocabulary import CA_STATES, REASONS  # noqa: F401 (re-exported)

# Bump on any change to EVENT_SCHEMA; readers refuse other versions with a clear line.
SCHEMA_VERSION = 2
SCHEMA_NAME = "retranscope.events"

STACK_DEPTH = 8  # RTS_STACK_DEPTH
COMM_LEN = 16  # RTS_COMM_LEN

# (name, C type, count): count > 1 is an array.
RAW_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("ts_mono_ns", "__u64", 1),
    ("skaddr", "__u64", 1),
    ("skbaddr", "__u64", 1),
    ("stack", "__u64", STACK_DEPTH),
    ("saddr", "__u8", 16),
    ("daddr", "__u8", 16),
    ("pid", "__u32", 1),
    ("netns_ino", "__u32", 1),
    ("sock_ino", "__u32", 1),
    ("seq", "__u32", 1),
    ("end_seq", "__u32", 1),
    ("snd_una", "__u32", 1),
    ("snd_nxt", "__u32", 1),
    ("srtt_us8", "__u32", 1),
    ("packets_out", "__u32", 1),
    ("total_retrans", "__u32", 1),
    ("err", "__s32", 1),
    ("stack_len", "__s32", 1),
    ("sport", "__u16", 1),
    ("dport", "__u16", 1),
    ("family", "__u16", 1),
    ("segs", "__u16", 1),
    ("state", "__u8", 1),
    ("ca_state", "__u8", 1),
    ("backoff", "__u8", 1),
    ("event_type", "__u8", 1),
    ("flags", "__u8", 1),
    ("pad0", "__u8", 1),
    ("comm", "char", COMM_LEN),
    ("pad1", "__u8", 2),
)

C_TO_NUMPY = {
    "__u64": "<u8",
    "__u32": "<u4",
    "__s32": "<i4",
    "__u16": "<u2",
    "__u8": "u1",
    "char": "S1",
}


def raw_dtype() -> np.dtype:
    """numpy dtype of one ``struct rts_event`` as the kernel writes it (little-endian x86/arm)."""
    fields: list[tuple] = []
    for name, ctype, count in RAW_FIELDS:
        if ctype == "char":
            fields.append((name, f"S{count}"))
        elif count > 1:
            fields.append((name, C_TO_NUMPY[ctype], (count,)))
        else:
            fields.append((name, C_TO_NUMPY[ctype]))
    return np.dtype(fields, align=False)


RAW_DTYPE = raw_dtype()

# event_type (RTS_EV_*)
EVENT_TYPES = {1: "retransmit", 2: "synack", 3: "tlp_attempt"}
# A record that is no event (RTS_EV_SOCK_GONE): a socket that had events was destroyed;
# the recorder drops its per-socket state and writes nothing for it.
EV_SOCK_GONE = 4

# The recorder's files, under <out>/events/: events-NNNNN.parquet once closed; the file
# being written is events-NNNNN.arrows, an Arrow IPC stream (the journal) flushed at least
# every second and readable up to its last complete batch. A journal beside a Parquet file
# of the same number was converted but not yet removed: the Parquet file is the one to read.
EVENTS_DIR = "events"
EVENTS_PREFIX = "events"
PARQUET_SUFFIX = ".parquet"
JOURNAL_SUFFIX = ".arrows"


def event_file_index(path: Path) -> int | None:
    """NNNNN of events-NNNNN.parquet / .arrows; None for any other name. Numeric: past
    99999 the names grow a digit and no longer sort as text."""
    stem = path.name.split(".", 1)[0]
    head, _, num = stem.rpartition("-")
    return int(num) if head == EVENTS_PREFIX and num.isdigit() else None


def event_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(closed Parquet files, journals without a Parquet twin), each in file order."""
    found = [p for p in folder.iterdir() if event_file_index(p) is not None]
    parquet = sorted(
        (p for p in found if p.name.endswith(PARQUET_SUFFIX)),
        key=lambda p: event_file_index(p) or 0,
    )
    names = {p.name for p in parquet}
    journals = sorted(
        (
            p
            for p in found
            if p.name.endswith(JOURNAL_SUFFIX)
            and p.name[: -len(JOURNAL_SUFFIX)] + PARQUET_SUFFIX not in names
        ),
        key=lambda p: event_file_index(p) or 0,
    )
    return parquet, journals


# flags (RTS_F_*)
F_HAS_ERR = 0x01
F_HAS_SEQ = 0x02
F_HAS_CA_STATE = 0x04
F_HAS_SOCK = 0x08
F_CA_FROM_MAP = 0x10
F_HAS_SEGS = 0x20
F_HAS_TOTAL = 0x40

# include/net/tcp_states.h
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
    13: "BOUND_INACTIVE",
}

# The Parquet layout. Ports are host byte order; addresses are text (ipaddress form);
# seq/end_seq are raw 32-bit as in the skb; `*_raw` keep the undecoded value beside the name.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("ts_mono_ns", pa.int64(), nullable=False),  # CLOCK_MONOTONIC, ns
        pa.field("ts_wall_ns", pa.int64(), nullable=False),  # CLOCK_REALTIME, ns since the epoch
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("caller", pa.string()),  # the kernel function the reason is read from
        pa.field("family", pa.uint8(), nullable=False),  # 4 or 6
        pa.field("saddr", pa.string(), nullable=False),
        pa.field("sport", pa.uint16(), nullable=False),
        pa.field("daddr", pa.string(), nullable=False),
        pa.field("dport", pa.uint16(), nullable=False),
        pa.field("seq", pa.uint32()),  # null when the skb could not be read
        pa.field("end_seq", pa.uint32()),
        # Segments in this retransmission (tcp_skb_pcount: what RetransSegs adds), and the
        # socket's running total of resent segments (tp->total_retrans, this one included):
        # between two events of one socket the total grows by exactly the later one's segs
        # unless retransmissions went unreported (retranscope/accounting.py).
        pa.field("segs", pa.uint16()),
        pa.field("total_retrans", pa.uint32()),
        pa.field("state", pa.string(), nullable=False),
        pa.field("state_raw", pa.uint8(), nullable=False),
        pa.field("ca_state", pa.string()),  # null when unknown
        pa.field("ca_state_raw", pa.uint8()),
        pa.field("err", pa.int32()),  # null on kernels whose tracepoint lacks it
        pa.field("srtt_us", pa.uint32()),
        pa.field("snd_una", pa.uint32()),
        pa.field("snd_nxt", pa.uint32()),
        pa.field("packets_out", pa.uint32()),
        pa.field("backoff", pa.uint8()),
        pa.field("pid", pa.uint32(), nullable=False),
        pa.field("comm", pa.string(), nullable=False),
        pa.field("netns_ino", pa.uint32(), nullable=False),
        pa.field("sock_ino", pa.uint32(), nullable=False),
        pa.field("skaddr", pa.uint64(), nullable=False),  # socket id (kernel address)
        pa.field("flags", pa.uint8(), nullable=False),
    ],
    metadata={b"schema": SCHEMA_NAME.encode(), b"schema_version": str(SCHEMA_VERSION).encode()},
)

# Per-flow counts written by -c.
COUNTS_SCHEMA = pa.schema(
    [
        pa.field("family", pa.uint8(), nullable=False),
        pa.field("saddr", pa.string(), nullable=False),
        pa.field("sport", pa.uint16(), nullable=False),
        pa.field("daddr", pa.string(), nullable=False),
        pa.field("dport", pa.uint16(), nullable=False),
        pa.field("retransmits", pa.uint64(), nullable=False),
    ],
    metadata={b"schema": b"retranscope.counts", b"schema_version": str(SCHEMA_VERSION).encode()},
)
