"""Capture sets: several files read as one capture.

``tcpdump -C``/``-W`` rotate into ``cap.pcap``, ``cap.pcap1``, ``cap.pcap2``... (a ring
with ``-W``, so the oldest file may have any number), ``-G`` into strftime names; names
do not sort by time (``cap.pcap10`` before ``cap.pcap2``). So each file's first packet
is read, and the files are ordered by its timestamp (files with no packet last, by
name). An input may be a file, a directory (every capture in it: files whose magic is
pcap or pcapng, compressed or not; anything else there is named in a warning), or a glob
pattern (every match must be a capture). "-" is standard input.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from retranscope.analyze.capture.chunks import make_walker
from retranscope.analyze.capture.stream import open_stream
from retranscope.errors import BadInput, CaptureError

GLOB_CHARS = "*?["
PEEK_BYTES = 1 << 16  # enough for the headers and first record of any capture tcpdump writes
PEEK_MAX_BYTES = 64 << 20  # a first packet record further in than this is not looked for


@dataclass
class InputFile:
    path: str
    first_ts_ns: int | None = None
    #: the format ("pcap", "pcapng") and the interfaces its first bytes describe (a pcap
    #: file's one, from its header: all it has; a pcapng file's first blocks only)
    fmt: str = ""
    ifaces: list = field(default_factory=list)
    compression: str | None = None


def resolve_inputs(items: list[str]) -> tuple[list[str], list[str]]:
    """The capture files the inputs name, in the order given (a directory's and a glob's
    files by name), and warnings about files set aside (non-captures in a directory).
    Raises BadInput for a missing file, a directory with no capture, a glob matching
    nothing."""
    files: list[str] = []
    warnings: list[str] = []
    for item in items:
        item = os.fspath(item)
        if item == "-" or os.path.isfile(item):
            files.append(item)
        elif os.path.isdir(item):
            found, others = _captures_in(item)
            if not found:
                raise BadInput(
                    f"no capture file in the directory {item} (looked for pcap and pcapng "
                    "files, compressed or not); give the files written by tcpdump -w"
                )
            files += found
            if others:
                shown = ", ".join(os.path.basename(p) for p in others[:5])
                more = f" and {len(others) - 5} more" if len(others) > 5 else ""
                warnings.append(
                    f"{len(others)} files in {item} are not captures and were left out: "
                    f"{shown}{more}"
                )
        elif any(c in item for c in GLOB_CHARS) and not os.path.exists(item):
            matches = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not matches:
                raise BadInput(
                    f"no file matches {item}; check the pattern (quote it so "
                    "that the shell does not expand it first)"
                )
            files += matches
        elif os.path.exists(item):
            raise BadInput(f"not a regular file: {item}; give a capture file written by tcpdump -w")
        else:
            raise BadInput(f"no such file: {item}")
    seen: set[str] = set()
    unique = []
    for f in files:  # the same file named twice (a glob and a name) is read once
        key = f if f == "-" else os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, warnings


def _captures_in(directory: str) -> tuple[list[str], list[str]]:
    paths = sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if not name.startswith(".") and os.path.isfile(os.path.join(directory, name))
    )
    found, others = [], []
    for p in paths:
        try:
            peek_first_ts(p)
        except CaptureError:
            others.append(p)
            continue
        found.append(p)
    return found, others


def peek_first_ts(path: str) -> int | None:
    """The timestamp of the file's first packet record (None if it has none). Raises
    what reading the file would raise (not a capture, unknown link type...)."""
    return peek(path).first_ts_ns


def peek(path: str) -> InputFile:
    """The file's first packet time, its format and the interfaces its first bytes
    describe (peek_first_ts)."""
    stream = open_stream(path)
    try:
        size = PEEK_BYTES
        while True:
            buf = bytearray(size)
            with memoryview(buf) as mv:
                filled = stream.readinto(mv)
            if filled == 0:
                raise CaptureError(
                    f"{path} is empty or unreadable, not a pcap or pcapng "
                    "file; give a capture written by tcpdump -w"
                )
            walker = make_walker(path, bytes(buf[:64]), stream.compression)
            eof = filled < size
            with memoryview(buf) as mv:
                recs, _ = walker.walk(mv[walker.header_bytes : filled], walker.header_bytes, eof)
            if len(recs) or eof or walker.stopped or size >= PEEK_MAX_BYTES:
                first = int(recs.ts_ns[0]) if len(recs) else None
                ifaces = list(walker.ifaces)
                return InputFile(path, first, walker.fmt, ifaces, stream.compression)
            # the first record lies further in: start over with a longer prefix
            stream.close()
            stream = open_stream(path)
            size *= 8
    finally:
        stream.close()


def order_by_first_packet(paths: list[str]) -> list[InputFile]:
    """The files ordered by the time of their first packet (then by the order given)."""
    files = [peek(p) for p in paths]
    never = 1 << 63
    ranked = sorted(
        range(len(files)),
        key=lambda i: (files[i].first_ts_ns if files[i].first_ts_ns is not None else never, i),
    )
    return [files[i] for i in ranked]


def number_ifaces(
    maps: list[list[int]], linktypes: list[int], i: int, ifaces: list, first: list
) -> None:
    """Give file ``i``'s interfaces not numbered yet (``maps[i]``) their numbers in the
    set, appending new ones' link types to ``linktypes``. As mergecap merges identical
    interface descriptions: a file's interface k is the set's interface k when it is the
    same as the first file's k (``first``: link type, snaplen, timestamp unit and
    offset: rotated files of one capture); any other gets a number of its own, in the
    order first seen."""
    while len(maps) <= i:
        maps.append([])
    known = maps[i]
    for k, iface in enumerate(ifaces[len(known) :], start=len(known)):
        if i > 0 and k < len(first) and first[k] == iface and k < len(maps[0]):
            known.append(maps[0][k])
            continue
        known.append(len(linktypes))
        linktypes.append(iface.linktype)
