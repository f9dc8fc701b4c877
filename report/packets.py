"""The packets behind a report's graphs: where the capture is, reading it, and one flow's
sequence space.

The analysis outputs hold one row per retransmission, not the flow's packets. The
time-sequence graphs and the receiver's ACK delay need them, so the report reads the
capture again (the path summary.json's ``capture`` section records, or ``--pcap``), keeps
only the packets of the flows it draws, and unwraps their 32-bit sequence numbers.

The capture is read through the analyzer's public reader only (``open_capture_file``: the one
line to change when the reader moves), file by file, each file filtered to the wanted
4-tuples before the next is read, so a capture set never sits in memory whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from retranscope.errors import BadInput
from retranscope.schemas.packets import TCP_ACK, TCP_FIN, TCP_SYN, addr_from_str

#: Packet columns the report uses (the reader's table has more: schemas/packets.py).
USED_COLUMNS = (
    "frame",
    "ts_ns",
    "saddr_hi",
    "saddr_lo",
    "daddr_hi",
    "daddr_lo",
    "sport",
    "dport",
    "seq",
    "ack",
    "flags",
    "win",
    "payload_len",
    "opt_wscale",
    "sack_n",
    "sack_l0",
    "sack_r0",
    "sack_l1",
    "sack_r1",
    "sack_l2",
    "sack_r2",
    "sack_l3",
    "sack_r3",
)


class CaptureMissing(BadInput):
    """The capture an analysis was made from is not where summary.json says."""


def open_capture_file(path: Path):
    """The analyzer's public capture reader, as a stream of packet-table chunks: the report
    keeps only the drawn flows' packets, so its memory does not grow with the capture."""
    from retranscope.analyze.capture import open_capture

    return open_capture(path)


def recorded_paths(summary: dict) -> list[str]:
    """The capture file(s) an analysis read, as summary.json records them: a capture set
    lists ``files`` (each a path or a dict with a ``path``), a single capture its ``path``."""
    cap = summary.get("capture") or {}
    files = cap.get("files")
    if files:
        return [f["path"] if isinstance(f, dict) else str(f) for f in files]
    return [cap["path"]] if cap.get("path") else []


def locate_capture(
    summary: dict, analysis_dir: Path, given: list[Path] | None = None
) -> list[Path]:
    """The capture files to read for an analysis: ``given`` (``report --pcap``) if any, else
    the recorded paths as they are (relative ones from the current directory) or, failing
    that, by file name beside the analysis directory. Raises CaptureMissing with the line
    the user needs when a file is not there."""
    if given:
        missing = [p for p in given if not Path(p).is_file()]
        if missing:
            raise CaptureMissing(
                f"the capture {missing[0]} is not here: give --pcap with the "
                "capture the analysis was made from"
            )
        return [Path(p) for p in given]
    recorded = recorded_paths(summary)
    if not recorded:
        raise CaptureMissing(
            f"{analysis_dir} was analyzed without a capture (events only): "
            "time-sequence graphs need one (analyze with --pcap)"
        )
    found = []
    for text in recorded:
        p = Path(text)
        candidates = (
            [p] if p.is_absolute() else [p, analysis_dir / p.name, analysis_dir.parent / p.name]
        )
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            raise CaptureMissing(
                f"the capture {text} is not here: give --pcap to draw time-sequence graphs"
            )
        found.append(hit)
    return found


def _check_same_capture(meta, summary: dict, path: Path, index: int) -> None:
    """A capture given by hand must be the one analyzed: same records, same first packet."""
    cap = summary.get("capture") or {}
    files = cap.get("files")
    ref = (
        files[index]
        if files and index < len(files) and isinstance(files[index], dict)
        else (cap if not files else {})
    )
    for key in ("records", "first_ts_ns"):
        want, got = ref.get(key), getattr(meta, key, None)
        if want is not None and got is not None and want != got:
            raise BadInput(
                f"{path} is not the capture this analysis read ({key} {got}, the "
                f"analysis has {want}): give --pcap with the analyzed capture"
            )


@dataclass
class Endpoint:
    """One direction's 4-tuple in the packet table's layout (IPv4-mapped addresses)."""

    saddr_hi: int
    saddr_lo: int
    sport: int
    daddr_hi: int
    daddr_lo: int
    dport: int

    @classmethod
    def of_flow(cls, flow) -> Endpoint:
        shi, slo, _ = addr_from_str(str(flow["saddr"]))
        dhi, dlo, _ = addr_from_str(str(flow["daddr"]))
        return cls(shi, slo, int(flow["sport"]), dhi, dlo, int(flow["dport"]))

    def reverse(self) -> Endpoint:
        return Endpoint(
            self.daddr_hi, self.daddr_lo, self.dport, self.saddr_hi, self.saddr_lo, self.sport
        )

    def mask(self, p: dict[str, np.ndarray]) -> np.ndarray:
        return (
            (p["sport"] == self.sport)
            & (p["dport"] == self.dport)
            & (p["saddr_lo"] == np.uint64(self.saddr_lo))
            & (p["daddr_lo"] == np.uint64(self.daddr_lo))
            & (p["saddr_hi"] == np.uint64(self.saddr_hi))
            & (p["daddr_hi"] == np.uint64(self.daddr_hi))
        )


def _key(saddr_hi, saddr_lo, sport, daddr_hi, daddr_lo, dport) -> np.ndarray:
    """A 64-bit hash of a 4-tuple (splitmix64 steps): packets are grouped by it, and every
    group is checked against the exact 4-tuple, so a collision costs nothing but time."""
    h = np.full(len(np.atleast_1d(sport)), 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in (saddr_hi, saddr_lo, sport, daddr_hi, daddr_lo, dport):
            h ^= np.asarray(c).astype(np.uint64)
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
    return h


def _packet_keys(p: dict[str, np.ndarray]) -> np.ndarray:
    return _key(p["saddr_hi"], p["saddr_lo"], p["sport"], p["daddr_hi"], p["daddr_lo"], p["dport"])


def _endpoint_key(ep: Endpoint) -> np.uint64:
    return _key(
        *(
            np.array([v], dtype=np.uint64)
            for v in (ep.saddr_hi, ep.saddr_lo, ep.sport, ep.daddr_hi, ep.daddr_lo, ep.dport)
        )
    )[0]


class PacketIndex:
    """Packets of some 4-tuples, grouped by 4-tuple (time order inside a group)."""

    def __init__(self, packets: dict[str, np.ndarray]):
        keys = _packet_keys(packets)
        order = np.lexsort((packets["ts_ns"], keys))
        self.keys = keys[order]
        self.packets = {k: v[order] for k, v in packets.items()}

    def __len__(self) -> int:
        return len(self.keys)

    def of(self, ep: Endpoint) -> dict[str, np.ndarray]:
        """The packets sent from ep's source to its destination, in time order."""
        k = _endpoint_key(ep)
        lo, hi = np.searchsorted(self.keys, k, "left"), np.searchsorted(self.keys, k, "right")
        part = {name: v[lo:hi] for name, v in self.packets.items()}
        exact = ep.mask(part)
        return part if exact.all() else {name: v[exact] for name, v in part.items()}


def read_flow_packets(
    paths: list[Path], flows: list[Endpoint], summary: dict, check: bool = False
) -> PacketIndex:
    """The packets of ``flows`` (both directions) from the capture file(s).

    Each file is filtered right after it is read. ``check``: the files were given by hand;
    make sure they are the analyzed ones (records and first packet time, where known).
    """
    wanted = flows + [f.reverse() for f in flows]
    want_keys = np.unique(np.array([_endpoint_key(f) for f in wanted], dtype=np.uint64))
    ports = np.unique(np.array([f.sport for f in wanted], dtype=np.uint16))
    parts = []
    key_cols = ("saddr_hi", "saddr_lo", "sport", "daddr_hi", "daddr_lo", "dport")
    for i, path in enumerate(paths):
        with open_capture_file(path) as stream:
            for p in stream:
                pre = np.flatnonzero(np.isin(p["sport"], ports))  # a cheap first cut
                keys = _key(*(p[k][pre] for k in key_cols))
                rows = pre[np.isin(keys, want_keys)]
                parts.append({k: p[k][rows] for k in USED_COLUMNS})
            if check:
                _check_same_capture(stream.meta, summary, path, i)
    if not parts:
        from retranscope.schemas.packets import empty_packets

        parts.append({k: v for k, v in empty_packets().items() if k in USED_COLUMNS})
    return PacketIndex({k: np.concatenate([part[k] for part in parts]) for k in USED_COLUMNS})


def _signed32(x: np.ndarray) -> np.ndarray:
    """A difference of raw 32-bit sequence numbers as a signed distance (RFC 9293 §3.4:
    sequence arithmetic is modulo 2^32)."""
    return x.astype(np.uint32).view(np.int32).astype(np.int64)


def unwrap(raw: np.ndarray, base: int) -> np.ndarray:
    """Raw 32-bit numbers (in time order) as int64 offsets from ``base``: consecutive values
    are taken as the nearest in sequence space, so a flow may pass 4 GB."""
    if not len(raw):
        return np.zeros(0, dtype=np.int64)
    r = raw.astype(np.int64)
    steps = _signed32(np.diff(r) & 0xFFFFFFFF)
    first = _signed32(np.array([(r[0] - base) & 0xFFFFFFFF]))
    return np.concatenate([first, first[0] + np.cumsum(steps)])


def relative_to(ref_rel: np.ndarray, ref_raw: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Raw numbers placed next to known references (unwrapped value ``ref_rel`` of raw
    ``ref_raw``): the nearest sequence number to the reference."""
    return ref_rel + _signed32((raw.astype(np.int64) - ref_raw.astype(np.int64)) & 0xFFFFFFFF)


@dataclass
class FlowView:
    """One flow's data direction and the ACKs that answer it, sequence numbers as byte
    offsets from its first sequence number (the ISN when the SYN is captured), times as
    ns since ``t0_ns``."""

    t0_ns: int
    base_seq: int  # raw sequence number of offset 0
    # data direction: every packet of the flow
    t_ns: np.ndarray
    seq: np.ndarray
    end: np.ndarray  # seq + payload (+1 for SYN and FIN: they occupy a sequence number)
    seq_raw: np.ndarray
    frame: np.ndarray
    original: np.ndarray  # reaches beyond every earlier segment: new data
    # reverse direction: its packets carrying ACK
    ack_t_ns: np.ndarray
    ack: np.ndarray
    ack_raw: np.ndarray
    rwnd_edge: np.ndarray | None  # ack + scaled window; None: the scale is unknown
    sack_t_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sack_l: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sack_r: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    sack_dsack: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    sack_ack_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    window_note: str = ""

    def place(self, t_ns: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Raw sequence numbers (retransmission rows) as offsets, read next to the data
        packet sent nearest before each time."""
        if not len(self.t_ns):
            return relative_to(
                np.zeros(len(raw), np.int64), np.full(len(raw), self.base_seq, np.int64), raw
            )
        i = np.clip(
            np.searchsorted(self.t_ns, t_ns - self.t0_ns, side="right") - 1, 0, len(self.t_ns) - 1
        )
        return relative_to(self.seq[i], self.seq_raw[i], raw)


def _sel(p: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in p.items()}


def flow_view(index: PacketIndex, flow, span_ns: tuple[int, int]) -> FlowView:
    """The FlowView of ``flow`` (a flows.parquet row) from its 4-tuple's packets, limited
    to ``span_ns`` (the connection's time span: a 4-tuple can be reused)."""
    ep = Endpoint.of_flow(flow)

    def in_span(p):
        return _sel(p, (p["ts_ns"] >= span_ns[0]) & (p["ts_ns"] <= span_ns[1]))

    d = in_span(index.of(ep))
    r = in_span(index.of(ep.reverse()))
    t0 = int(span_ns[0])
    base = int(d["seq"][0]) if len(d["seq"]) else (int(r["ack"][0]) if len(r["ack"]) else 0)
    seq = unwrap(d["seq"], base)
    flags = d["flags"].astype(np.int64)
    length = d["payload_len"].astype(np.int64) + ((flags & TCP_SYN) != 0) + ((flags & TCP_FIN) != 0)
    end = seq + length
    reach = np.maximum.accumulate(end) if len(end) else end
    before = np.concatenate([[np.iinfo(np.int64).min], reach[:-1]]) if len(end) else end
    original = (length > 0) & (end > before)
    has_ack = (r["flags"].astype(np.int64) & TCP_ACK) != 0
    a = _sel(r, has_ack)
    ack = unwrap(a["ack"], base) if len(a["ack"]) else np.zeros(0, np.int64)
    rwnd, note = _receive_window(d, r, a, ack)
    view = FlowView(
        t0,
        base,
        d["ts_ns"] - t0,
        seq,
        end,
        d["seq"],
        d["frame"],
        original,
        a["ts_ns"] - t0,
        ack,
        a["ack"],
        rwnd,
        window_note=note,
    )
    _add_sack(view, a)
    return view


def _receive_window(d, r, a, ack) -> tuple[np.ndarray | None, str]:
    """Right edge of the receive window at each ACK: ack + (window << receiver's scale).
    Window scaling (RFC 7323 §2.2) is in force only when both SYNs carried the option,
    and never applies to a SYN's own window."""

    def syn_scale(p):
        syn = (p["flags"].astype(np.int64) & TCP_SYN) != 0
        return int(p["opt_wscale"][syn][0]) if syn.any() else None

    ours, theirs = syn_scale(d), syn_scale(r)
    if ours is None or theirs is None:
        return (
            None,
            "receive window not drawn: the handshake is not in the capture, so "
            "the window scale is unknown",
        )
    shift = theirs if (ours >= 0 and theirs >= 0) else 0
    is_syn = (a["flags"].astype(np.int64) & TCP_SYN) != 0
    win = a["win"].astype(np.int64) << np.where(is_syn, 0, shift)
    return ack + win, ""


def _add_sack(view: FlowView, a: dict[str, np.ndarray]) -> None:
    """SACK blocks (RFC 2018) of the ACKs, as offsets; D-SACK (RFC 2883): the first block
    lies at or below the cumulative ACK, or inside the second block."""
    n = a["sack_n"].astype(np.int64)
    rows = np.flatnonzero(n > 0)
    if not len(rows):
        return
    ls, rs, ts, idx, ds = [], [], [], [], []
    for b in range(4):
        on = rows[n[rows] > b]
        if not len(on):
            break
        left = relative_to(view.ack[on], a["ack"][on], a[f"sack_l{b}"][on])
        right = relative_to(view.ack[on], a["ack"][on], a[f"sack_r{b}"][on])
        if b == 0:
            dsack = right <= view.ack[on]
            two = n[on] > 1
            l1 = relative_to(view.ack[on], a["ack"][on], a["sack_l1"][on])
            r1 = relative_to(view.ack[on], a["ack"][on], a["sack_r1"][on])
            dsack |= two & (left >= l1) & (right <= r1)
        else:
            dsack = np.zeros(len(on), bool)
        ls.append(left)
        rs.append(right)
        ts.append(view.ack_t_ns[on])
        idx.append(on)
        ds.append(dsack)
    order = np.argsort(np.concatenate(ts), kind="stable")
    view.sack_t_ns = np.concatenate(ts)[order]
    view.sack_l = np.concatenate(ls)[order]
    view.sack_r = np.concatenate(rs)[order]
    view.sack_dsack = np.concatenate(ds)[order]
    view.sack_ack_index = np.concatenate(idx)[order]


def flow_span(flows: pd.DataFrame, flow) -> tuple[int, int]:
    """The connection's time span: the flow's and its reverse flow's."""
    lo, hi = int(flow["first_ts_ns"]), int(flow["last_ts_ns"])
    rev = flow.get("rev_flow_id", -1)
    if rev is not None and not pd.isna(rev) and int(rev) >= 0:
        other = flows[flows["flow_id"] == int(rev)]
        if len(other):
            lo = min(lo, int(other["first_ts_ns"].iloc[0]))
            hi = max(hi, int(other["last_ts_ns"].iloc[0]))
    return lo, hi


def ack_delay_ns(view: FlowView, end_rel: np.ndarray) -> np.ndarray:
    """For each sequence offset (the end of a probed range): the time from the original
    transmission of its last byte to the first ACK that covers it, ns; -1 if either is
    not in the capture. A receiver's delayed ACK (RFC 9293 §3.8.6.3, Linux up to 40 ms
    and more) shows here; so does an ACK that only the probe itself drew out."""
    out = np.full(len(end_rel), -1, dtype=np.int64)
    o = np.flatnonzero(view.original)
    if not len(o) or not len(view.ack):
        return out
    reach = np.maximum.accumulate(view.end[o])
    i = np.searchsorted(reach, end_rel, side="left")  # first original reaching the byte
    ok = i < len(o)
    t_orig = view.t_ns[o[np.minimum(i, len(o) - 1)]]
    acked = np.maximum.accumulate(view.ack)
    j = np.searchsorted(acked, end_rel, side="left")
    ok &= j < len(acked)
    t_ack = view.ack_t_ns[np.minimum(j, len(acked) - 1)]
    ok &= t_ack >= t_orig
    out[ok] = (t_ack - t_orig)[ok]
    return out
