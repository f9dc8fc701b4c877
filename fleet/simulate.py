"""A simulated fleet made from real recordings: each copy has its own host name, its times
shifted and its addresses rewritten, in the capture, the events and run.json alike, so
each copy analyzes to its original's result, moved in time and address space
(tests/test_fleet_simulate.py proves it). bench/bench_fleet.py builds 1,000 runs this way.

The capture is rewritten in bulk with numpy over the pcap records: the record offsets are
walked once per original (each record's length gives the next one's start), then every
copy is a few vectorized gathers and scatters: timestamps, IPv4/IPv6 addresses, and the
IPv4 header and TCP checksums updated incrementally for the new addresses (RFC 1624).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retranscope.errors import BadInput

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
GLOBAL_HEADER = 24
RECORD_HEADER = 16
#: Link types (tcpdump.org linktypes) and where their network header starts, and where
#: their protocol (ethertype) field is: Ethernet, Linux cooked v1 and v2.
LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 1, 113, 276
L3_OFFSET = {
    LINKTYPE_ETHERNET: (14, 12),
    LINKTYPE_LINUX_SLL: (16, 14),
    LINKTYPE_LINUX_SLL2: (20, 0),
}
ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP = 0x0800, 0x86DD, 6


@dataclass
class Capture:
    """A pcap file as bytes and the start of each record (after its 16-byte header)."""

    data: np.ndarray  # uint8
    big_endian: bool
    linktype: int
    record_starts: np.ndarray  # int64, offset of each record's header
    incl_len: np.ndarray  # int64

    @classmethod
    def read(cls, path: Path) -> Capture:
        data = np.fromfile(path, dtype=np.uint8)
        if data.size < GLOBAL_HEADER:
            raise BadInput(f"{path}: shorter than a pcap header")
        magic_le = int(data[:4].view("<u4")[0])
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            big = False
        elif int(data[:4].view(">u4")[0]) in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            big = True
        else:
            raise BadInput(f"{path}: not a pcap file (pcapng is not rewritten here)")
        u4 = ">u4" if big else "<u4"
        linktype = int(data[20:24].view(u4)[0]) & 0x0FFFFFFF
        if linktype not in L3_OFFSET:
            raise BadInput(f"{path}: link type {linktype} is not rewritten here")
        starts, lens = [], []
        pos, end = GLOBAL_HEADER, data.size
        while pos + RECORD_HEADER <= end:  # sequential by nature: a length gives the next
            n = int(data[pos + 8 : pos + 12].view(u4)[0])
            if pos + RECORD_HEADER + n > end:
                break
            starts.append(pos)
            lens.append(n)
            pos += RECORD_HEADER + n
        return cls(data, big, linktype, np.array(starts, np.int64), np.array(lens, np.int64))


def _gather(data: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """Bytes ``[at, at+width)`` of each offset, as an (n, width) array."""
    return data[at[:, None] + np.arange(width)]


def _words(b: np.ndarray) -> np.ndarray:
    """(n, 2k) bytes -> (n, k) big-endian 16-bit words, as int64."""
    return (b[:, 0::2].astype(np.int64) << 8) | b[:, 1::2]


def _fix_checksum(data: np.ndarray, at: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
    """RFC 1624 eqn. 3, per packet: HC' = ~(~HC + ~m + m'), over the changed words."""
    if not at.size:
        return
    hc = _words(_gather(data, at, 2))[:, 0]
    s = (~hc & 0xFFFF) + ((~_words(old)) & 0xFFFF).sum(axis=1) + _words(new).sum(axis=1)
    for _ in range(3):
        s = (s & 0xFFFF) + (s >> 16)
    hc = ~s & 0xFFFF
    data[at[:, None] + np.arange(2)] = np.stack([hc >> 8, hc & 0xFF], axis=1).astype(np.uint8)


def _rewrite_family(
    data: np.ndarray,
    l3: np.ndarray,
    caplen_end: np.ndarray,
    width: int,
    src_off: int,
    mapping: dict[bytes, bytes],
    tcp_at: np.ndarray,
    ip_csum_at: np.ndarray | None,
) -> None:
    """Rewrite source and destination addresses of packets with network header at ``l3``."""
    olds, news = [], []
    for off in (src_off, src_off + width):
        ok = l3 + off + width <= caplen_end
        at = l3[ok] + off
        old = _gather(data, at, width)
        keys = [bytes(r) for r in old]
        new = np.array([list(mapping.get(k, k)) for k in keys], np.uint8).reshape(-1, width)
        data[at[:, None] + np.arange(width)] = new
        full_old = np.zeros((l3.size, width), np.uint8)
        full_new = np.zeros((l3.size, width), np.uint8)
        full_old[ok], full_new[ok] = old, new
        olds.append(full_old)
        news.append(full_new)
    old, new = np.concatenate(olds, axis=1), np.concatenate(news, axis=1)
    if ip_csum_at is not None:
        _fix_checksum(data, ip_csum_at, old, new)
    has_tcp = tcp_at + 18 <= caplen_end
    _fix_checksum(data, tcp_at[has_tcp] + 16, old[has_tcp], new[has_tcp])


def rewrite_capture(cap: Capture, shift_s: int, mapping: dict[bytes, bytes]) -> np.ndarray:
    """The capture's bytes with timestamps moved by ``shift_s`` and addresses mapped
    (packed address bytes -> packed address bytes; unmapped ones stay)."""
    data = cap.data.copy()
    u4 = ">u4" if cap.big_endian else "<u4"
    ts_at = cap.record_starts
    ts = _gather(data, ts_at, 4).copy().view(u4)[:, 0].astype(np.int64) + shift_s
    data[ts_at[:, None] + np.arange(4)] = ts.astype(u4).view(np.uint8).reshape(-1, 4)
    l3_off, proto_off = L3_OFFSET[cap.linktype]
    pkt = cap.record_starts + RECORD_HEADER
    end = pkt + cap.incl_len
    proto = _words(_gather(data, np.minimum(pkt + proto_off, data.size - 2), 2))[:, 0]
    if cap.linktype == LINKTYPE_ETHERNET:  # one 802.1Q tag
        tagged = proto == 0x8100
        proto[tagged] = _words(_gather(data, pkt[tagged] + 16, 2))[:, 0]
        l3 = pkt + l3_off + 4 * tagged
    else:
        l3 = pkt + l3_off
    v4 = (proto == ETH_P_IP) & (l3 + 20 <= end)
    l3_4 = l3[v4]
    ihl = (data[l3_4] & 0x0F).astype(np.int64) * 4
    tcp4 = data[l3_4 + 9] == IPPROTO_TCP
    _rewrite_family(
        data, l3_4[tcp4], end[v4][tcp4], 4, 12, mapping, (l3_4 + ihl)[tcp4], l3_4[tcp4] + 10
    )
    v6 = (proto == ETH_P_IPV6) & (l3 + 40 <= end)
    l3_6 = l3[v6]
    tcp6 = data[l3_6 + 6] == IPPROTO_TCP
    _rewrite_family(data, l3_6[tcp6], end[v6][tcp6], 16, 8, mapping, l3_6[tcp6] + 40, None)
    return data


def packed_address(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


@dataclass
class Original:
    """One recording to copy: its capture parsed once, its events, its run.json."""

    run_dir: Path
    capture: Capture
    run: dict
    events: list[tuple[str, pa.Table]]
    local: set[str]  # addresses of the recorded host (the events' senders)
    addresses: set[str]

    @classmethod
    def load(cls, run_dir: Path) -> Original:
        run = json.loads((run_dir / "run.json").read_text())
        events = [
            (f.name, pq.read_table(f)) for f in sorted((run_dir / "events").glob("*.parquet"))
        ]
        local = {a for _, t in events for a in t.column("saddr").to_pylist()}
        addrs = local | {a for _, t in events for a in t.column("daddr").to_pylist()}
        return cls(run_dir, Capture.read(run_dir / "capture.pcap"), run, events, local, addrs)


def address_map(orig: Original, host_index: int, peers: int) -> dict[str, str]:
    """The recorded host's addresses become its own; the others one of ``peers`` shared
    peers (so peers are seen from many hosts). The last byte is kept."""
    h, p = host_index, host_index % peers
    out = {}
    for a in sorted(orig.addresses):
        ip = ipaddress.ip_address(a)
        last = ip.packed[-1]
        if ip.version == 4:
            new = (
                f"10.{(h >> 8) & 255}.{h & 255}.{last}" if a in orig.local else f"198.18.{p}.{last}"
            )
        else:
            new = f"fd10:{h:x}::{last:x}" if a in orig.local else f"fd20:{p:x}::{last:x}"
        out[a] = str(ipaddress.ip_address(new))
    return out


def copy_run(
    orig: Original, dest: Path, host: str, run_id: str, shift_s: int, addr_map: dict[str, str]
) -> Path:
    """Write one copy of ``orig`` as a run directory at ``dest``."""
    shift_ns = shift_s * 10**9
    (dest / "events").mkdir(parents=True, exist_ok=True)
    packed = {packed_address(a): packed_address(b) for a, b in addr_map.items()}
    rewrite_capture(orig.capture, shift_s, packed).tofile(dest / "capture.pcap")
    for name, table in orig.events:
        t = table
        for col in ("saddr", "daddr"):
            vals = [addr_map.get(a, a) for a in t.column(col).to_pylist()]
            t = t.set_column(
                t.schema.get_field_index(col),
                t.schema.field(col),
                pa.array(vals, t.schema.field(col).type),
            )
        ts = pc.add(t.column("ts_wall_ns"), pa.scalar(shift_ns, pa.int64()))
        t = t.set_column(t.schema.get_field_index("ts_wall_ns"), t.schema.field("ts_wall_ns"), ts)
        meta = dict(table.schema.metadata or {})
        meta[b"run_id"] = run_id.encode()
        pq.write_table(t.replace_schema_metadata(meta), dest / "events" / name, compression="zstd")
    run = json.loads(json.dumps(orig.run))
    run.update(host=host, run_id=run_id)
    for key in ("started_wall_ns", "ended_wall_ns"):
        if run.get(key) is not None:
            run[key] += shift_ns
    for off in run.get("clock_offsets") or []:
        off["offset_ns"] += shift_ns
    for f in run.get("files") or []:
        for key in ("first_ts_wall_ns", "last_ts_wall_ns"):
            if f.get(key) is not None:
                f[key] += shift_ns
    if run.get("pcap"):
        run["pcap"]["path"] = str(dest / "capture.pcap")
    (dest / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return dest


def build_fleet(
    originals: list[Path],
    root: Path,
    n_runs: int,
    *,
    days: int = 7,
    peers: int = 50,
    start_day_s: int | None = None,
) -> list[Path]:
    """``n_runs`` copies of ``originals`` (round robin) under ``root/<host>/<name>``: host
    ``sim-NNNN`` per run, run i starting on day ``i % days`` at hour ``(i // days) % 24``
    after ``start_day_s`` (default: the first original's day), with deterministic run_ids."""
    loaded = [Original.load(p) for p in originals]
    base = start_day_s
    if base is None:
        base = loaded[0].run["started_wall_ns"] // 10**9 // 86400 * 86400
    out = []
    for i in range(n_runs):
        orig = loaded[i % len(loaded)]
        host = f"sim-{i:04d}"
        start_s = orig.run["started_wall_ns"] // 10**9
        target = base + (i % days) * 86400 + ((i // days) % 24) * 3600 + start_s % 3600
        run_id = uuid.uuid5(uuid.NAMESPACE_URL, f"retranscope-sim/{i}/{orig.run['run_id']}").hex
        dest = root / host / orig.run_dir.name
        if dest.exists():
            shutil.rmtree(dest)
        out.append(
            copy_run(orig, dest, host, run_id, target - start_s, address_map(orig, i, peers))
        )
    return out
