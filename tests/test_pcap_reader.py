"""The capture reader against scapy's and tshark's reading of the same files.

Fixtures live in tests/fixtures/reader/ and are written by
tests/fixtures/make_reader_fixtures.py (scapy-built packets). Every decodable fixture is
compared row by row, field by field, with scapy's dissection of the same file, and with
tshark's where tshark is installed; then each scenario checks what it exists for.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# imported for the layer bindings they add to scapy's dissection (PPPoE, MPLS, VXLAN,
# Geneve), which the encapsulation fixtures need
import scapy.contrib.geneve  # noqa: F401
import scapy.contrib.mpls  # noqa: F401
import scapy.layers.ppp  # noqa: F401
import scapy.layers.vxlan  # noqa: F401
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Ether
from scapy.utils import RawPcapNgReader, RawPcapReader

from retranscope.analyze.capture import Capture, read_capture
from retranscope.errors import (
    BadInput,
    CaptureError,
    NotACapture,
    TruncatedCapture,
    UnknownLinkType,
)
from retranscope.lines import LineReader, MarkerNotSeen
from retranscope.schemas.packets import PACKET_COLUMNS, addr_from_str

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "reader"
TSHARK = shutil.which("tshark")

DECODABLE = [
    "eth_v4_v6.pcap",
    "eth_vlan_qinq.pcap",
    "eth_v4_options_fragments.pcap",
    "eth_v6_ext_headers.pcap",
    "sll_v1.pcap",
    "sll_v2.pcap",
    "raw_101.pcap",
    "raw_dlt12.pcap",
    "raw_dlt14.pcap",
    "ipv4_228.pcap",
    "ipv6_229.pcap",
    "null_le.pcap",
    "null_be_host.pcap",
    "loop_108.pcap",
    "headers_only_s80.pcap",
    "headers_only_s64.pcap",
    "headers_only_s40.pcap",
    "ns_resolution.pcap",
    "big_endian_us.pcap",
    "big_endian_ns.pcap",
    "malformed_tcp_options.pcap",
    "pcapng_two_ifaces.pcapng",
    "pcapng_big_endian_s96.pcapng",
    "pcapng_two_sections.pcapng",
    "pcapng_scapy.pcapng",
    "pcapng_drop_counts.pcapng",
    # encapsulations and the link types that carry them (link.py)
    "encap_pppoe.pcap",
    "encap_mpls.pcap",
    "encap_gre.pcap",
    "encap_vxlan.pcap",
    "encap_geneve.pcap",
    "encap_ip_in_ip.pcap",
    "encap_ah.pcap",
    "encap_undecoded.pcap",
    "ppp_9.pcap",
    "ppp_hdlc_50.pcap",
    "c_hdlc_104.pcap",
    "nflog_239.pcap",
    "ipoib_242.pcap",
    "sll_encapsulations.pcap",
    "sll2_tun.pcap",
    "timestamp_sub_second_overflow_us.pcap",
    "timestamp_sub_second_overflow_ns.pcap",
    # damaged, but read up to the damage
    "truncated_mid_record.pcap",
    "truncated_mid_record_header.pcap",
    "corrupt_caplen.pcap",
    "truncated_mid_block.pcapng",
]


def read(name: str) -> Capture:
    return read_capture(FIXTURES / name)


def rows(cap: Capture) -> list[dict]:
    n = len(cap.packets["frame"])
    return [{k: v[i].item() for k, v in cap.packets.items()} for i in range(n)]


# ----------------------------------------------------------------------------------------
# What scapy says
# ----------------------------------------------------------------------------------------

AF_INET6_ANY = (10, 24, 28, 30)


def _dissect(linktype: int, data: bytes):
    """scapy's packet for one frame, and the Linux pkttype where the link layer has one."""
    if linktype == 1:
        return Ether(data), -1
    if linktype == 113:
        p = CookedLinux(data)
        return p, p.pkttype
    if linktype == 276:
        p = CookedLinuxV2(data)
        return p, p.pkttype
    if linktype in (0, 108):
        order = "big" if linktype == 108 else "little"
        af = int.from_bytes(data[:4], order)
        if af > 0xFFFF:
            af = int.from_bytes(data[:4], "big")
        if af == 2:
            return IP(data[4:]), -1
        return (IPv6(data[4:]), -1) if af in AF_INET6_ANY else (None, -1)
    if linktype in (12, 14, 101):
        return (IP(data) if data[0] >> 4 == 4 else IPv6(data)), -1
    if linktype == 228:
        return IP(data), -1
    if linktype == 229:
        return IPv6(data), -1
    return _ip_after_link_header(linktype, data), -1


def _ip_after_link_header(linktype: int, data: bytes):
    """The IP packet of link types scapy does not dissect, found by hand from their
    specifications (PPP RFC 1661/1662, Cisco HDLC RFC 1547, NFLOG, IPoIB)."""
    if linktype in (9, 50, 104):
        if data[0] in (0x0F, 0x8F):
            ethertype, rest = int.from_bytes(data[2:4], "big"), data[4:]
        else:
            if data[:2] == b"\xff\x03":
                data = data[2:]
            proto, rest = (
                (data[0], data[1:]) if data[0] & 1 else (int.from_bytes(data[:2], "big"), data[2:])
            )
            ethertype = {0x21: 0x0800, 0x57: 0x86DD}[proto]
    elif linktype == 239:
        at = 4
        while True:
            length, kind = struct.unpack_from("<HH", data, at)
            if kind == 9:
                rest = data[at + 4 : at + length]
                break
            at += (length + 3) & ~3
        ethertype = 0x0800 if data[0] == 2 else 0x86DD
    else:
        assert linktype == 242, f"fixture with link type {linktype}"
        ethertype, rest = int.from_bytes(data[40:42], "big"), data[44:]
    return IP(rest) if ethertype == 0x0800 else IPv6(rest)


def _ext_bytes(pkt) -> int:
    """Bytes of IPv6 extension headers (and AH) between an IPv6 header and TCP."""
    total = 0
    layer = pkt.payload
    while not isinstance(layer, TCP):
        if isinstance(layer, IPv6ExtHdrFragment):
            total += 8
        elif isinstance(layer, (IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting)):
            total += (layer.len + 1) * 8
        elif isinstance(layer, AH):
            total += (layer.payloadlen + 2) * 4
        else:
            raise AssertionError(f"unexpected layer {layer.name}")
        layer = layer.payload
    return total


def _ip_under(tcp):
    """The IP header that carries this TCP header: the innermost one, in a tunnel."""
    layer = tcp.underlayer
    while not isinstance(layer, (IP, IPv6)):
        layer = layer.underlayer
    return layer


def scapy_rows(path: Path, *, options: bool = True) -> list[dict]:
    """One expected row per frame in which scapy finds a whole TCP header; the option
    columns too, where the options were captured whole and ``options`` is set."""
    ng = path.suffix == ".pcapng"
    reader = RawPcapNgReader(str(path)) if ng else RawPcapReader(str(path))
    out = []
    prev_ts = 0
    linktypes_seen: list[int] = []
    with reader:
        for frame, (data, meta) in enumerate(reader, start=1):
            if ng:
                linktype = meta.linktype
                if meta.tshigh is None:  # an SPB: the reader gives it the previous time
                    ts_ns = prev_ts
                else:
                    ts_ns = ((meta.tshigh << 32) | meta.tslow) * 10**9 // meta.tsresol
            else:
                linktype = reader.linktype
                ts_ns = meta.sec * 10**9 + meta.usec * (1 if reader.nano else 1000)
            prev_ts = ts_ns
            if linktype not in linktypes_seen:
                linktypes_seen.append(linktype)
            pkt, pkttype = _dissect(linktype, data)
            tcp = pkt.getlayer(TCP) if pkt is not None else None
            if tcp is None or len(tcp.original) < 20:
                continue
            ip = _ip_under(tcp)
            if isinstance(ip, IP):
                family, src, dst = 4, ip.src, ip.dst
                ah = ip.payload if isinstance(ip.payload, AH) else None
                seg_len = ip.len - ip.ihl * 4 - ((ah.payloadlen + 2) * 4 if ah else 0)
            else:
                family, src, dst = 6, ip.src, ip.dst
                seg_len = ip.plen - _ext_bytes(ip)
            s_hi, s_lo, _ = addr_from_str(src)
            d_hi, d_lo, _ = addr_from_str(dst)
            opts_cut = len(tcp.original) < tcp.dataofs * 4
            row = {
                "frame": frame,
                "ts_ns": ts_ns,
                "pkttype": pkttype,
                "family": family,
                "saddr_hi": s_hi,
                "saddr_lo": s_lo,
                "daddr_hi": d_hi,
                "daddr_lo": d_lo,
                "sport": tcp.sport,
                "dport": tcp.dport,
                "seq": tcp.seq,
                "ack": tcp.ack,
                "flags": int(tcp.flags),
                "win": tcp.window,
                "payload_len": seg_len - tcp.dataofs * 4,
                "opts_cut": opts_cut,
                # the two fixtures with several interfaces have one link type each
                "iface": linktypes_seen.index(linktype) if ng else 0,
            }
            if options and not opts_cut:
                opts = dict((k, v) for k, v in tcp.options if k not in ("NOP", "EOL"))
                sack = list(opts.get("SAck", ()))
                row.update(
                    {
                        "opt_mss": opts.get("MSS", 0),
                        "opt_wscale": opts.get("WScale", -1),
                        "opt_sackok": "SAckOK" in opts,
                        "opt_ts": "Timestamp" in opts,
                        "tsval": opts.get("Timestamp", (0, 0))[0],
                        "tsecr": opts.get("Timestamp", (0, 0))[1],
                        "sack_n": len(sack) // 2,
                    }
                )
                sack += [0] * (8 - len(sack))
                for b in range(4):
                    row[f"sack_l{b}"], row[f"sack_r{b}"] = sack[2 * b], sack[2 * b + 1]
            out.append(row)
    return out


@pytest.mark.parametrize("name", DECODABLE)
def test_table_has_exactly_the_declared_columns(name):
    cap = read(name)
    assert list(cap.packets) == [c[0] for c in PACKET_COLUMNS]
    lengths = {len(v) for v in cap.packets.values()}
    assert lengths == {cap.meta.tcp_packets}
    for col, dtype, _ in PACKET_COLUMNS:
        assert cap.packets[col].dtype == np.dtype(dtype), col
        assert cap.packets[col].flags.c_contiguous, col


@pytest.mark.parametrize("name", DECODABLE)
def test_matches_scapy_field_by_field(name, tmp_path):
    cap = read(name)
    got = rows(cap)
    if cap.meta.truncated:
        # scapy reads damaged files differently (some raise, some return garbage): the
        # rows before the damage are what both must agree on
        want = scapy_rows_upto(FIXTURES / name, len(got), tmp_path)
    elif name == "pcapng_two_sections.pcapng":
        want = scapy_rows_by_section(FIXTURES / name, tmp_path)
    else:
        # scapy's rules for broken options are not Linux's: a test below has those
        want = scapy_rows(FIXTURES / name, options=name != "malformed_tcp_options.pcap")
    if name in SCAPY_STOPS_SHORT:
        # scapy does not dissect these layers (what follows AH or WCCP, PPPoE and MPLS behind
        # Linux cooked headers): the frames it does dissect must agree, and tshark
        # (test_matches_tshark) judges all of them
        ours = {r["frame"]: r for r in got}
        assert {w["frame"] for w in want} <= set(ours)
        got = [ours[w["frame"]] for w in want]
    assert [r["frame"] for r in got] == [r["frame"] for r in want]
    for g, w in zip(got, want):
        for key, value in w.items():
            assert g[key] == value, f"frame {g['frame']} {key}: {g[key]} != {value}"


SCAPY_STOPS_SHORT = {"encap_ah.pcap", "encap_gre.pcap", "sll_encapsulations.pcap", "sll2_tun.pcap"}


def scapy_rows_by_section(path: Path, tmp_path: Path) -> list[dict]:
    """scapy keeps the first section's interfaces for the whole file: give it one section
    at a time, then number frames and interfaces on through the file."""
    data = path.read_bytes()
    second = data.index(struct.pack(">I", 0x0A0D0D0A), 4)  # the next SHB
    out: list[dict] = []
    frames_before = 0
    for i, part in enumerate((data[:second], data[second:])):
        one = tmp_path / f"section{i}.pcapng"
        one.write_bytes(part)
        for r in scapy_rows(one):
            r["frame"] += frames_before
            r["iface"] += i
            out.append(r)
        with RawPcapNgReader(str(one)) as reader:
            frames_before += sum(1 for _ in reader)
    return out


def scapy_rows_upto(path: Path, n_rows: int, tmp_path: Path) -> list[dict]:
    """scapy's rows for a damaged file: read from a copy cut where the reader stopped."""
    meta = read_capture(path).meta
    cut = tmp_path / path.name
    cut.write_bytes(path.read_bytes()[: meta.truncated_at_offset])
    return scapy_rows(cut)[:n_rows]


def assert_same_capture(got: Capture, want: Capture) -> None:
    assert got.meta == want.meta
    for col, _, _ in PACKET_COLUMNS:
        assert got.packets[col].dtype == want.packets[col].dtype
        assert np.array_equal(got.packets[col], want.packets[col]), col


@pytest.mark.parametrize("name", DECODABLE + ["malformed_tcp_options.pcap"])
@pytest.mark.parametrize("chunk_bytes", [40, 333, 4096])
def test_reading_in_small_blocks_changes_nothing(name, chunk_bytes, monkeypatch):
    # The file is read a block at a time (a record cut by a block's end is carried into
    # the next) and each block's records are decoded DECODE_CHUNK_RECORDS at a time: the
    # same rows, skip counts, notes and warnings as in one pass.
    import retranscope.analyze.capture.chunks as chunks

    whole = read_capture(FIXTURES / name)
    monkeypatch.setattr(chunks, "DECODE_CHUNK_RECORDS", 3)
    assert_same_capture(read_capture(FIXTURES / name, chunk_bytes=chunk_bytes), whole)


@pytest.mark.parametrize("name", DECODABLE)
def test_every_record_is_accounted_for(name):
    m = read(name).meta
    assert m.tcp_packets + m.skipped_non_tcp + sum(m.skipped_other.values()) == m.records
    json.dumps(m.to_dict())  # the report stores it as JSON


# ----------------------------------------------------------------------------------------
# What tshark says
# ----------------------------------------------------------------------------------------

TSHARK_FIELDS = [
    "frame.number",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.len",
    "tcp.flags",
    "tcp.window_size_value",
    "tcp.options.mss_val",
    "tcp.options.wscale.shift",
    "tcp.options.timestamp.tsval",
    "tcp.options.timestamp.tsecr",
    "tcp.options.sack_le",
    "tcp.options.sack_re",
]


def tshark_rows(path: Path) -> list[dict]:
    # A TCP header quoted inside an ICMP error (RFC 792, RFC 4443 §3.2) is not a segment.
    cmd = [
        TSHARK,
        "-r",
        str(path),
        "-n",
        "-Y",
        "tcp && !icmp && !icmpv6",
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-o",
        "tcp.relative_sequence_numbers:FALSE",
        "-o",
        "ip.defragment:FALSE",
        "-o",
        "ipv6.defragment:FALSE",
    ]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = []
    for line in proc.stdout.splitlines():
        out.append(dict(zip(TSHARK_FIELDS, line.split("|"))))
    return out


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize(
    "name", [n for n in DECODABLE if "truncated" not in n and "corrupt" not in n]
)
def test_matches_tshark(name):
    cap = read(name)
    ours = {r["frame"]: r for r in rows(cap)}
    theirs = tshark_rows(FIXTURES / name)
    # tshark also shows TCP in frames whose TCP header is cut; the reader skips those
    complete = [t for t in theirs if int(t["frame.number"]) in ours]
    assert len(complete) == len(ours)
    for t in complete:
        r = ours[int(t["frame.number"])]
        assert (r["sport"], r["dport"]) == (int(t["tcp.srcport"]), int(t["tcp.dstport"]))
        assert (r["seq"], r["ack"]) == (int(t["tcp.seq_raw"]), int(t["tcp.ack_raw"]))
        assert r["flags"] == int(t["tcp.flags"], 16)
        assert r["win"] == int(t["tcp.window_size_value"])
        if t["tcp.len"]:  # empty for first fragments, whose length tshark leaves open
            assert r["payload_len"] == int(t["tcp.len"])
        if r["opts_cut"] or name == "malformed_tcp_options.pcap":
            continue  # tshark reads into a cut option; the reader does not
        assert r["opt_mss"] == int(t["tcp.options.mss_val"] or 0)
        assert r["opt_wscale"] == int(t["tcp.options.wscale.shift"] or -1)
        assert r["tsval"] == int(t["tcp.options.timestamp.tsval"] or 0)
        assert r["tsecr"] == int(t["tcp.options.timestamp.tsecr"] or 0)
        le = [int(x) for x in t["tcp.options.sack_le"].split(",") if x]
        re_ = [int(x) for x in t["tcp.options.sack_re"].split(",") if x]
        assert r["sack_n"] == len(le)
        assert [r[f"sack_l{b}"] for b in range(len(le))] == le
        assert [r[f"sack_r{b}"] for b in range(len(re_))] == re_


def _bench_module():
    """bench/bench_reader.py, whose generator writes big synthetic captures quickly."""
    spec = importlib.util.spec_from_file_location(
        "bench_reader", HERE.parent / "bench" / "bench_reader.py"
    )
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_reader"] = bench
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_bulk_synthetic_capture_matches_tshark(tmp_path):
    """The benchmark's generator at a few thousand packets: every vectorised path at once
    (VLAN and untagged, v4 and v6, SACK with 1-3 blocks, headers-only snaplen)."""
    bench = _bench_module()
    path = tmp_path / "synthetic.pcap"
    bench.make_synthetic_pcap(str(path), 4000, snaplen=128, seed=7)
    cap = read_capture(path)
    assert cap.meta.tcp_packets == 4000
    theirs = tshark_rows(path)
    p = cap.packets
    assert [int(t["frame.number"]) for t in theirs] == p["frame"].tolist()
    assert [int(t["tcp.seq_raw"]) for t in theirs] == p["seq"].tolist()
    assert [int(t["tcp.ack_raw"]) for t in theirs] == p["ack"].tolist()
    assert [int(t["tcp.len"]) for t in theirs] == p["payload_len"].tolist()
    assert [int(t["tcp.options.timestamp.tsval"]) for t in theirs] == p["tsval"].tolist()
    sack_n = [len([x for x in t["tcp.options.sack_le"].split(",") if x]) for t in theirs]
    assert sack_n == p["sack_n"].tolist()
    assert sum(sack_n) > 0
    first_edges = [int(t["tcp.options.sack_le"].split(",")[0] or 0) for t in theirs]
    assert first_edges == p["sack_l0"].tolist()


# ----------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------


def by_frame(cap: Capture) -> dict[int, dict]:
    return {r["frame"]: r for r in rows(cap)}


def test_ethernet_conversation_and_non_tcp():
    cap = read("eth_v4_v6.pcap")
    m = cap.meta
    assert (m.format, m.linktypes, m.ts_resolution_ns) == ("pcap", [1], 1000)
    assert m.skipped_non_tcp == 3 and m.skipped_other == {}  # ARP, UDP, ICMP
    p = cap.packets
    assert set(p["family"].tolist()) == {4, 6}
    assert (p["flags"] & 0x100).any()  # the AE bit is kept
    syn = rows(cap)[0]
    assert (syn["opt_mss"], syn["opt_wscale"], syn["opt_sackok"], syn["opt_ts"]) == (
        1460,
        7,
        True,
        True,
    )
    assert (p["sack_n"] == 4).sum() == 2  # one per family
    assert m.first_ts_ns == 1_700_000_000 * 10**9
    assert not m.truncated and m.warnings == []


def test_vlan_and_qinq():
    cap = read("eth_vlan_qinq.pcap")
    assert cap.meta.tcp_packets == 9 and cap.meta.skipped_non_tcp == 1  # the tagged ARP
    assert cap.packets["family"].tolist() == [4, 4, 4, 6, 6, 6, 4, 4, 4]


def test_ipv4_options_and_fragments():
    cap = read("eth_v4_options_fragments.pcap")
    m = cap.meta
    # 4 with options, the first fragment of a TCP segment; 2 later TCP fragments; a UDP
    # datagram in 2 fragments is not TCP
    assert m.tcp_packets == 5
    assert m.skipped_other == {"ip_fragment": 2}
    assert m.skipped_non_tcp == 2
    assert any("first IPv4 fragments" in w for w in m.warnings)
    first_frag = rows(cap)[-1]
    assert first_frag["payload_len"] == 1400 - 20  # that fragment's share only


def test_ipv6_extension_headers():
    cap = read("eth_v6_ext_headers.pcap")
    m = cap.meta
    assert m.tcp_packets == 6
    assert m.skipped_other == {"ip_fragment": 1} and m.skipped_non_tcp == 1
    assert any("first IPv6 fragments" in w for w in m.warnings)


@pytest.mark.parametrize("name", ["sll_v1.pcap", "sll_v2.pcap"])
def test_linux_cooked_pkttype(name):
    cap = read(name)
    p = cap.packets
    outgoing = p["sport"] == 40000  # the client side wrote these: PACKET_OUTGOING
    assert (p["pkttype"][outgoing] == 4).all() and (p["pkttype"][~outgoing] == 0).all()
    assert outgoing.any() and (~outgoing).any()
    assert cap.meta.skipped_non_tcp == 1


@pytest.mark.parametrize(
    "name,linktype",
    [
        ("raw_101.pcap", 101),
        ("raw_dlt12.pcap", 12),
        ("raw_dlt14.pcap", 14),
        ("ipv4_228.pcap", 228),
        ("ipv6_229.pcap", 229),
        ("null_le.pcap", 0),
        ("null_be_host.pcap", 0),
        ("loop_108.pcap", 108),
    ],
)
def test_link_types_without_ethernet(name, linktype):
    cap = read(name)
    assert cap.meta.linktypes == [linktype]
    assert cap.meta.tcp_packets > 0
    assert (cap.packets["pkttype"] == -1).all()


def test_bsd_loopback_address_families():
    # AF_INET6 as Linux, the BSDs, FreeBSD and Darwin write it; an unknown AF is not TCP
    cap = read("null_le.pcap")
    assert cap.packets["family"].tolist() == [4, 4, 4, 4, 6, 6, 6]
    assert cap.meta.skipped_non_tcp == 1


def test_headers_only_snaplen():
    cut = read("headers_only_s80.pcap")
    assert cut.meta.snaplen == 80
    full = read("eth_v4_v6.pcap")
    # same segments, in another order: payload lengths come from IP, not the capture
    assert sorted(cut.packets["payload_len"].tolist()) == sorted(
        full.packets["payload_len"].tolist()
    )
    assert cut.packets["payload_len"].max() == 1000


def test_options_cut_by_snaplen():
    cap = read("headers_only_s64.pcap")  # 10 option bytes survive
    r = rows(cap)
    assert all(x["opts_cut"] for x in r[:4])  # SYN 20, SYN-ACK 12, NOP NOP TS 12 bytes
    assert r[0]["opt_mss"] == 1460 and r[0]["opt_sackok"]  # wholly captured: kept
    assert not r[0]["opt_ts"] and r[0]["opt_wscale"] == -1  # cut: not guessed
    assert not any(x["opt_ts"] for x in r)
    assert cap.meta.skipped_other == {}


def test_tcp_header_cut_is_counted():
    m = read("headers_only_s40.pcap").meta
    assert m.records == 3 and m.tcp_packets == 0 and m.skipped_other == {"tcp_header_cut": 3}


def test_resolutions_and_byte_orders():
    ns = read("ns_resolution.pcap")
    us = read("big_endian_us.pcap")
    assert ns.meta.ts_resolution_ns == 1 and us.meta.ts_resolution_ns == 1000
    # the generator spaces frames by 1_000_003 ns and 1_001 µs within each second
    assert ns.packets["ts_ns"][1] - ns.packets["ts_ns"][0] == 1_000_003
    assert us.packets["ts_ns"][1] - us.packets["ts_ns"][0] == 1_001_000
    assert us.packets["seq"].tolist() == read("eth_v4_v6.pcap").packets["seq"][:5].tolist()


def test_malformed_tcp_options_stop_parsing():
    cap = read("malformed_tcp_options.pcap")
    r = rows(cap)
    assert any(
        "6 TCP segments" in w or "3 TCP segments have malformed" in w for w in cap.meta.warnings
    )
    assert (r[0]["opt_mss"], r[0]["opt_ts"]) == (1460, False)  # TS with length 0
    assert (r[1]["opt_ts"], r[1]["tsval"], r[1]["sack_n"]) == (True, 1, 0)  # SACK too long
    assert (r[2]["opt_mss"], r[2]["opt_wscale"]) == (0, 7)  # MSS of length 5 ignored
    assert (r[3]["opt_ts"], r[3]["tsval"], r[3]["tsecr"]) == (True, 3, 4)  # kind 30 skipped
    assert r[4]["opt_sackok"] is False  # a kind byte with no room for its length
    assert (r[5]["opt_ts"], r[5]["opt_mss"]) == (False, 0)  # EOL first
    assert not any(x["opts_cut"] for x in r)


def test_pcapng_two_interfaces_and_statistics():
    cap = read("pcapng_two_ifaces.pcapng")
    m = cap.meta
    assert (m.format, m.linktypes) == ("pcapng", [1, 276])
    # the last ISB of each interface: (3 + 2) + (0 + 4)
    assert m.if_drops == 9
    assert any("dropped 9 packets" in w for w in m.warnings)
    p = cap.packets
    assert p["iface"].tolist()[:10] == [0, 1] * 5
    cooked = p["iface"] == 1
    assert (p["pkttype"][cooked] >= 0).all() and (p["pkttype"][~cooked] == -1).all()
    # interface 1 has if_tsresol 9: nanoseconds survive
    assert (p["ts_ns"][p["iface"] == 1] % 1000 == 1).all()
    # the SPB (last frame) has no timestamp: it carries the previous one, and says so
    assert p["ts_ns"][-1] == p["ts_ns"][-2]
    assert any("Simple Packet Blocks" in w for w in m.warnings)
    assert m.records == 11


def test_pcapng_sections_of_both_byte_orders():
    cap = read("pcapng_two_sections.pcapng")
    assert cap.meta.linktypes == [1, 101]
    assert cap.packets["iface"].tolist() == [0, 0, 0, 1, 1, 1]
    assert cap.packets["family"].tolist() == [4, 4, 4, 6, 6, 6]
    assert cap.meta.if_drops is None


def test_pcapng_big_endian_headers_only():
    cap = read("pcapng_big_endian_s96.pcapng")
    assert cap.meta.snaplen == 96
    assert cap.packets["payload_len"].tolist() == [0, 0, 0, 1000, 1000, 0]


# ----------------------------------------------------------------------------------------
# Damaged and wrong input
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,got",
    [
        ("truncated_mid_record.pcap", "got 46 bytes, 82 needed"),
        ("truncated_mid_record_header.pcap", "got 10 bytes, 16 needed"),
    ],
)
def test_truncated_pcap_keeps_what_came_before(name, got):
    cap = read(name)
    m = cap.meta
    assert m.truncated and m.truncated_at_offset == 114
    assert m.records == 1 and cap.packets["frame"].tolist() == [1]
    assert len(m.warnings) == 1 and "offset 114" in m.warnings[0] and got in m.warnings[0]


def test_corrupt_record_length_stops_there():
    m = read("corrupt_caplen.pcap").meta
    assert m.truncated and m.truncated_at_offset == 114 and m.records == 1
    assert "corrupt" in m.warnings[0] and "offset 114" in m.warnings[0]


def test_truncated_pcapng():
    cap = read("truncated_mid_block.pcapng")
    m = cap.meta
    assert m.truncated and m.records == 4
    assert "ends inside the packet block" in m.warnings[0]
    assert m.if_drops == 1  # only the ISB before the damage counts


def test_missing_file():
    with pytest.raises(BadInput, match="no such file: .*nowhere.pcap"):
        read_capture(FIXTURES / "nowhere.pcap")


def test_directory_without_captures(tmp_path):
    (tmp_path / "notes.txt").write_text("not a capture")
    with pytest.raises(BadInput, match="no capture file in the directory"):
        read_capture(tmp_path)


def test_empty_file():
    with pytest.raises(NotACapture, match="empty"):
        read("empty.pcap")


def test_wrong_magic():
    with pytest.raises(NotACapture, match=r"magic 0x47455420.*tcpdump -w"):
        read("not_a_capture.txt")


def test_cut_inside_file_header():
    with pytest.raises(TruncatedCapture, match="got 10 bytes, 24 needed"):
        read("cut_in_file_header.pcap")


def test_unknown_link_type():
    with pytest.raises(UnknownLinkType, match="link type 147"):
        read("unknown_linktype_147.pcap")


def test_errors_are_typed_for_the_cli():
    for exc in (NotACapture, TruncatedCapture, UnknownLinkType):
        assert issubclass(exc, CaptureError) and exc.exit_code == 2


def test_damaged_gzip_with_no_data_is_refused(tmp_path):
    path = tmp_path / "cap.pcap.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 20)
    with pytest.raises(CaptureError, match="gzip data is damaged"):
        read_capture(path)


def test_pcapng_cut_inside_section_header(tmp_path):
    path = tmp_path / "cut.pcapng"
    path.write_bytes((FIXTURES / "pcapng_scapy.pcapng").read_bytes()[:20])
    with pytest.raises(TruncatedCapture, match="section header"):
        read_capture(path)


def test_header_only_pcap_has_no_rows(tmp_path):
    path = tmp_path / "none.pcap"
    path.write_bytes((FIXTURES / "eth_v4_v6.pcap").read_bytes()[:24])
    cap = read_capture(path)
    assert cap.meta.records == 0 and not cap.meta.truncated
    assert cap.meta.first_ts_ns is None
    assert list(cap.packets) == [c[0] for c in PACKET_COLUMNS]


def test_garbage_after_valid_records_is_reported(tmp_path):
    good = (FIXTURES / "eth_v4_v6.pcap").read_bytes()
    path = tmp_path / "garbage.pcap"
    path.write_bytes(good + struct.pack("<IIII", 1, 5_000_000, 10, 10) + b"z" * 10)
    m = read_capture(path).meta
    assert m.records == 25 and m.truncated and m.truncated_at_offset == len(good)


# ----------------------------------------------------------------------------------------
# Progress, fixtures
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["eth_v4_v6.pcap", "pcapng_two_ifaces.pcapng"])
@pytest.mark.parametrize("chunk_bytes", [128, 1 << 20])
def test_progress_reports_bytes_and_packets(name, chunk_bytes):
    calls = []
    cap = read_capture(FIXTURES / name, progress=calls.append, chunk_bytes=chunk_bytes)
    size = (FIXTURES / name).stat().st_size
    assert len(calls) >= 2
    assert all(c.bytes_total == size and c.files_total == 1 for c in calls)
    done = [c.bytes_done for c in calls]
    assert done == sorted(done) and done[-1] == size
    assert calls[-1].records_done == cap.meta.records
    assert calls[-1].tcp_packets_done == cap.meta.tcp_packets
    assert calls[-1].files_done == 1 and calls[-1].fraction == 1.0
    assert calls[-1].eta_s == 0.0


def test_fixtures_are_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_reader_fixtures", HERE / "fixtures" / "make_reader_fixtures.py"
    )
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    made = gen.write_all(tmp_path)
    assert {p.name for p in made} <= {p.name for p in FIXTURES.iterdir()}
    for p in made:
        assert p.read_bytes() == (FIXTURES / p.name).read_bytes(), p.name


# ----------------------------------------------------------------------------------------
# Odd records, made on the spot
# ----------------------------------------------------------------------------------------


def _generator():
    spec = importlib.util.spec_from_file_location(
        "make_reader_fixtures", HERE / "fixtures" / "make_reader_fixtures.py"
    )
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_broken_headers_are_counted_not_decoded(tmp_path):
    gen = _generator()
    tcp = TCP(sport=1, dport=2, flags="A", seq=10, ack=20)
    ip = IP(src=gen.C4, dst=gen.S4)
    eth = Ether(src=gen.MAC_C, dst=gen.MAC_S)
    # one MPLS label (bottom of stack), then an Ethernet pseudowire control word: may
    # carry TCP, not decoded here
    mpls_pw = b"\x00\x01\x01\x40" + b"\x00\x00\x00\x00"
    frames = [
        eth / ip / tcp,  # fine
        eth / IP(src=gen.C4, dst=gen.S4, ihl=4) / tcp,  # IHL below 5
        Ether(src=gen.MAC_C, dst=gen.MAC_S, type=0x86DD) / ip / tcp,  # v4 in a v6 EtherType
        eth / ip / TCP(dataofs=3),  # data offset below 5
        eth / IP(src=gen.C4, dst=gen.S4, len=30) / tcp,  # IP length < TCP header
        Ether(src=gen.MAC_C, dst=gen.MAC_S, type=0x8847) / (mpls_pw + bytes(eth / ip / tcp)),
        bytes(eth)[:10],  # shorter than an Ethernet header
        eth / ip / tcp,  # fine again
        b"",  # an empty record, last in the file
    ]
    path = tmp_path / "broken.pcap"
    gen.write_pcap(path, frames, 1)
    cap = read_capture(path)
    m = cap.meta
    assert cap.packets["frame"].tolist() == [1, 8]
    assert m.skipped_other == {
        "bad_ip_header": 2,
        "bad_tcp_header": 2,
        "unsupported_encapsulation": 1,
        "link_header_cut": 2,
    }
    assert m.records == 9 and not m.truncated
    assert m.undecoded == {"MPLS carrying neither IPv4 nor IPv6 (a pseudowire)": 1}


def _ng(gen, order="<"):
    ng = gen.NgWriter(order)
    ng.shb()
    return ng


def test_pcapng_interface_without_idb_is_skipped_and_counted(tmp_path):
    gen = _generator()
    c4, s4 = gen.v4()
    frames = [bytes(f) for f in gen.eth(gen.conversation(c4, s4)[:3])]
    ng = _ng(gen)
    ng.idb(1)
    ng.epb(0, 1, frames[0])
    ng.epb(5, 2, frames[1])  # interface 5 was never described
    ng.epb(0, 3, frames[2])
    path = tmp_path / "noidb.pcapng"
    path.write_bytes(ng.bytes())
    cap = read_capture(path)
    assert cap.packets["frame"].tolist() == [1, 3]  # numbering counts the skipped block
    assert cap.meta.skipped_other == {"unknown_interface": 1}
    assert any("no interface description" in w for w in cap.meta.warnings)


def test_pcapng_unsupported_interface_beside_a_supported_one(tmp_path):
    gen = _generator()
    c4, s4 = gen.v4()
    frames = [bytes(f) for f in gen.eth(gen.conversation(c4, s4)[:2])]
    ng = _ng(gen)
    ng.idb(1)
    ng.idb(147)
    ng.epb(0, 1, frames[0])
    ng.epb(1, 2, b"\0" * 30)
    ng.epb(0, 3, frames[1])
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(ng.bytes())
    cap = read_capture(path)
    assert cap.packets["frame"].tolist() == [1, 3]
    assert cap.meta.skipped_other == {"unsupported_linktype": 1}
    assert any("link type 147" in w for w in cap.meta.warnings)
    only = _ng(gen)
    only.idb(147)
    only.epb(0, 1, b"\0" * 30)
    path.write_bytes(only.bytes())
    with pytest.raises(UnknownLinkType, match="link type 147"):
        read_capture(path)


def test_pcapng_binary_resolution_and_offset(tmp_path):
    gen = _generator()
    c4, s4 = gen.v4()
    frame = bytes(gen.eth(gen.conversation(c4, s4)[:1])[0])
    ng = _ng(gen)
    ng.idb(1, tsresol=0x80 | 20, tsoffset_s=1_000)  # units of 2^-20 s, since epoch + 1000 s
    units = (1_700_000_000 << 20) + (1 << 19)  # 1_700_000_000.5 s
    ng.epb(0, units, frame)
    path = tmp_path / "binres.pcapng"
    path.write_bytes(ng.bytes())
    cap = read_capture(path)
    assert cap.packets["ts_ns"].tolist() == [1_700_001_000_500_000_000]
    assert cap.meta.ts_resolution_ns == 954  # 2^-20 s = 953.7 ns, rounded up


def test_pcapng_corrupt_block_length(tmp_path):
    data = bytearray((FIXTURES / "pcapng_two_ifaces.pcapng").read_bytes())
    (shb_len,) = struct.unpack_from("<I", data, 4)
    (idb1_len,) = struct.unpack_from("<I", data, shb_len + 4)
    at = shb_len + idb1_len  # the second IDB
    struct.pack_into("<I", data, at + 4, 13)  # not a multiple of 4
    path = tmp_path / "corrupt.pcapng"
    path.write_bytes(bytes(data))
    m = read_capture(path).meta
    assert m.truncated and m.truncated_at_offset == at and m.records == 0
    assert "corrupt" in m.warnings[0] and f"offset {at}" in m.warnings[0]


def test_zero_filled_tail_is_not_read_as_packets(tmp_path):
    good = (FIXTURES / "eth_v4_v6.pcap").read_bytes()
    path = tmp_path / "zeros.pcap"
    path.write_bytes(good + b"\0" * 4096)  # preallocated, never written
    m = read_capture(path).meta
    assert m.records == 25 and m.truncated and m.truncated_at_offset == len(good)
    assert "corrupt" in m.warnings[0]


def test_pcapng_obsolete_packet_block(tmp_path):
    gen = _generator()
    c4, s4 = gen.v4()
    frames = [bytes(f) for f in gen.eth(gen.conversation(c4, s4)[:2])]
    ng = _ng(gen)
    ng.idb(1)
    ng.epb(0, 1_700_000_000_000_001, frames[0])
    units = 1_700_000_000_000_002
    data = frames[1] + b"\0" * (-len(frames[1]) % 4)
    # PB (pcapng Appendix A): interface u16, drops u16, ts high, ts low, caplen, origlen
    ng.block(
        2,
        struct.pack(
            "<HHIIII", 0, 0, units >> 32, units & 0xFFFFFFFF, len(frames[1]), len(frames[1])
        )
        + data,
    )
    path = tmp_path / "pb.pcapng"
    path.write_bytes(ng.bytes())
    cap = read_capture(path)
    assert cap.meta.records == 2
    assert cap.packets["ts_ns"].tolist() == [1_700_000_000_000_001_000, 1_700_000_000_000_002_000]
    assert cap.packets["seq"].tolist() == read("eth_v4_v6.pcap").packets["seq"][:2].tolist()


CORPUS = sorted((HERE / "fixtures" / "corpus").glob("*/capture.pcap"))


@pytest.mark.skipif(TSHARK is None or not CORPUS, reason="needs tshark and the lab corpus")
@pytest.mark.parametrize("path", CORPUS, ids=[p.parent.name for p in CORPUS])
def test_real_lab_captures_match_tshark(path):
    """tcpdump's own captures from the lab (Ethernet and -i any, TSO on and off, v4 and v6,
    headers-only snaplen): every TCP segment tshark sees, field by field."""
    cap = read_capture(path)
    p = cap.packets
    theirs = tshark_rows(path)
    assert p["frame"].tolist() == [int(t["frame.number"]) for t in theirs]
    assert p["seq"].tolist() == [int(t["tcp.seq_raw"]) for t in theirs]
    assert p["ack"].tolist() == [int(t["tcp.ack_raw"]) for t in theirs]
    assert p["payload_len"].tolist() == [int(t["tcp.len"]) for t in theirs]
    assert p["flags"].tolist() == [int(t["tcp.flags"], 16) for t in theirs]
    assert p["tsval"].tolist() == [int(t["tcp.options.timestamp.tsval"] or 0) for t in theirs]
    sack_l0 = [int(t["tcp.options.sack_le"].split(",")[0] or 0) for t in theirs]
    assert p["sack_l0"].tolist() == sack_l0
    assert cap.meta.records == cap.meta.tcp_packets + cap.meta.skipped_non_tcp + sum(
        cap.meta.skipped_other.values()
    )


# ----------------------------------------------------------------------------------------
# Compressed captures: by magic, streamed
# ----------------------------------------------------------------------------------------


def _compress(data: bytes, kind: str) -> bytes:
    """``data`` compressed; bzip2 in 100 kB blocks (-1), so that a few KB hold a block."""
    import bz2
    import gzip
    import lzma

    import zstandard

    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if kind == "xz":
        return lzma.compress(data)
    return bz2.compress(data, compresslevel=1)


COMPRESSIONS = ["gzip", "zstd", "xz", "bzip2"]


@pytest.mark.parametrize("kind", COMPRESSIONS)
@pytest.mark.parametrize(
    "name", ["eth_v4_v6.pcap", "pcapng_two_ifaces.pcapng", "truncated_mid_record.pcap"]
)
def test_compressed_capture_reads_as_the_plain_one(kind, name, tmp_path):
    plain = read(name)
    # a name that says nothing: the magic decides
    path = tmp_path / "capture.bin"
    path.write_bytes(_compress((FIXTURES / name).read_bytes(), kind))
    for chunk_bytes in (64, 1 << 20):
        cap = read_capture(path, chunk_bytes=chunk_bytes)
        assert cap.meta.files[0]["compression"] == kind
        cap.meta.files, plain.meta.files = [], []
        cap.meta.path = plain.meta.path
        assert_same_capture(cap, plain)


@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_cut_compressed_capture_keeps_the_packets_before(kind, tmp_path):
    plain = tmp_path / "plain.pcap"
    _bench_module().make_synthetic_pcap(str(plain), 6000, snaplen=128, seed=3)
    packed = _compress(plain.read_bytes(), kind)
    path = tmp_path / "cut.pcap.z"
    # compressors emit data block by block: cut well into the file, so that some blocks
    # before the cut are whole (bzip2 -1: 100 kB of input a block)
    path.write_bytes(packed[: len(packed) * 2 // 3])
    cap = read_capture(path)
    whole = read_capture(plain)
    m = cap.meta
    assert m.truncated and 0 < m.records < whole.meta.records
    n = cap.packets["frame"].size
    assert n > 0
    for col, _, _ in PACKET_COLUMNS:  # the packets before the damage, as in the plain file
        assert np.array_equal(cap.packets[col], whole.packets[col][:n]), col
    assert len(m.warnings) == 1 and "damaged or cut short" in m.warnings[0]


def test_corrupt_zstd_frame_keeps_the_packets_before(tmp_path):
    import zstandard

    data = (FIXTURES / "eth_v4_v6.pcap").read_bytes()
    # two frames, with checksums as the zstd tool writes them: the second one corrupt
    first = zstandard.ZstdCompressor(write_checksum=True).compress(data[:4000])
    second = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(data[4000:]))
    second[len(second) // 2] ^= 0xFF
    path = tmp_path / "bad.pcap.zst"
    path.write_bytes(first + bytes(second))
    cap = read_capture(path)
    assert cap.meta.truncated and cap.meta.records >= 1
    assert any("zstd data is damaged" in w for w in cap.meta.warnings)


def test_compressed_from_a_pipe(tmp_path):
    import io

    data = _compress((FIXTURES / "pcapng_two_ifaces.pcapng").read_bytes(), "gzip")
    cap = read_capture(io.BufferedReader(io.BytesIO(data)), chunk_bytes=100)
    assert (
        cap.packets["frame"].tolist() == read("pcapng_two_ifaces.pcapng").packets["frame"].tolist()
    )
    assert cap.meta.files[0]["compression"] == "gzip"


@pytest.mark.parametrize("kind", COMPRESSIONS)
def test_read_ahead_in_small_blocks_reads_as_the_plain_one(kind, tmp_path, monkeypatch):
    """The decompressing thread (ByteStream.read_ahead) in blocks of 1,000 bytes, two
    ahead: whole, the packets of the plain file and every compressed byte counted read;
    cut, the packets before the cut and its warning. The threads end with the reading."""
    from retranscope.analyze.capture import stream as stream_mod

    made = []

    class Counted(stream_mod._ReadAhead):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(stream_mod, "READ_AHEAD_BLOCK_BYTES", 1000)
    monkeypatch.setattr(stream_mod, "READ_AHEAD_BLOCKS", 2)
    monkeypatch.setattr(stream_mod, "_ReadAhead", Counted)
    plain = tmp_path / "plain.pcap"
    _bench_module().make_synthetic_pcap(str(plain), 3000, snaplen=128, seed=5)
    whole = read_capture(plain)
    packed = _compress(plain.read_bytes(), kind)
    path = tmp_path / "c.bin"
    for cut in (len(packed), len(packed) * 2 // 3):
        path.write_bytes(packed[:cut])
        seen: list[int] = []
        cap = read_capture(path, progress=lambda p, seen=seen: seen.append(p.bytes_done))
        with monkeypatch.context() as m:  # the same file read without the thread
            m.setattr(stream_mod.ByteStream, "read_ahead", lambda self: None)
            alone = read_capture(path)
        n = cap.packets["frame"].size
        assert n == alone.packets["frame"].size and cap.meta.records == alone.meta.records
        for col, _, _ in PACKET_COLUMNS:
            assert np.array_equal(cap.packets[col], whole.packets[col][:n]), col
        if cut == len(packed):
            assert n == whole.packets["frame"].size and not cap.meta.truncated
            assert seen[-1] == len(packed)
        else:
            assert 0 < n < whole.packets["frame"].size and cap.meta.truncated
            assert len(cap.meta.warnings) == 1 and "damaged or cut short" in cap.meta.warnings[0]
    assert len(made) == 2 and not any(r._thread.is_alive() for r in made)


def test_read_ahead_stopped_early_ends_its_thread(tmp_path, monkeypatch):
    """A stream closed before its end (a capture refused after its first blocks): the
    thread waiting to hand over a block ends with it."""
    from retranscope.analyze.capture import stream as stream_mod

    monkeypatch.setattr(stream_mod, "READ_AHEAD_BLOCK_BYTES", 1000)
    monkeypatch.setattr(stream_mod, "READ_AHEAD_BLOCKS", 2)
    plain = tmp_path / "plain.pcap"
    _bench_module().make_synthetic_pcap(str(plain), 3000, snaplen=128, seed=5)
    path = tmp_path / "c.pcap.gz"
    path.write_bytes(_compress(plain.read_bytes(), "gzip"))
    s = stream_mod.open_stream(path)
    s.read_ahead()
    buf = bytearray(100)
    assert s.readinto(memoryview(buf)) == 100 and buf[:4] == plain.read_bytes()[:4]
    ahead = s._ahead
    assert ahead is not None and ahead._thread.is_alive()
    s.close()
    assert not ahead._thread.is_alive()


def test_compressed_from_a_real_pipe_reads_ahead(tmp_path):
    """A gzipped capture on a pipe, whose offset cannot be asked (tell: ESPIPE)."""
    import os
    import threading

    data = _compress((FIXTURES / "eth_v4_v6.pcap").read_bytes(), "gzip")
    r, w = os.pipe()

    def feed():
        with os.fdopen(w, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed)
    t.start()
    with os.fdopen(r, "rb") as f:
        cap = read_capture(f)
    t.join()
    assert cap.packets["frame"].tolist() == read("eth_v4_v6.pcap").packets["frame"].tolist()


def test_compressed_non_capture_says_so(tmp_path):
    path = tmp_path / "notes.txt.gz"
    path.write_bytes(_compress(b"GET / HTTP/1.1\r\n\r\n", "gzip"))
    with pytest.raises(NotACapture, match="gzip-compressed, and what it holds is not a pcap"):
        read_capture(path)


# ----------------------------------------------------------------------------------------
# Capture sets: several files read as one capture
# ----------------------------------------------------------------------------------------


def _pcap_records(data: bytes) -> tuple[bytes, list[bytes]]:
    """A little-endian pcap file's header and its records (header + data each)."""
    out, off = [], 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, off + 8)[0]
        out.append(data[off : off + 16 + caplen])
        off += 16 + caplen
    return data[:24], out


def _rotated_set(tmp_path: Path, n_packets: int = 3000, parts: int = 4) -> tuple[Path, Path]:
    """A synthetic capture, and the same split into tcpdump -C names (cap.pcap,
    cap.pcap1...): pcap, pcapng and gzip mixed. Its flows span every file."""
    import gzip

    gen = _generator()
    whole = tmp_path / "whole.pcap"
    _bench_module().make_synthetic_pcap(str(whole), n_packets, snaplen=128, seed=11)
    header, recs = _pcap_records(whole.read_bytes())
    cut = [len(recs) * k // parts for k in range(parts + 1)]
    sets = tmp_path / "set"
    sets.mkdir()
    for k in range(parts):
        name = sets / ("cap.pcap" + (str(k) if k else ""))
        body = recs[cut[k] : cut[k + 1]]
        if k == 1:  # as pcapng (µs, one Ethernet interface)
            ng = gen.NgWriter("<")
            ng.shb()
            ng.idb(1, snaplen=128)
            for r in body:
                sec, usec, caplen, wire = struct.unpack_from("<IIII", r)
                ng.epb(0, sec * 10**6 + usec, r[16:], wirelen=wire)
            name.write_bytes(ng.bytes())
        elif k == 2:  # gzip-compressed, as tcpdump -z gzip leaves it
            name.write_bytes(gzip.compress(header + b"".join(body), mtime=0))
        else:
            name.write_bytes(header + b"".join(body))
    return whole, sets


def test_rotated_set_reads_as_the_whole_capture(tmp_path):
    whole, sets = _rotated_set(tmp_path)
    one = read_capture(whole)
    for source in (sets, str(sets / "cap.pcap*"), sorted(sets.iterdir(), reverse=True)):
        cap = read_capture(source, chunk_bytes=5000)
        for col, _, _ in PACKET_COLUMNS:  # frames go on through the files
            assert np.array_equal(cap.packets[col], one.packets[col]), col
        m = cap.meta
        assert m.records == one.meta.records and m.format == "mixed"
        assert [Path(f["path"]).name for f in m.files] == [
            "cap.pcap",
            "cap.pcap1",
            "cap.pcap2",
            "cap.pcap3",
        ]
        assert [f["compression"] for f in m.files] == [None, None, "gzip", None]
        assert sum(f["records"] for f in m.files) == m.records
        assert all(a["last_ts_ns"] <= b["first_ts_ns"] for a, b in zip(m.files, m.files[1:]))
        # one interface, as mergecap merges identical ones; the pcapng's snaplen is the same
        assert m.linktypes == [1] and not m.warnings


def test_flow_spanning_files_is_one_flow(tmp_path):
    from retranscope.analyze.run import run_analysis

    whole, sets = _rotated_set(tmp_path, n_packets=2000, parts=3)
    import pyarrow.parquet as pq

    run_analysis(whole, None, tmp_path / "a")
    run_analysis(sets, None, tmp_path / "b")
    fa = pq.read_table(tmp_path / "a" / "flows.parquet")
    fb = pq.read_table(tmp_path / "b" / "flows.parquet")
    # every flow of the synthetic capture has packets in each of the three files
    one = read_capture(whole)
    files = read_capture(sets).meta.files
    ends = np.cumsum([f["records"] for f in files])
    part = np.searchsorted(ends, one.packets["frame"], side="left")
    first_flow = (one.packets["sport"] == one.packets["sport"][0]) & (
        one.packets["dport"] == one.packets["dport"][0]
    )
    assert set(part[first_flow].tolist()) == {0, 1, 2}
    # the same flows, and retransmissions, as from the one file (NaN equal to NaN)
    assert fa.num_rows == fb.num_rows > 0 and fa.to_pandas().equals(fb.to_pandas())
    ra = pq.read_table(tmp_path / "a" / "retransmits.parquet").to_pandas()
    assert ra.equals(pq.read_table(tmp_path / "b" / "retransmits.parquet").to_pandas())


@pytest.mark.skipif(shutil.which("mergecap") is None, reason="mergecap is not installed")
def test_overlapping_files_are_merged_by_time_as_mergecap_does(tmp_path):
    # two interfaces' captures of the same time span: every other record in each file
    whole = tmp_path / "whole.pcap"
    _bench_module().make_synthetic_pcap(str(whole), 3000, snaplen=128, seed=5)
    header, recs = _pcap_records(whole.read_bytes())
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    a.write_bytes(header + b"".join(recs[0::2]))
    b.write_bytes(header + b"".join(recs[1::2]))
    merged = tmp_path / "merged.pcap"
    subprocess.run(["mergecap", "-F", "pcap", "-w", str(merged), str(b), str(a)], check=True)
    want = read_capture(merged)
    for chunk_bytes in (3000, 1 << 20):
        got = read_capture([b, a], chunk_bytes=chunk_bytes)
        for col, _, _ in PACKET_COLUMNS:
            assert np.array_equal(got.packets[col], want.packets[col]), col
        assert len(got.meta.warnings) == 1 and "overlap in time" in got.meta.warnings[0]
        assert got.meta.linktypes == [1]


def test_set_errors_are_one_line(tmp_path):
    with pytest.raises(BadInput, match="no file matches .*nothing"):
        read_capture(str(tmp_path / "nothing*.pcap"))
    (tmp_path / "README").write_text("hello")
    with pytest.raises(BadInput, match="no capture file in the directory"):
        read_capture(tmp_path)
    (tmp_path / "cap.pcap").write_bytes((FIXTURES / "eth_v4_v6.pcap").read_bytes())
    with pytest.raises(NotACapture, match="README is not a pcap or pcapng file"):
        read_capture([tmp_path / "cap.pcap", tmp_path / "README"])
    cap = read_capture(tmp_path)  # a directory: the non-capture is left out, and said
    assert cap.meta.records == 25
    assert any("not captures and were left out: README" in w for w in cap.meta.warnings)


def test_chunks_keep_the_contract(tmp_path):
    from retranscope.analyze.capture import open_capture

    whole, sets = _rotated_set(tmp_path, n_packets=1500, parts=3)
    last = 0
    with open_capture(sets, chunk_bytes=4096) as stream:
        for chunk in stream:
            assert list(chunk) == [c[0] for c in PACKET_COLUMNS] and chunk["frame"].size
            assert chunk["frame"][0] > last and np.all(np.diff(chunk["frame"]) > 0)
            last = int(chunk["frame"][-1])
        assert stream.meta.records == 1500 and len(stream.meta.files) == 3


# ----------------------------------------------------------------------------------------
# Decoding on worker processes
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [2, 3])
def test_any_number_of_jobs_gives_the_same_capture(jobs, tmp_path, monkeypatch):
    import retranscope.analyze.capture.chunks as chunks

    monkeypatch.setattr(chunks, "DECODE_CHUNK_RECORDS", 700)  # many jobs in flight
    whole, sets = _rotated_set(tmp_path, n_packets=5000, parts=3)
    for source in (
        whole,
        sets,
        FIXTURES / "pcapng_two_ifaces.pcapng",
        FIXTURES / "eth_v6_ext_headers.pcap",
    ):
        serial = read_capture(source, jobs=1, chunk_bytes=20_000)
        assert_same_capture(read_capture(source, jobs=jobs, chunk_bytes=20_000), serial)


def test_cli_takes_a_set_as_files_after_pcap(tmp_path):
    from typer.testing import CliRunner

    from retranscope.cli import app

    _, sets = _rotated_set(tmp_path, n_packets=1200, parts=3)
    names = [str(p) for p in sorted(sets.iterdir())]
    r = CliRunner().invoke(
        app, ["analyze", "--pcap", *names, "--out", str(tmp_path / "o"), "-q", "--jobs", "1"]
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [Path(f["path"]).name for f in summary["capture"]["files"]] == [
        "cap.pcap",
        "cap.pcap1",
        "cap.pcap2",
    ]
    r = CliRunner().invoke(
        app, ["analyze", "--pcap", str(tmp_path / "none*.pcap"), "--out", str(tmp_path / "o2")]
    )
    assert r.exit_code == 2 and "no file matches" in r.output
    assert len(r.output.strip().splitlines()) == 1


TCPDUMP = shutil.which("tcpdump")


@pytest.mark.root
@pytest.mark.skipif(TCPDUMP is None, reason="tcpdump is not installed")
@pytest.mark.parametrize("ring", [False, True], ids=["C", "C_W_ring"])
def test_set_rotated_by_a_real_tcpdump(ring, tmp_path):
    """tcpdump -C 1 (1 MB files: cap.pcap, cap.pcap1, ...), and with -W 3 a ring of
    three (cap.pcap0..2, the oldest overwritten), during one bulk transfer through
    random loss in a lab: read as one capture, it is the transfer's one flow, and reads
    like mergecap's merge of the same files."""
    from retranscope.lab.netns import Lab
    from retranscope.lab.recorded import start_bulk, start_server

    port = 5001
    out = tmp_path / "ring"
    out.mkdir()
    with Lab(ipv6=False, tso=False) as lab:
        lab.add_rule(f"tcp dport {port} numgen random mod 1000 < 5 drop")
        argv = [
            TCPDUMP,
            "-Z",
            "root",
            "-i",
            lab.sender_if,
            "-s",
            "128",
            "-n",
            "-U",
            "-w",
            str(out / "cap.pcap"),
            "-C",
            "1",
            "tcp",
        ]
        if ring:
            argv[-1:-1] = ["-W", "3"]
        dump = lab.popen(lab.sender_ns, argv, stderr=subprocess.PIPE)
        try:
            # Traffic only once tcpdump listens (a fixed sleep raced with its start-up);
            # after that line it writes nothing to stderr until its counts at exit.
            try:
                LineReader(dump.stderr.fileno()).until(
                    "listening on", 30, alive=lambda: dump.poll() is None
                )
            except MarkerNotSeen as missed:
                raise AssertionError(f"tcpdump did not start: {missed}") from None
            # One connection: the server exits once it has read the transfer (without
            # --max-conns it ran to its own 30 s deadline, which the wait below raced).
            server = start_server(
                lab, "--port", port, "--mode", "sink", "--timeout-s", "30", "--max-conns", "1"
            )
            client = start_bulk(lab, port, 40_000_000, timeout_s=25)
            client.wait(timeout=30)
            server.wait(timeout=30)
            time.sleep(0.3)
        finally:
            dump.terminate()
            dump.wait(timeout=10)
            dump.stderr.close()
    files = sorted(p for p in out.iterdir())
    assert len(files) >= 3
    if ring:
        assert [p.name for p in files] == ["cap.pcap0", "cap.pcap1", "cap.pcap2"]
    cap = read_capture(out)
    m = cap.meta
    assert len(m.files) == len(files) and not m.warnings, (m.warnings, m.files)
    assert all(a["last_ts_ns"] <= b["first_ts_ns"] for a, b in zip(m.files, m.files[1:]))
    p = cap.packets
    assert np.all(np.diff(p["frame"]) > 0)
    # Capture order, not time order: tcpdump stamps packets on whichever CPU handled them,
    # so neighbours can be microseconds out of order; files in the wrong order would show
    # as a jump back of a whole file's span.
    assert np.diff(p["ts_ns"]).min() > -10_000_000
    # one connection: one client port, seen in every file
    data = p["dport"] == port
    assert len(set(p["sport"][data].tolist())) == 1
    ends = np.cumsum([f["records"] for f in m.files])
    assert set(np.searchsorted(ends, p["frame"][data]).tolist()) == set(range(len(files)))
    # mergecap puts a record before an equal timestamp of an earlier file (its tie rule,
    # merge.c is_earlier); the reader keeps the files' order there, which is the order
    # tcpdump wrote them. So: the same timestamps in the same order, and the same
    # packets at each timestamp. Packets at one timestamp are put in one order by every
    # column (two dup ACKs can share the timestamp and the sequence number, and differ
    # only in the ack: sorting by (ts_ns, seq) alone left their order to the sort).
    merged = tmp_path / "merged.pcap"
    subprocess.run(["mergecap", "-F", "pcap", "-w", str(merged), *map(str, files)], check=True)
    want = read_capture(merged).packets
    assert np.array_equal(p["ts_ns"], want["ts_ns"]) and np.array_equal(p["frame"], want["frame"])
    cols = [col for col, _, _ in PACKET_COLUMNS if col != "frame"]
    ours = np.lexsort([p[col] for col in reversed(cols)])
    theirs = np.lexsort([want[col] for col in reversed(cols)])
    for col in cols:
        assert np.array_equal(p[col][ours], want[col][theirs]), col


# ----------------------------------------------------------------------------------------
# Encapsulations, drop counters
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kinds",
    [
        ("encap_pppoe.pcap", {"pppoe": 11}),
        ("encap_mpls.pcap", {"mpls": 11}),
        ("encap_gre.pcap", {"gre": 12, "pptp": 2}),
        ("encap_vxlan.pcap", {"vxlan": 11}),
        ("encap_geneve.pcap", {"geneve": 11}),
        ("encap_ip_in_ip.pcap", {"ipip": 6, "6in4": 5, "4in6": 6, "6in6": 5}),
        # AH after IPv6 is an extension header like the others: counted after IPv4 only
        ("encap_ah.pcap", {"ah": 7, "ipip": 3}),
        ("sll_encapsulations.pcap", {"gre": 1, "pppoe": 5, "mpls": 3}),
    ],
)
def test_tcp_inside_encapsulations_is_the_inner_flow(name, kinds):
    cap = read(name)
    assert cap.meta.encapsulated == kinds
    assert not cap.meta.undecoded and cap.meta.skipped_other == {}
    # the flow is the inner 5-tuple: the conversation's addresses, never the tunnel's
    inner = {
        addr_from_str(a)[:2]
        for a in ("192.0.2.10", "198.51.100.20", "2001:db8::10", "2001:db8:1::20")
    }
    p = cap.packets
    assert {(int(h), int(lo)) for h, lo in zip(p["saddr_hi"], p["saddr_lo"])} <= inner
    assert set(p["sport"].tolist()) <= {40000, 5001}


def test_undecoded_layers_are_counted_and_named():
    m = read("encap_undecoded.pcap").meta
    assert m.tcp_packets == 1
    assert m.undecoded == {
        "IPsec ESP (encrypted)": 1,
        "GRE carrying protocol 0x8137": 1,
        "IPComp (compressed)": 1,
    }
    assert m.skipped_other == {"unsupported_encapsulation": 3}
    assert m.warnings == [
        "3 packets not decoded (they may carry TCP): 1 in GRE carrying "
        "protocol 0x8137, 1 in IPComp (compressed), 1 in IPsec ESP (encrypted)"
    ]


@pytest.mark.parametrize("unit_ns", [1000, 1])
def test_sub_second_field_of_a_whole_second_is_read_as_written(unit_ns):
    name = f"timestamp_sub_second_overflow_{'us' if unit_ns == 1000 else 'ns'}.pcap"
    cap = read(name)
    assert cap.meta.records == 3 and not cap.meta.truncated
    assert cap.packets["ts_ns"][1] == (1_700_000_001 + 1) * 10**9  # one second more
    assert cap.meta.warnings == [
        "1 records have a sub-second timestamp field of a second or "
        "more: read as written (the timestamp moves into the next "
        "second)"
    ]


def test_pcapng_drop_counters():
    m = read("pcapng_drop_counts.pcapng").meta
    # epb_dropcount 0 and 3; ISBs with isb_ifdrop 2, then 2 + isb_osdrop 1
    assert m.epb_drops == 3 and m.if_drops == 3
    assert m.drop_marks == [
        {
            "frame": 5,
            "ts_ns": (1_700_000_000 * 10**6 + 3500) * 1000,
            "iface": 0,
            "dropped": 2,
            "source": "isb",
        },
        {
            "frame": 6,
            "ts_ns": (1_700_000_000 * 10**6 + 5000) * 1000,
            "iface": 0,
            "dropped": 3,
            "source": "epb",
        },
        {
            "frame": 9,
            "ts_ns": (1_700_000_000 * 10**6 + 9000) * 1000,
            "iface": 0,
            "dropped": 1,
            "source": "isb",
        },
    ]
    assert m.drop_marks_total == 3
    assert any("per-packet drop counts" in w for w in m.warnings)


@pytest.mark.parametrize(
    "name",
    [
        "corrupt_caplen.pcap",
        "truncated_mid_record.pcap",
        "truncated_mid_block.pcapng",
        "pcapng_two_ifaces.pcapng",
    ],
)
def test_every_block_size_reads_damage_alike(name):
    # Found by the fuzzer: a block ending 12-15 bytes into a record header whose caplen
    # is impossible was taken for a record still to come, and the buffer grown to 2 GB
    # to hold it. Wherever a block ends, the damage is judged the same.
    whole = read(name)
    for chunk_bytes in range(24, 420, 7):
        assert_same_capture(read_capture(FIXTURES / name, chunk_bytes=chunk_bytes), whole)
