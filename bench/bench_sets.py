"""`retranscope analyze` on a capture set, against itself another way, in paired runs.

    .venv/bin/python bench/bench_sets.py bench/data/big.pcap --files 8 --pairs 7
    .venv/bin/python bench/bench_sets.py bench/data/big.pcap --files 8 --gzip --pairs 5 \\
        --against "--decode-jobs 1 --no-spill"
    .venv/bin/python bench/bench_sets.py bench/data/big13m.pcap --files 16 --gzip --pairs 3

Rotates CAPTURE into ``--files`` files of about equal bytes, cut at record boundaries and
named as `tcpdump -C` names them (cap.pcap, cap.pcap1, ...; gzip -6 compressed with
``--gzip``, as `tcpdump -z gzip` leaves them; as pcapng with ``--pcapng``, one section
and one interface a file, as a `dumpcap -b` ring), then runs `analyze --pcap DIR` as it is by
default and with ``--against``'s arguments (default: `--decode-jobs 1`, the set read by
one process) in turns, A B A B ..., and prints the medians, the median of the paired
ratios and whether both wrote the same outputs. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import gzip
import mmap
import shlex
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_analyze import (  # noqa: E402
    VENV_BIN,
    median,
    print_peak_floor,
    run,
    same_outputs_apart,
)


def as_pcapng(head: bytes, records, order: str) -> bytes:
    """pcap records (a memoryview of whole records) as one pcapng section, as dumpcap
    writes it: a section header, one interface (the pcap header's link type, snaplen and
    timestamp unit), an enhanced packet block a record (draft-ietf-opsawg-pcapng §4.1,
    §4.2, §4.3)."""
    nano = head[:4] in (b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1")
    snaplen, linktype = struct.unpack_from(order + "II", head, 16)
    opts = struct.pack("<HHB3x", 9, 1, 9 if nano else 6) + struct.pack("<HH", 0, 0)
    idb_body = struct.pack("<HHI", linktype & 0xFFFF, 0, snaplen) + opts
    out = [
        struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28),
        struct.pack("<II", 1, 12 + len(idb_body))
        + idb_body
        + struct.pack("<I", 12 + len(idb_body)),
    ]
    off = 0
    while off + 16 <= len(records):
        sec, frac, caplen, wire = struct.unpack_from(order + "IIII", records, off)
        units = sec * (10**9 if nano else 10**6) + frac
        pad = -caplen % 4
        total = 32 + caplen + pad
        out.append(
            struct.pack("<IIIIIII", 6, total, 0, units >> 32, units & 0xFFFFFFFF, caplen, wire)
            + bytes(records[off + 16 : off + 16 + caplen])
            + bytes(pad)
            + struct.pack("<I", total)
        )
        off += 16 + caplen
    return b"".join(out)


def rotate(
    capture: Path, into: Path, files: int, compress: bool, pcapng: bool = False
) -> list[Path]:
    """``capture`` (a pcap file) cut into ``files`` files at the record boundaries
    nearest equal shares of its bytes, each with its file header (as pcapng, each one
    section of one interface, with ``pcapng``)."""
    with open(capture, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        head, size = data[:24], len(data)
        cuts, off, k = [24], 24, 1
        while off + 16 <= size and k < files:
            if off >= size * k // files:
                cuts.append(off)
                k += 1
            off += 16 + struct.unpack_from(order + "I", data, off + 8)[0]
        cuts.append(size)
        paths = []
        name = "cap.pcapng" if pcapng else "cap.pcap"
        for i, (lo, hi) in enumerate(zip(cuts, cuts[1:])):
            path = into / (name + (str(i) if i else "") + (".gz" if compress else ""))
            with gzip.open(path, "wb", compresslevel=6) if compress else open(path, "wb") as out:
                if pcapng:
                    out.write(as_pcapng(head, memoryview(data)[lo:hi], order))
                else:
                    out.write(head)
                    out.write(data[lo:hi])
            paths.append(path)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", type=Path)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--pcapng", action="store_true", help="write the files as pcapng")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--against", default="--decode-jobs 1")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sets-") as tmp:
        sets = Path(tmp, "set")
        sets.mkdir()
        # in a process of its own: the capture's pages it touches would otherwise be this
        # process's high-water RSS, which every child's ru_maxrss starts from
        # (bench_analyze.same_outputs_apart)
        code = (
            f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_sets as b; "
            f"b.rotate(b.Path({str(args.capture)!r}), b.Path({str(sets)!r}), "
            f"{args.files}, {args.gzip}, {args.pcapng})"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
        paths = sorted(sets.iterdir(), key=lambda p: (len(p.name), p.name))
        stored = sum(p.stat().st_size for p in paths)
        print(f"{args.capture} as {len(paths)} files, {stored / 1e6:,.0f} MB as stored")
        argv = {
            "default": [],
            args.against: shlex.split(args.against),
        }
        outs = {name: Path(tmp, f"out-{i}") for i, name in enumerate(argv)}
        cmd = {
            name: [str(VENV_BIN / "retranscope"), "analyze", "--pcap", str(sets)]
            + ["-o", str(outs[name]), "-q", *extra]
            for name, extra in argv.items()
        }
        for name in cmd:
            run(cmd[name])  # untimed: fills the page cache and the bytecode cache
        runs: dict[str, list[dict]] = {name: [] for name in cmd}
        for _ in range(args.pairs):
            for name in cmd:
                runs[name].append(run(cmd[name]))
        for name, rs in runs.items():
            print(
                f"{name:28} wall {median([r['wall_s'] for r in rs]):6.2f} s  "
                f"peak {median([r['peak_mb'] for r in rs]):5.0f} MB  ({len(rs)} runs)"
            )
        a, b = runs.values()
        ratios = sorted(x["wall_s"] / y["wall_s"] for x, y in zip(a, b))
        print(
            f"default takes {median(ratios):.3f}x the time of `{args.against}` (median of "
            f"{len(ratios)} paired ratios; quartiles {ratios[len(ratios) // 4]:.3f}-"
            f"{ratios[3 * len(ratios) // 4]:.3f})"
        )
        print_peak_floor()
        print(f"outputs: {same_outputs_apart(*outs.values()) or 'identical'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
