"""Finding the runs under ROOT (I/O edge), cheaply enough to redo on every invocation.

A run is what `retranscope record --out DIR --pcap DIR/capture.pcap` writes (a directory with
run.json, events/ and a capture), or a capture alone. Finding runs and fingerprinting them
touches only directory listings and stat(2): an up-to-date fleet of thousands of runs is
checked without reading a byte of them. Reading run.json (``identify``) is left for the
runs that may need work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from retranscope.errors import BadInput
from retranscope.fleet.dataset import is_plain_id

#: What a capture is called (the reader knows pcap and pcapng by their magic, not by name).
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
RUN_JSON = "run.json"
#: Bytes from each end of a capture that, with its size, identify a capture alone.
ID_SPAN_BYTES = 64 << 10


@dataclass(frozen=True)
class Found:
    """A run as found: where its inputs are and what they look like (stat only)."""

    root: str  # absolute
    path: str  # run directory, or the capture alone, relative to root (posix)
    capture: str | None  # relative to root
    run_json: bool
    fingerprint: str
    size_bytes: int

    def abs(self, rel: str) -> Path:
        return Path(self.root, rel)


@dataclass(frozen=True)
class Identity:
    run_id: str
    host: str | None
    started_wall_ns: int | None
    problem: str | None = None  # why the run cannot be analyzed, found before any task


def find_runs(root: Path, skip: Path | None = None) -> list[Found]:
    """Every run under ``root``, sorted by path. ``skip``: a directory not to enter (the
    dataset, when it lives under root). Hidden directories are not entered, nor a run
    directory's own subdirectories (events/, an analysis beside it)."""
    root = root.resolve()
    if not root.is_dir():
        raise BadInput(f"{root}: not a directory; give the directory holding the runs")
    skip_real = skip.resolve() if skip is not None else None
    found: list[Found] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and (skip_real is None or here / d != skip_real)
        )
        captures = sorted(f for f in filenames if f.endswith(CAPTURE_SUFFIXES))
        if RUN_JSON in filenames:
            dirnames[:] = []
            found.append(_recording(root, here, captures))
        else:
            found += [_capture_alone(root, here / f) for f in captures]
    return sorted(found, key=lambda f: f.path)


def _recording(root: Path, run_dir: Path, captures: list[str]) -> Found:
    capture: str | None = None
    if "capture.pcap" in captures or len(captures) <= 1:
        capture = "capture.pcap" if "capture.pcap" in captures else next(iter(captures), None)
    else:  # several: the one the recorder wrote, as run.json names it
        try:
            pcap = _read_json(run_dir / RUN_JSON).get("pcap") or {}
        except BadInput:
            pcap = {}  # the task says what is wrong with run.json
        named = Path(str(pcap.get("path", ""))).name
        capture = named if named in captures else None
    files = [RUN_JSON] + ([capture] if capture else [])
    events = run_dir / "events"
    if events.is_dir():
        files += sorted(
            f"events/{e.name}"
            for e in os.scandir(events)
            if e.name.endswith(".parquet") and e.is_file()
        )
    fingerprint, size = _fingerprint(run_dir, files)
    rel = run_dir.relative_to(root).as_posix()
    return Found(
        str(root),
        rel or ".",
        _rel(run_dir / capture, root) if capture else None,
        True,
        fingerprint,
        size,
    )


def _capture_alone(root: Path, capture: Path) -> Found:
    fingerprint, size = _fingerprint(capture.parent, [capture.name])
    rel = _rel(capture, root)
    return Found(str(root), rel, rel, False, fingerprint, size)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _fingerprint(base: Path, names: list[str]) -> tuple[str, int]:
    """Digest of each input's name (relative to its run), size and mtime: a run moved
    elsewhere keeps it; a file rewritten, added or removed changes it."""
    h = hashlib.sha256()
    size = 0
    for name in names:
        st = os.stat(base / name)
        size += st.st_size
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32], size


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: unreadable run metadata ({exc})") from exc
    if not isinstance(obj, dict):
        raise BadInput(f"{path}: not a run.json object")
    return obj


def identify(run: Found, host_from: HostPattern | None) -> Identity:
    """Read what names the run: run.json's run_id, host and start; for a capture alone a
    digest of its ends, and the host from ``host_from``. Never raises: a run that cannot
    be identified carries its problem and a path-derived id."""
    fallback = "path-" + hashlib.sha256(run.path.encode()).hexdigest()[:24]
    host = host_from.host(run.path) if host_from else None
    if not run.run_json:
        problem = (
            None
            if host
            else (
                f"{run.path}: a capture without run.json, and no host for it: give "
                "--host-from PATTERN (e.g. '{host}/*.pcap')"
            )
        )
        try:
            return Identity(_capture_id(run.abs(run.path)), host, None, problem)
        except OSError as exc:
            return Identity(fallback, host, None, f"{run.path}: unreadable ({exc})")
    try:
        meta = _read_json(run.abs(run.path) / RUN_JSON)
    except BadInput as exc:
        return Identity(fallback, host, None, str(exc))
    run_id = str(meta.get("run_id") or "")
    started = meta.get("started_wall_ns")
    host = str(meta["host"]) if meta.get("host") else host
    if not is_plain_id(run_id):
        return Identity(
            fallback,
            host,
            started,
            f"{run.path}/run.json: run_id {run_id!r} is "
            "not a plain identifier (letters, digits, -_.); record it again",
        )
    if not host:
        return Identity(
            run_id, None, started, f"{run.path}/run.json names no host: give --host-from PATTERN"
        )
    return Identity(run_id, host, started if isinstance(started, int) else None)


def _capture_id(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(ID_SPAN_BYTES))
        if size > 2 * ID_SPAN_BYTES:
            f.seek(size - ID_SPAN_BYTES)
        h.update(f.read(ID_SPAN_BYTES))
    return "cap-" + h.hexdigest()[:28]


class HostPattern:
    """``--host-from``: a path pattern, relative to ROOT, with ``{host}`` where the host
    name is; ``*`` is any part of one path segment and ``**`` any number of segments.
    ``{host}/*.pcap`` takes web-1 from web-1/0105.pcap."""

    def __init__(self, pattern: str):
        if pattern.count("{host}") != 1:
            raise BadInput(
                f"--host-from {pattern!r}: needs {{host}} exactly once, e.g. '{{host}}/*.pcap'"
            )
        regex = ""
        for token in re.split(r"(\{host\}|\*\*/?|\*)", pattern.strip("/")):
            if token == "{host}":
                regex += r"(?P<host>[^/]+?)"
            elif token.startswith("**"):
                regex += "(?:.*/)?" if token.endswith("/") else ".*"
            elif token == "*":
                regex += "[^/]*"
            else:
                regex += re.escape(token)
        self.pattern = pattern
        self._regex = re.compile(regex)

    def host(self, rel_path: str) -> str | None:
        """The host in ``rel_path``, or None if the path does not fit the pattern (a
        pattern may also name only the leading directories of a path)."""
        for cut in _prefixes(rel_path):
            m = self._regex.fullmatch(cut)
            if m:
                return m.group("host")
        return None


def _prefixes(rel_path: str) -> list[str]:
    parts = rel_path.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]
