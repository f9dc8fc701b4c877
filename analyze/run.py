"""`retranscope analyze` as a function of paths: read the inputs, analyze, write the outputs.

The one entry point that the CLI, the demo, the fleet and the tests all call, so each of
them runs exactly what a user runs. Messages for a person (warnings) go to ``warn``;
errors are raised as RetranscopeError subclasses (retranscope/errors.py).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Union

from retranscope.analyze.memory import reuse_freed_memory
from retranscope.analyze.pipeline import Result, analyze
from retranscope.errors import BadInput, RetranscopeError

#: called with analyze.capture.ReadProgress while reading, then (spilled) with
#: analyze.spill.ShardProgress after each shard classified
Progress = Callable[[Any], None]
Captures = Union[Path, Sequence[Path]]  # one capture, or a set read as one (capture/sets.py)

NO_MATCH_WARNING = (
    "no kernel event matched any frame: the capture and the events are from "
    "different hosts, namespaces or times"
)


def run_analysis(
    pcap: Captures | None,
    events: Path | None,
    out: Path,
    *,
    progress: Progress | None = None,
    jobs: int | None = None,
    decode_jobs: int | None = None,
    spill: bool | None = None,
    warn: Callable[[str], None] = lambda _line: None,
) -> Result:
    """Analyze ``pcap`` and/or the recording directory ``events`` into ``out``
    (retransmits.parquet, flows.parquet, summary.json: analyze/outputs.py). ``pcap`` may
    be several files, a directory or a glob (one capture). ``jobs``: processes that
    classify it, in shards of connections (analyze/shards.py; None: a spilled capture on
    every core, holding no more shards at once than one process would, analyze/spill.py;
    one in memory on one). ``decode_jobs``: that read
    and decode it: a spilled pcap file is read in that many parts at once
    (capture/split.py; None: every core), other inputs are decoded on that many worker
    processes (None: 1, which was faster on the 2-core machine measured). ``spill``:
    spill the capture's packets to disk and classify them a shard at a time, in memory
    that follows the largest shard rather than the capture (analyze/spill.py; None: when
    the capture is at least SPILL_MIN_BYTES, a compressed one counted at
    COMPRESSED_EXPANSION times its size, and for a pipe; never with ``events``, whose
    join needs the whole packet table)."""
    reuse_freed_memory()
    # Before pyarrow loads (the outputs' writing): Arrow on the C library's allocator,
    # whose freed memory is given back (shards.give_back_free_memory) where Arrow's own
    # pool kept it: the writing of the 13M-packet capture's 22 row groups peaked 18 MB
    # higher on it, ~0.3 MB a group more each, the 1.3M-packet capture's 13 MB higher
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file: give a directory (made if it does not exist)")
    capture = None
    made = not out.exists()
    try:
        if pcap is not None:
            capture = _read(pcap, progress, decode_jobs, False if events else spill, out)
            for w in capture.meta.warnings:
                warn(w)
        try:
            return _analyze(capture, events, out, jobs, warn)
        except OSError as err:  # a disk that filled under the shards' rows or the outputs
            raise OutputFailed(out, err) from err
    finally:
        if capture is not None and hasattr(capture, "close"):
            capture.close()  # a spilled capture's files, inside ``out``
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # what was refused or failed leaves no --out behind


class OutputFailed(RetranscopeError):
    """The analysis could not be written (or a spilled capture's shards kept) in --out."""

    def __init__(self, out: Path, err: OSError):
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(out) else ""
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "free space there or give another --out"
        elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            what = "give an --out this user can write to"
        else:
            what = "give another --out"
        super().__init__(
            f"cannot finish the analysis in {out}: {err.strerror or err}{where}; no output "
            f"was left there: {what}"
        )


def _read(pcap: Captures, progress: Progress | None, decode_jobs, spill: bool | None, out: Path):
    """The capture in memory (read_capture), or spilled to disk beside the outputs."""
    from retranscope.analyze.capture import open_capture, read_capture
    from retranscope.analyze.capture.parallel import default_jobs
    from retranscope.analyze.spill import SPILL_MIN_BYTES, spill_capture

    if spill is None:
        with open_capture(pcap) as probe:  # resolves the inputs; reads nothing
            size = probe.expanded_bytes()
            # a compressed capture by what it decompresses to; a pipe, whose size is not
            # known, spilled: memory then follows neither
            spill = size is None or size >= SPILL_MIN_BYTES
    workers = 1 if decode_jobs is None else decode_jobs
    if not spill:
        return read_capture(pcap, progress=progress, jobs=workers)
    with open_capture(pcap, progress=progress, jobs=workers) as stream:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputFailed(out, err) from err
        parts = default_jobs() if decode_jobs is None else decode_jobs
        spilled = spill_capture(stream, out, jobs=parts)
        spilled.progress = progress  # then the shards' classification
        return spilled


def _analyze(capture, events: Path | None, out: Path, jobs, warn) -> Result:
    ev = None
    if events is not None:
        from retranscope.analyze.events import read_events

        ev = read_events(events)
        for w in ev.warnings:
            warn(w)
    result = analyze(capture=capture, events=ev, jobs=jobs)
    from retranscope.analyze.outputs import write_outputs  # pyarrow: after the peak
    from retranscope.analyze.shards import give_back_free_memory

    # what the classification freed goes back before the writing takes its own memory
    # (reuse_freed_memory keeps it otherwise)
    give_back_free_memory()
    write_outputs(result, out)
    m = result.summary.get("match")
    if m and m["events"] and not m["events_matched"]:
        warn(NO_MATCH_WARNING)
    return result
