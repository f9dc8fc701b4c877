"""The simulated fleet (fleet/simulate.py): a copy of a recording analyzes to its
original's result, moved in time and address space, and its rewritten packets carry
checksums as right (or as wrong, where the sender offloaded them) as the original's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from retranscope.analyze.run import run_analysis
from retranscope.fleet.simulate import (
    ETH_P_IP,
    L3_OFFSET,
    RECORD_HEADER,
    Capture,
    Original,
    address_map,
    build_fleet,
)

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
# IPv4 and IPv6, Ethernet and Linux cooked v2 (tcpdump -i any), events of every kind.
ORIGINALS = [
    "slow_server_tlp",
    "blackhole_rto__any",
    "random_loss_v6",
    "synack_drop",
    "tail_drop_tlp_v6__any",
    "reqresp_loss_both",
]


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    runs = build_fleet([CORPUS / n for n in ORIGINALS], root, len(ORIGINALS), days=3, peers=2)
    return root, runs


def _analysis(tmp: Path, run_dir: Path):
    run_analysis(run_dir / "capture.pcap", run_dir, tmp)
    return (
        pq.read_table(tmp / "retransmits.parquet").to_pandas(),
        json.loads((tmp / "summary.json").read_text()),
    )


@pytest.mark.parametrize("index", range(len(ORIGINALS)))
def test_copy_analyzes_like_its_original_moved(copies, tmp_path, index):
    _root, runs = copies
    orig = CORPUS / ORIGINALS[index]
    copy = runs[index]
    meta = json.loads((copy / "run.json").read_text())
    shift_ns = (
        meta["started_wall_ns"] - json.loads((orig / "run.json").read_text())["started_wall_ns"]
    )
    amap = address_map(Original.load(orig), index, 2)
    a, sa = _analysis(tmp_path / "a", orig)
    b, sb = _analysis(tmp_path / "b", copy)
    assert meta["host"] == f"sim-{index:04d}" and shift_ns != 0
    assert len(a) == len(b) > 0
    assert (b["ts_wall_ns"] - a["ts_wall_ns"] == shift_ns).all()
    for col in ("saddr", "daddr"):
        assert (a[col].map(amap) == b[col]).all()
        assert not set(a[col]) & set(b[col])
    rest = [c for c in a.columns if c not in ("ts_wall_ns", "saddr", "daddr")]
    assert a[rest].equals(b[rest])
    for key in ("by_kind", "spurious", "spurious_by_kind", "match", "retransmissions"):
        assert sa[key] == sb[key], key
    assert sb["recording"]["host"] == f"sim-{index:04d}"
    assert sb["recording"]["run_id"] == meta["run_id"] != sa["recording"]["run_id"]


def _ipv4_header_sums_ok(cap: Capture) -> np.ndarray:
    """Whether each IPv4 header sums to 0xffff (a full recomputation, not RFC 1624)."""
    l3_off, _ = L3_OFFSET[cap.linktype]
    pkt = cap.record_starts + RECORD_HEADER
    proto = (cap.data[pkt + 12].astype(int) << 8) | cap.data[pkt + 13]
    l3 = pkt[proto == ETH_P_IP] + l3_off
    hdr = cap.data[l3[:, None] + np.arange(20)].astype(np.int64)
    s = ((hdr[:, 0::2] << 8) | hdr[:, 1::2]).sum(axis=1)
    for _ in range(3):
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def test_rewritten_ipv4_headers_have_right_checksums(copies):
    _root, runs = copies
    cap = Capture.read(runs[0] / "capture.pcap")  # slow_server_tlp: Ethernet, IPv4
    ok = _ipv4_header_sums_ok(cap)
    assert ok.size > 50 and ok.all()
    orig = Capture.read(CORPUS / ORIGINALS[0] / "capture.pcap")
    assert not np.array_equal(orig.data, cap.data)
    assert cap.record_starts.tolist() == orig.record_starts.tolist()


def test_tcp_and_ip_checksums_stay_right_for_whole_packets(tmp_path):
    """Packets captured whole, with right checksums (scapy computes them): after the
    rewrite every IPv4 header and TCP checksum is what a full recomputation gives."""
    from scapy.all import IP, TCP, Ether, IPv6, Raw, rdpcap, wrpcap

    pkts = []
    for i in range(20):
        ip = (
            IP(src="10.77.0.1", dst="10.77.0.2")
            if i % 2
            else IPv6(src="fd00:77::1", dst="fd00:77::2")
        )
        pkts.append(
            Ether()
            / ip
            / TCP(sport=40000, dport=5001, seq=1000 * i, flags="PA")
            / Raw(bytes(range(i, i + 200 + i)))
        )
    path = tmp_path / "whole.pcap"
    wrpcap(str(path), pkts)
    amap = {
        "10.77.0.1": "10.3.7.1",
        "10.77.0.2": "198.18.4.2",
        "fd00:77::1": "fd10:307::1",
        "fd00:77::2": "fd20:4::2",
    }
    from retranscope.fleet.simulate import packed_address, rewrite_capture

    out = tmp_path / "rewritten.pcap"
    rewrite_capture(
        Capture.read(path), 3600, {packed_address(a): packed_address(b) for a, b in amap.items()}
    ).tofile(out)
    got = rdpcap(str(out))
    assert len(got) == len(pkts)
    for before, after in zip(pkts, got):
        assert float(after.time) == pytest.approx(float(before.time) + 3600, abs=1e-5)
        net = after[IP] if IP in after else after[IPv6]
        assert net.src == amap[before[IP if IP in before else IPv6].src]
        redo = after.copy()
        del redo[TCP].chksum
        if IP in redo:
            del redo[IP].chksum
        redo = redo.__class__(bytes(redo))
        assert after[TCP].chksum == redo[TCP].chksum
        if IP in after:
            assert after[IP].chksum == redo[IP].chksum
