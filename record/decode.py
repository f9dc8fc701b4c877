"""Raw kernel records (RAW_DTYPE) -> the Arrow events table (EVENT_SCHEMA), in bulk.

Pure: no kernel, no files. Addresses are formatted once per distinct address, not once
per event; the reason comes from the vectorised caller lookup in record/reasons.py.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa

from retranscope.record.reasons import CALLER_NAMES, KernelSymbols, reasons
from retranscope.schemas.events import (
    CA_STATES,
    EVENT_SCHEMA,
    EVENT_TYPES,
    F_HAS_CA_STATE,
    F_HAS_ERR,
    F_HAS_SEGS,
    F_HAS_SEQ,
    F_HAS_SOCK,
    F_HAS_TOTAL,
    TCP_STATES,
)


def format_addrs(raw: np.ndarray, family4: np.ndarray) -> np.ndarray:
    """(n,16) uint8 addresses -> object array of text, formatting each distinct one once."""
    n = len(raw)
    if n == 0:
        return np.empty(0, dtype=object)
    # The family is part of the key: an IPv4 address is the first 4 bytes only.
    keyed = np.empty((n, 17), dtype=np.uint8)
    keyed[:, :16] = raw
    keyed[:, 16] = family4
    uniq, inverse = np.unique(keyed.view(np.dtype((np.void, 17))).ravel(), return_inverse=True)
    texts = []
    for u in uniq:
        b = bytes(u)
        texts.append(
            str(ipaddress.IPv4Address(b[:4])) if b[16] else str(ipaddress.IPv6Address(b[:16]))
        )
    return np.array(texts, dtype=object)[inverse.ravel()]


def _lookup(table: dict[int, str], raw: np.ndarray, default: str) -> np.ndarray:
    lut = np.array([table.get(i, default) for i in range(256)], dtype=object)
    return lut[raw.astype(np.int64)]


def decode(raw: np.ndarray, symbols: KernelSymbols, wall_offset_ns: int) -> pa.Table:
    """Decode a batch of events. ``wall_offset_ns`` = CLOCK_REALTIME - CLOCK_MONOTONIC."""
    n = len(raw)
    if n == 0:
        return EVENT_SCHEMA.empty_table()
    flags = raw["flags"]
    has_seq = (flags & F_HAS_SEQ) != 0
    has_ca = (flags & F_HAS_CA_STATE) != 0
    has_err = (flags & F_HAS_ERR) != 0
    has_sock = (flags & F_HAS_SOCK) != 0
    fam4 = raw["family"] == 2
    caller = symbols.caller_codes(raw["stack"], raw["stack_len"])
    reason = reasons(caller, raw["event_type"], raw["state"], raw["ca_state"], has_ca)
    caller_name = np.array([CALLER_NAMES.get(i) for i in range(4)], dtype=object)[caller]
    ts_mono = raw["ts_mono_ns"].astype(np.int64)
    comm = np.char.decode(raw["comm"], "ascii", errors="replace")

    def masked(col: str, mask: np.ndarray, typ: pa.DataType, values=None) -> pa.Array:
        v = raw[col] if values is None else values
        return pa.array(v, type=typ, mask=~mask)

    cols = {
        "ts_mono_ns": pa.array(ts_mono, pa.int64()),
        "ts_wall_ns": pa.array(ts_mono + np.int64(wall_offset_ns), pa.int64()),
        "event_type": pa.array(_lookup(EVENT_TYPES, raw["event_type"], "unknown"), pa.string()),
        "reason": pa.array(reason, pa.string()),
        "caller": pa.array(caller_name, pa.string()),
        "family": pa.array(np.where(fam4, 4, 6).astype(np.uint8), pa.uint8()),
        "saddr": pa.array(format_addrs(raw["saddr"], fam4), pa.string()),
        "sport": pa.array(raw["sport"], pa.uint16()),
        "daddr": pa.array(format_addrs(raw["daddr"], fam4), pa.string()),
        "dport": pa.array(raw["dport"], pa.uint16()),
        "seq": masked("seq", has_seq, pa.uint32()),
        "end_seq": masked("end_seq", has_seq, pa.uint32()),
        "segs": masked("segs", (flags & F_HAS_SEGS) != 0, pa.uint16()),
        "total_retrans": masked("total_retrans", (flags & F_HAS_TOTAL) != 0, pa.uint32()),
        "state": pa.array(_lookup(TCP_STATES, raw["state"], "UNKNOWN"), pa.string()),
        "state_raw": pa.array(raw["state"], pa.uint8()),
        "ca_state": pa.array(
            _lookup(CA_STATES, raw["ca_state"], "unknown"), pa.string(), mask=~has_ca
        ),
        "ca_state_raw": masked("ca_state", has_ca, pa.uint8()),
        "err": masked("err", has_err, pa.int32()),
        "srtt_us": masked("srtt_us8", has_sock, pa.uint32(), raw["srtt_us8"] >> 3),
        "snd_una": masked("snd_una", has_sock, pa.uint32()),
        "snd_nxt": masked("snd_nxt", has_sock, pa.uint32()),
        "packets_out": masked("packets_out", has_sock, pa.uint32()),
        "backoff": masked("backoff", has_sock, pa.uint8()),
        "pid": pa.array(raw["pid"], pa.uint32()),
        "comm": pa.array(comm, pa.string()),
        "netns_ino": pa.array(raw["netns_ino"], pa.uint32()),
        "sock_ino": pa.array(raw["sock_ino"], pa.uint32()),
        "skaddr": pa.array(raw["skaddr"], pa.uint64()),
        "flags": pa.array(flags, pa.uint8()),
    }
    return pa.Table.from_pydict(cols, schema=EVENT_SCHEMA)
