"""Raw kernel records (RAW_DTYPE) -> the Arrow events table (EVENT_SCHEMA), in bulk.

Pure: no kernel, no files. No Python object per event: every text column is a small
dictionary of texts taken by per-event codes in Arrow (``take``), and addresses and
process names are formatted once per distinct value in the batch. The reason comes from
the vectorised caller lookup in record/reasons.py.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pyarrow as pa

from retranscope.record.reasons import CALLER_NAMES, KernelSymbols, reason_codes
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
    REASONS,
    TCP_STATES,
)


def _dictionary(names: dict[int, str], default: str | None) -> pa.Array:
    """Texts for every u8 code."""
    return pa.array([names.get(i, default) for i in range(256)], pa.string())


_EVENT_TYPES = _dictionary(EVENT_TYPES, "unknown")
_TCP_STATES = _dictionary(TCP_STATES, "UNKNOWN")
_CA_STATES = _dictionary(CA_STATES, "unknown")
_REASONS = pa.array(REASONS, pa.string())
_CALLERS = _dictionary(CALLER_NAMES, None)


def _take(dictionary: pa.Array, codes: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    index = pa.array(codes.astype(np.int32, copy=False), mask=None if valid is None else ~valid)
    return dictionary.take(index)


def _distinct_addrs(raw: np.ndarray, family4: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(text of each distinct address, index of each row's address among them)."""
    # The family is part of the key: an IPv4 address is the first 4 bytes only.
    keyed = np.empty((len(raw), 17), dtype=np.uint8)
    keyed[:, :16] = raw
    keyed[:, 16] = family4
    uniq, inverse = np.unique(keyed.view(np.dtype((np.void, 17))).ravel(), return_inverse=True)
    texts = []
    for u in uniq:
        b = bytes(u)
        texts.append(
            str(ipaddress.IPv4Address(b[:4])) if b[16] else str(ipaddress.IPv6Address(b[:16]))
        )
    return texts, inverse.ravel()


def format_addrs(raw: np.ndarray, family4: np.ndarray) -> np.ndarray:
    """(n,16) uint8 addresses -> object array of text, formatting each distinct one once."""
    if len(raw) == 0:
        return np.empty(0, dtype=object)
    texts, inverse = _distinct_addrs(raw, family4)
    return np.array(texts, dtype=object)[inverse]


def _addr_column(raw: np.ndarray, family4: np.ndarray) -> pa.Array:
    texts, inverse = _distinct_addrs(raw, family4)
    return _take(pa.array(texts, pa.string()), inverse)


def _comm_column(comm: np.ndarray) -> pa.Array:
    uniq, inverse = np.unique(comm, return_inverse=True)
    texts = pa.array([u.decode("ascii", errors="replace") for u in uniq], pa.string())
    return _take(texts, inverse.ravel())


def decode(raw: np.ndarray, symbols: KernelSymbols, wall_offset_ns: int) -> pa.Table:
    """Decode a batch of events. ``wall_offset_ns`` = CLOCK_REALTIME - CLOCK_MONOTONIC."""
    if len(raw) == 0:
        return EVENT_SCHEMA.empty_table()
    flags = raw["flags"]
    has_seq = (flags & F_HAS_SEQ) != 0
    has_ca = (flags & F_HAS_CA_STATE) != 0
    has_sock = (flags & F_HAS_SOCK) != 0
    fam4 = raw["family"] == 2
    caller = symbols.caller_codes(raw["stack"], raw["stack_len"])
    reason = reason_codes(caller, raw["event_type"], raw["state"], raw["ca_state"], has_ca)
    ts_mono = raw["ts_mono_ns"].astype(np.int64)

    def masked(col: str, mask: np.ndarray, typ: pa.DataType, values=None) -> pa.Array:
        v = raw[col] if values is None else values
        return pa.array(v, type=typ, mask=~mask)

    cols = {
        "ts_mono_ns": pa.array(ts_mono, pa.int64()),
        "ts_wall_ns": pa.array(ts_mono + np.int64(wall_offset_ns), pa.int64()),
        "event_type": _take(_EVENT_TYPES, raw["event_type"]),
        "reason": _take(_REASONS, reason),
        "caller": _take(_CALLERS, caller),
        "family": pa.array(np.where(fam4, 4, 6).astype(np.uint8), pa.uint8()),
        "saddr": _addr_column(raw["saddr"], fam4),
        "sport": pa.array(raw["sport"], pa.uint16()),
        "daddr": _addr_column(raw["daddr"], fam4),
        "dport": pa.array(raw["dport"], pa.uint16()),
        "seq": masked("seq", has_seq, pa.uint32()),
        "end_seq": masked("end_seq", has_seq, pa.uint32()),
        "segs": masked("segs", (flags & F_HAS_SEGS) != 0, pa.uint16()),
        "total_retrans": masked("total_retrans", (flags & F_HAS_TOTAL) != 0, pa.uint32()),
        "state": _take(_TCP_STATES, raw["state"]),
        "state_raw": pa.array(raw["state"], pa.uint8()),
        "ca_state": _take(_CA_STATES, raw["ca_state"], has_ca),
        "ca_state_raw": masked("ca_state", has_ca, pa.uint8()),
        "err": masked("err", (flags & F_HAS_ERR) != 0, pa.int32()),
        "srtt_us": masked("srtt_us8", has_sock, pa.uint32(), raw["srtt_us8"] >> 3),
        "snd_una": masked("snd_una", has_sock, pa.uint32()),
        "snd_nxt": masked("snd_nxt", has_sock, pa.uint32()),
        "packets_out": masked("packets_out", has_sock, pa.uint32()),
        "backoff": masked("backoff", has_sock, pa.uint8()),
        "pid": pa.array(raw["pid"], pa.uint32()),
        "comm": _comm_column(raw["comm"]),
        "netns_ino": pa.array(raw["netns_ino"], pa.uint32()),
        "sock_ino": pa.array(raw["sock_ino"], pa.uint32()),
        "skaddr": pa.array(raw["skaddr"], pa.uint64()),
        "flags": pa.array(flags, pa.uint8()),
    }
    return pa.Table.from_arrays(list(cols.values()), schema=EVENT_SCHEMA)
