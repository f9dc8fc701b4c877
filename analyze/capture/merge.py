"""Several files' chunk streams -> one stream in time order, frames numbered through.

Files are taken in the order of their first packet. While a file's packets all come
before the next file's first one (the usual rotated set), its chunks pass through
untouched: frame numbers go on from the files before (``frame + offset``). Where files
overlap in time (merged captures of two interfaces, a ring buffer given out of order),
their records are merged by time, as mergecap does: a k-way merge of the chunk streams
on each record's timestamp, made monotonic per file (the running maximum, so a file's
own order is never changed), ties going to the file that started first. Frames are then
numbered in the merged order. Only records that can no longer be preceded by another
file's are handed on, so memory holds at most a few chunks per open file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from retranscope.analyze.capture.chunks import FileChunk
from retranscope.schemas.packets import PACKET_DTYPES

NEVER = np.iinfo(np.int64).max


@dataclass
class _Open:
    """A file being merged: its chunk iterator and the records not yet handed on."""

    index: int
    chunks: Iterator[FileChunk]
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    rec_frame: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tcp_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tcp: list[dict] = field(default_factory=list)  # packet chunks whose rows are pending
    running_max: int = -(1 << 63)
    last_frame: int = 0  # the file's frame number of the last record handed on
    exhausted: bool = False

    def pull(self) -> None:
        """Read the file's next chunk into the pending records."""
        try:
            chunk = next(self.chunks)
        except StopIteration:
            self.exhausted = True
            return
        keys = np.maximum.accumulate(np.maximum(chunk.rec_ts_ns, self.running_max))
        if keys.size:
            self.running_max = int(keys[-1])
        at = np.searchsorted(chunk.rec_frame, chunk.packets["frame"]) + self.keys.size
        self.keys = np.concatenate([self.keys, keys])
        self.rec_frame = np.concatenate([self.rec_frame, chunk.rec_frame])
        self.tcp_at = np.concatenate([self.tcp_at, at.astype(np.int64)])
        self.tcp.append(chunk.packets)

    @property
    def live(self) -> bool:
        return not self.exhausted or self.keys.size > 0

    def bound(self) -> int:
        """No record this file has yet to hand on can have a smaller key."""
        if self.exhausted:
            return NEVER
        return int(self.keys[-1]) if self.keys.size else self.running_max

    def take(self, m: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """Hand on the first ``m`` pending records: their keys, the positions of the TCP
        rows among them, and those rows."""
        keys, self.keys = self.keys[:m], self.keys[m:]
        self.last_frame = int(self.rec_frame[m - 1])
        self.rec_frame = self.rec_frame[m:]
        k = int(np.searchsorted(self.tcp_at, m))
        at, self.tcp_at = self.tcp_at[:k], self.tcp_at[k:] - m
        rows = self.tcp[0] if len(self.tcp) == 1 else _concat(self.tcp)
        head = {c: v[:k] for c, v in rows.items()}
        self.tcp = [{c: v[k:] for c, v in rows.items()}]
        return keys, at, head


def _concat(parts: list[dict]) -> dict:
    return {c: np.concatenate([p[c] for p in parts]) for c in PACKET_DTYPES}


class Merger:
    """Merges the chunk streams of files ordered by first packet time.

    ``first_ts`` holds each file's first packet time (None: no packet); ``start(i)``
    opens file i and returns its chunk iterator; ``fix(i, packets)`` maps a chunk's
    interface numbers into the set's. ``overlaps`` collects the (earlier, later) file
    index pairs whose packets had to be interleaved.
    """

    def __init__(
        self,
        first_ts: list[int | None],
        start: Callable[[int], Iterator[FileChunk]],
        fix: Callable[[int, dict], dict],
    ):
        self.first = [NEVER if t is None else t for t in first_ts]
        self.start = start
        self.fix = fix
        self.frames = 0  # the last frame number handed out
        self.overlaps: set[tuple[int, int]] = set()
        #: the greatest key (a record's time, made monotonic per file) handed out, once
        #: the iteration has ended: a set read in parts (capture/split.py) checks that
        #: the next part starts no earlier
        self.max_key = -(1 << 63)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        opened: list[_Open] = []
        nxt = 0
        n_files = len(self.first)
        while True:
            for f in opened:  # every open file shows its next records
                if not f.exhausted and not f.keys.size:
                    f.pull()
            live = [f for f in opened if f.live]
            if nxt < n_files and min((f.bound() for f in live), default=NEVER) >= self.first[nxt]:
                # no open file has a record left before the next file's first: open it
                for f in live:
                    if f.keys.size and int(f.keys[-1]) > self.first[nxt] != NEVER:
                        self.overlaps.add((f.index, nxt))
                opened.append(_Open(nxt, self.start(nxt)))
                nxt += 1
                continue
            if not live:
                self.max_key = max((f.running_max for f in opened), default=self.max_key)
                return
            first_next = self.first[nxt] if nxt < n_files else NEVER
            out = self._emit(live, first_next)
            if out is not None:
                yield out
                continue
            # nothing can go yet: the files that hold the others back must show more
            low = min(f.bound() for f in live)
            for f in live:
                if not f.exhausted and f.bound() == low:
                    f.pull()

    def _emit(self, live: list[_Open], first_next: int) -> dict | None:
        """Hand on every pending record that no other file can precede any more."""
        ready = []
        for f in live:
            limit = min([g.bound() for g in live if g is not f] + [first_next])
            m = f.keys.size if limit == NEVER else int(np.searchsorted(f.keys, limit))
            if m:
                ready.append((f, m))
        if not ready:
            return None
        if len(ready) == 1:
            # one file's records in its own order: frame numbers go on from the file's
            # own (which count the records it set aside)
            f, m = ready[0]
            offset = self.frames - f.last_frame
            _, _, rows = f.take(m)
            rows = self.fix(f.index, rows)
            rows["frame"] = rows["frame"] + offset
            self.frames = offset + f.last_frame
            return rows
        parts = []
        for f, m in ready:
            keys, at, rows = f.take(m)
            parts.append((keys, at, self.fix(f.index, rows)))
        keys = np.concatenate([p[0] for p in parts])
        order = np.argsort(keys, kind="stable")  # ties: the earlier file, then file order
        position = np.empty(keys.size, np.int64)
        position[order] = np.arange(keys.size)
        starts = np.cumsum([0] + [p[0].size for p in parts[:-1]])
        rows = _concat([p[2] for p in parts])
        frame = position[np.concatenate([p[1] + s for p, s in zip(parts, starts)])]
        by_frame = np.argsort(frame, kind="stable")
        rows = {c: v[by_frame] for c, v in rows.items()}
        rows["frame"] = self.frames + 1 + frame[by_frame]
        self.frames += keys.size
        return rows
