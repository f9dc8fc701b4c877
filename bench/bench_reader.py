"""Time the capture reader on a large synthetic capture.

    .venv/bin/python bench/bench_reader.py                   # 1.3M packets, snaplen 128
    .venv/bin/python bench/bench_reader.py --format pcapng
    .venv/bin/python bench/bench_reader.py -n 200000 --keep --path /tmp/x.pcap
    .venv/bin/python bench/bench_reader.py --compare-old /tmp/pcap_old.py --repeat 7
    .venv/bin/python bench/bench_reader.py --jobs 1 2 --repeat 7     # workers: paired runs
    .venv/bin/python bench/bench_reader.py --input big.pcap --stream # chunks only: peak RSS

Each timed run is a fresh interpreter (as a CLI run is), so page faults on new memory and
the first touch of the file's pages are counted, not hidden by a warm process; the file
itself is in the page cache (just written), as it is when tcpdump has just written it.

The capture imitates `tcpdump -s 128 -w` of a few bulk transfers on Ethernet: full-size
data segments cut at the snaplen, pure ACKs, SACK ACKs with 1-3 blocks, a share of IPv6
and 802.1Q-tagged frames, all with the timestamps option. It is written with numpy (one
template per kind of packet, fields stamped in by column), which takes a second or two
rather than the minutes scapy would.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import as_strided

PCAP_GLOBAL_HEADER = struct.Struct("<IHHiIII")  # magic, v2.4, thiszone, sigfigs, snaplen, link
LINKTYPE_ETHERNET = 1
MSS_V4 = 1448  # 1500 - 20 (IPv4) - 20 (TCP) - 12 (timestamps option)
MSS_V6 = 1428  # 1500 - 40 (IPv6) - 20 (TCP) - 12 (timestamps option)


def _frame_template(
    *, v6: bool, vlan: bool, payload_len: int, sack_blocks: int
) -> tuple[np.ndarray, dict[str, int]]:
    """One Ethernet frame's header bytes, and where the fields that vary sit in it."""
    eth = bytearray(b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01")
    if vlan:
        eth += struct.pack(">HH", 0x8100, 42)  # 802.1Q TCI: VLAN 42
    eth += struct.pack(">H", 0x86DD if v6 else 0x0800)
    # TCP options: NOP NOP TS (RFC 7323 appendix A layout), then NOP NOP SACK (RFC 2018).
    opts = b"\x01\x01\x08\x0a" + b"\x00" * 8
    if sack_blocks:
        opts += b"\x01\x01" + bytes([5, 2 + 8 * sack_blocks]) + b"\x00" * (8 * sack_blocks)
    tcp_len = 20 + len(opts)
    tcp = bytearray(20) + opts
    tcp[12] = (tcp_len // 4) << 4
    tcp[13] = 0x10  # ACK
    if v6:
        ip = bytearray(40)
        ip[0] = 0x60
        ip[4:6] = struct.pack(">H", tcp_len + payload_len)
        ip[6] = 6
        ip[7] = 64
        ip[8:10] = b"\xfd\x00"
        ip[24:26] = b"\xfd\x00"
    else:
        ip = bytearray(20)
        ip[0] = 0x45
        ip[2:4] = struct.pack(">H", 20 + tcp_len + payload_len)
        ip[6] = 0x40  # DF
        ip[8] = 64
        ip[9] = 6
    frame = bytes(eth + ip + tcp)
    l3 = len(eth)
    l4 = l3 + len(ip)
    where = {
        "l3": l3,
        "l4": l4,
        "saddr": l3 + (8 if v6 else 12),
        "daddr": l3 + (24 if v6 else 16),
        "ipid": -1 if v6 else l3 + 4,
        "tsopt": l4 + 20 + 4,
        "sack": l4 + 20 + 16 if sack_blocks else -1,
        "wire_len": len(frame) + payload_len,
    }
    return np.frombuffer(frame, dtype=np.uint8), where


def _put_be(rows: np.ndarray, offset: int, values: np.ndarray, nbytes: int) -> None:
    dtype = {2: ">u2", 4: ">u4", 8: ">u8"}[nbytes]
    rows[:, offset : offset + nbytes] = (
        np.ascontiguousarray(values, dtype=dtype).view(np.uint8).reshape(-1, nbytes)
    )


def make_synthetic_pcap(
    path: str, n_packets: int, *, snaplen: int = 128, seed: int = 1, fmt: str = "pcap"
) -> int:
    """Write a pcap (or pcapng: SHB, one IDB, EPBs) of ``n_packets`` TCP segments; return
    its size in bytes."""
    rng = np.random.default_rng(seed)
    n_flows = 64
    # kinds: (v6, vlan, payload, sack blocks, is data, share)
    kinds = [
        (False, False, MSS_V4, 0, True, 0.52),
        (False, False, 0, 0, False, 0.22),
        (False, False, 0, 1, False, 0.03),
        (False, False, 0, 3, False, 0.02),
        (False, True, MSS_V4, 0, True, 0.05),
        (False, True, 0, 0, False, 0.02),
        (True, False, MSS_V6, 0, True, 0.08),
        (True, False, 0, 0, False, 0.03),
        (True, False, 0, 2, False, 0.01),
        (False, False, 300, 0, True, 0.02),
    ]
    shares = np.array([k[5] for k in kinds])
    kind = rng.choice(len(kinds), size=n_packets, p=shares / shares.sum()).astype(np.int8)
    # a flow keeps its family: the first 7/8 of the flows are IPv4, the rest IPv6
    v6_kind = np.array([k[0] for k in kinds])[kind]
    n_v4_flows = n_flows * 7 // 8
    flow = np.where(
        v6_kind,
        rng.integers(n_v4_flows, n_flows, size=n_packets),
        rng.integers(0, n_v4_flows, size=n_packets),
    )
    ts_us = 1_700_000_000_000_000 + np.cumsum(rng.integers(1, 40, size=n_packets))
    # Coherent flows, so that other tools (tcptrace, the analyzer) can read the file too:
    # client data goes out in sequence, the server's ACKs acknowledge everything sent
    # before them. Fields are int64 here and masked to 32 bits when written.
    payload = np.array([k[2] if k[4] else 0 for k in kinds])[kind]
    by_flow = np.argsort(flow, kind="stable")
    sent_sorted = np.cumsum(payload[by_flow]) - payload[by_flow]  # bytes before, all flows
    flow_sorted = flow[by_flow]
    sent_sorted -= sent_sorted[np.searchsorted(flow_sorted, flow_sorted)]  # ... this flow's
    sent = np.empty(n_packets, np.int64)
    sent[by_flow] = sent_sorted
    isn_client = rng.integers(0, 2**32, size=n_flows)[flow]
    isn_server = rng.integers(0, 2**32, size=n_flows)[flow]
    is_data = np.array([k[4] for k in kinds])[kind]
    seq = np.where(is_data, isn_client + 1 + sent, isn_server + 1)
    ack = np.where(is_data, isn_server + 1, isn_client + 1 + sent)

    templates = [
        _frame_template(v6=v6, vlan=vlan, payload_len=pay, sack_blocks=sb)
        for v6, vlan, pay, sb, _, _ in kinds
    ]
    caplen_of = np.array([min(w["wire_len"], snaplen) for _, w in templates])
    if fmt == "pcap":
        file_header = PCAP_GLOBAL_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)
        rec_head = 16  # ts_sec, ts_usec, caplen, origlen
        rec_len_of = rec_head + caplen_of
    else:
        # SHB (version 1.0, section length unknown) and an IDB with no options (µs)
        file_header = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
        file_header += struct.pack("<IIHHII", 1, 20, LINKTYPE_ETHERNET, 0, snaplen, 20)
        rec_head = 28  # type, length, interface, ts high, ts low, caplen, origlen
        rec_len_of = rec_head + caplen_of + (-caplen_of % 4) + 4  # data padded, trailer
    record_len = rec_len_of[kind]
    offsets = len(file_header) + np.concatenate(([0], np.cumsum(record_len)[:-1]))
    total = int(len(file_header) + record_len.sum())

    out = np.zeros(total, dtype=np.uint8)
    out[: len(file_header)] = np.frombuffer(file_header, np.uint8)
    for k, ((template, where), (v6, _vlan, _payload, sack_blocks, data_kind, _)) in enumerate(
        zip(templates, kinds)
    ):
        idx = np.flatnonzero(kind == k)
        if idx.size == 0:
            continue
        caplen = int(caplen_of[k])
        rec_len = int(rec_len_of[k])
        rows = np.zeros((idx.size, rec_len), dtype=np.uint8)
        if fmt == "pcap":
            hdr = np.empty((idx.size, 4), dtype="<u4")
            hdr[:, 0] = ts_us[idx] // 1_000_000
            hdr[:, 1] = ts_us[idx] % 1_000_000
            hdr[:, 2] = caplen
            hdr[:, 3] = where["wire_len"]
        else:
            hdr = np.empty((idx.size, 7), dtype="<u4")
            hdr[:, 0] = 6  # EPB
            hdr[:, 1] = rec_len
            hdr[:, 2] = 0
            hdr[:, 3] = ts_us[idx] >> 32
            hdr[:, 4] = ts_us[idx] & 0xFFFFFFFF
            hdr[:, 5] = caplen
            hdr[:, 6] = where["wire_len"]
            rows[:, -4:] = np.frombuffer(struct.pack("<I", rec_len), np.uint8)
        rows[:, :rec_head] = hdr.view(np.uint8)
        full = np.zeros((idx.size, len(template)), dtype=np.uint8)
        full[:] = template
        f = flow[idx]
        client = 0xC0A80000 + f
        server = np.full(idx.size, 0x0A000001)
        src, dst = (client, server) if data_kind else (server, client)
        if v6:
            _put_be(full, where["saddr"] + 8, src, 8)
            _put_be(full, where["daddr"] + 8, dst, 8)
        else:
            _put_be(full, where["saddr"], src, 4)
            _put_be(full, where["daddr"], dst, 4)
            _put_be(full, where["ipid"], idx & 0xFFFF, 2)
        sport, dport = (40000 + f, 5001 + 0 * f) if data_kind else (5001 + 0 * f, 40000 + f)
        _put_be(full, where["l4"], sport, 2)
        _put_be(full, where["l4"] + 2, dport, 2)
        _put_be(full, where["l4"] + 4, seq[idx] & 0xFFFFFFFF, 4)
        _put_be(full, where["l4"] + 8, ack[idx] & 0xFFFFFFFF, 4)
        _put_be(full, where["l4"] + 14, np.full(idx.size, 502), 2)
        _put_be(full, where["tsopt"], (ts_us[idx] // 1000) & 0xFFFFFFFF, 4)
        _put_be(full, where["tsopt"] + 4, (ts_us[idx] // 1000 - 20) & 0xFFFFFFFF, 4)
        if sack_blocks:
            left = ack[idx] + 2 * MSS_V4  # data above the cumulative ACK: a hole below
            for b in range(sack_blocks):
                _put_be(full, where["sack"] + 8 * b, (left + 2 * b * MSS_V4) & 0xFFFFFFFF, 4)
                _put_be(
                    full, where["sack"] + 8 * b + 4, (left + (2 * b + 1) * MSS_V4) & 0xFFFFFFFF, 4
                )
        # bytes past the snaplen are not written, as with tcpdump -s
        keep = min(caplen, len(template))
        rows[:, rec_head : rec_head + keep] = full[:, :keep]
        window = as_strided(out, shape=(total - rec_len + 1, rec_len), strides=(1, 1))
        window[offsets[idx]] = rows
    with open(path, "wb") as fh:
        fh.write(memoryview(out))
    return total


# One timed run, in a fresh interpreter (as a CLI run is): numpy's import, page faults on
# new memory and the first touch of the file's pages all count. argv: path, mode
# ("table": read_capture; "stream": iterate the chunks, keep nothing), jobs, and the
# reader module to use ("" = retranscope.analyze.capture; else a file defining
# read_capture, e.g. the reader of an earlier commit: git show REV:analyze/pcap.py).
CHILD = """
import json, sys, time
path, mode, jobs, module = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
if module:
    import importlib.util
    spec = importlib.util.spec_from_file_location("reader_under_test", module)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reader_under_test"] = mod
    spec.loader.exec_module(mod)
    read = lambda p: mod.read_capture(p)
else:
    from retranscope.analyze.capture import open_capture, read_capture
    read = lambda p: read_capture(p, jobs=jobs)
t1 = time.perf_counter()
c1 = time.process_time()
if mode == "stream":
    with open_capture(path, jobs=jobs) as cap:
        for chunk in cap:
            pass
        packets = cap.meta.tcp_packets
else:
    packets = read(path).meta.tcp_packets
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
hwm_kb = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")).split()[1])
print(json.dumps({"import_s": t1 - t0, "read_s": time.perf_counter() - t1,
                  "cpu_s": time.process_time() - c1, "packets": int(packets),
                  "peak_rss_mb": hwm_kb / 1024}))
"""


def _run(path: str, mode: str, jobs: int, module: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, path, mode, str(jobs), module],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--packets", type=int, default=1_300_000)
    parser.add_argument("--snaplen", type=int, default=128)
    parser.add_argument("--format", choices=("pcap", "pcapng"), default="pcap")
    parser.add_argument("--path", help="default: /tmp/retranscope_bench_reader.FORMAT")
    parser.add_argument(
        "--input",
        help="time this existing capture (e.g. from "
        "bench/make_big_capture.py) instead of writing one",
    )
    parser.add_argument("--repeat", type=int, default=5, help="fresh-process runs per variant")
    parser.add_argument("--keep", action="store_true", help="keep the capture afterwards")
    parser.add_argument(
        "--compare-old",
        metavar="READER.py",
        help="paired runs against another reader module (A B A B ...)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        nargs="+",
        default=[1],
        help="decode on this many processes; several values: paired runs",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="iterate the chunks only (no table): the bounded-memory path",
    )
    args = parser.parse_args(argv)

    if args.input:
        path, size_bytes, expect = args.input, os.path.getsize(args.input), None
    else:
        path = args.path or f"/tmp/retranscope_bench_reader.{args.format}"
        t0 = time.perf_counter()
        size_bytes = make_synthetic_pcap(path, args.packets, snaplen=args.snaplen, fmt=args.format)
        expect = args.packets
        print(
            f"wrote {path}: {args.packets:,} packets, {size_bytes / 1e6:.1f} MB "
            f"in {time.perf_counter() - t0:.2f} s"
        )
    mode = "stream" if args.stream else "table"
    variants = [(f"jobs={j}", mode, j, "") for j in args.jobs]
    if args.compare_old:
        variants.insert(0, ("old reader", "table", 1, args.compare_old))
    runs: dict[str, list[dict]] = {v[0]: [] for v in variants}
    try:
        for _ in range(args.repeat):  # paired: every variant once per round
            for name, m, jobs, module in variants:
                runs[name].append(_run(path, m, jobs, module))
    finally:
        if not args.input and not args.keep:
            os.unlink(path)
    for name, rs in runs.items():
        got = {r["packets"] for r in rs}
        if expect is not None and got != {expect}:
            print(f"error: {name} read {got} packets, wrote {expect}", file=sys.stderr)
            return 1
        read_s = _median([r["read_s"] for r in rs])
        print(
            f"{name:>12} ({mode}, {len(rs)} fresh-process runs): median {read_s:.3f} s "
            f"({rs[0]['packets'] / read_s / 1e6:.2f} M packets/s, "
            f"{size_bytes / read_s / 1e6:.0f} MB/s), median CPU "
            f"{_median([r['cpu_s'] for r in rs]):.3f} s, peak RSS "
            f"{_median([r['peak_rss_mb'] for r in rs]):.0f} MB; import "
            f"{_median([r['import_s'] for r in rs]) * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
