"""Event files that survive a crash, on a bounded amount of disk.

While recording, events go to ``events/events-NNNNN.arrows``, an Arrow IPC stream (the
journal): rows are flushed to it at least every ``flush_seconds`` (0.25 s by default) as
one record batch, and synced (fdatasync), so a SIGKILL, an OOM kill or a power cut loses
only the rows of the last flush interval (plus what the reader had not yet taken from
the kernel: record/probe.py reads every 0.1 s). A stream is readable up to its last complete
batch. At rotation (by time, rows or size, whichever comes first) the journal is closed,
converted to ``events-NNNNN.parquet`` (written to a temporary name, synced, renamed) and
removed; a reader that finds both takes the Parquet file. A recorder that starts in a
directory left by a crashed one converts the journals it finds first.

Bounded disk (like tcpdump's -C/-W): ``max_bytes`` rotates the journal when it reaches
that size; ``max_files`` keeps at most that many event files in the directory, the open
journal included, deleting the oldest closed ones (counted in ``ring_deleted``).

A failed write (a full disk) truncates the journal back to its last complete batch and
raises ``OutputFailed``: the files already closed stay as they are, the journal stays
readable, and the recorder says in one line what was kept and what was not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from retranscope.errors import BadInput, RetranscopeError
from retranscope.record.privileges import Owner
from retranscope.schemas.events import (
    EVENT_SCHEMA,
    EVENTS_PREFIX,
    JOURNAL_SUFFIX,
    PARQUET_SUFFIX,
    event_file_index,
    event_files,
)

RUN_META = "run.json"
LOCK_NAME = ".lock"
RESERVE_NAME = ".reserve"
# Room kept for the last run.json when the disk fills (released, then run.json written).
RESERVE_BYTES = 256 * 1024
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# zstd at level 1 and dictionaries for the text columns only (numbers are near-unique):
# measured here as the cheapest per event and the smallest (about 24 bytes per event).
PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": [f.name for f in EVENT_SCHEMA if pa.types.is_string(f.type)],
}


class OutputFailed(RetranscopeError):
    """Writing the recording failed (a full disk, most often)."""


def is_disk_full(exc: BaseException) -> bool:
    # pyarrow's I/O errors are OSErrors without errno; their text carries strerror.
    return getattr(exc, "errno", None) in _FULL or any(os.strerror(e) in str(exc) for e in _FULL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_output(out: Path) -> int:
    """One recorder per output directory: an exclusive lock held for the whole run."""
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BadInput(
            f"--out {out}: another recorder is writing there; give another directory"
        ) from None
    return fd


class SpaceReserve:
    """A preallocated file given back when the disk fills, so run.json can still say so."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES):
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as exc:
            self.release()
            raise OutputFailed(
                f"cannot reserve {size // 1024} KiB in {path.parent} "
                f"({exc.strerror}): free some space"
            ) from exc

    def release(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class _Journal:
    """One Arrow IPC stream, appended a batch at a time; ``good`` is where its last
    complete batch ends."""

    def __init__(self, path: Path, schema: pa.Schema, sync: bool):
        self.path = path
        self.sync = sync
        self.sink = pa.OSFile(str(path), "wb")
        # lz4: fast enough to stay a small part of the recorder's CPU per event, and
        # readable by pyarrow, Polars and DuckDB as it is.
        opts = pa.ipc.IpcWriteOptions(compression="lz4")
        self.writer = pa.ipc.new_stream(self.sink, schema, options=opts)
        self.good = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        try:
            self.writer.write_table(table, max_chunksize=1 << 20)
            if self.sync:
                os.fdatasync(self.sink.fileno())
        except OSError:
            # Back to the last complete batch; nothing more goes to this file.
            self.abandon()
            if self.good:
                os.truncate(self.path, self.good)
            else:
                self.path.unlink(missing_ok=True)
            raise
        self.good = self.sink.tell()
        self.rows += table.num_rows

    def close(self) -> None:
        self.writer.close()
        if self.sync:
            os.fdatasync(self.sink.fileno())
        self.sink.close()

    def abandon(self) -> None:
        try:
            self.sink.close()
        except OSError:
            pass


ROW_GROUP_ROWS = 65_536


def _row_groups(src) -> Iterator[pa.Table]:
    """Tables of about ROW_GROUP_ROWS rows from an Arrow IPC stream's complete batches
    (one cut short by a crash ends it)."""
    try:
        reader = pa.ipc.open_stream(src)
    except (OSError, pa.ArrowInvalid):
        return
    chunk: list[pa.RecordBatch] = []
    rows = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except (OSError, pa.ArrowInvalid):
            break  # the batch a crash cut short: everything before it is whole
        chunk.append(batch)
        rows += batch.num_rows
        if rows >= ROW_GROUP_ROWS:
            yield pa.Table.from_batches(chunk).combine_chunks()
            chunk, rows = [], 0
    if rows:
        yield pa.Table.from_batches(chunk).combine_chunks()


class EventWriter:
    def __init__(
        self,
        out_dir: Path,
        schema: pa.Schema,
        *,
        rotate_seconds: float = 10.0,
        rotate_rows: int = 200_000,
        flush_seconds: float = 0.25,
        max_bytes: int | None = None,
        max_files: int | None = None,
        file_metadata: dict[str, str] | None = None,
        owner: Owner | None = None,
        sync: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.out_dir = Path(out_dir)
        self.owner = owner or Owner()
        self.owner.make_dir(self.out_dir)
        self.schema = schema.with_metadata(
            {
                **(schema.metadata or {}),
                **{k.encode(): str(v).encode() for k, v in (file_metadata or {}).items()},
            }
        )
        self.rotate_seconds = rotate_seconds
        self.rotate_rows = rotate_rows
        self.flush_seconds = flush_seconds
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.sync = sync
        self._clock = clock
        self.files: list[dict[str, Any]] = []  # closed files of this run, on disk
        self.ring_deleted = {"files": 0, "rows": 0}
        self.rows_written = 0  # on disk: in closed files or flushed to the journal
        self.failed: str | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self._journal: _Journal | None = None
        self._opened = self._flushed = clock()
        self.recovered = self._recover_journals()
        existing = [event_file_index(p) for p in self.out_dir.iterdir()]
        self._index = max([i for i in existing if i is not None], default=0)

    # -- the recording -------------------------------------------------------------------
    def append(self, table: pa.Table) -> bool:
        """Take rows; True when a file was closed (a rotation happened)."""
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
            self._pending_bytes += table.nbytes
        return self.tick()

    def tick(self) -> bool:
        """Flush and rotate when due; call at least every few hundred ms."""
        now = self._clock()
        room = None
        if self.max_bytes is not None:
            room = self.max_bytes - (self._journal.good if self._journal else 0)
        if self._pending_rows and (
            now - self._flushed >= self.flush_seconds
            or (room is not None and self._pending_bytes >= room)
        ):
            self.flush()
        j = self._journal
        rows = (j.rows if j else 0) + self._pending_rows
        due = now - self._opened >= self.rotate_seconds
        full = j is not None and self.max_bytes is not None and j.good >= self.max_bytes
        if rows and (due or rows >= self.rotate_rows or full):
            self.rotate()
            return True
        if due and not rows:
            self._opened = now
        return False

    def flush(self) -> None:
        """Pending rows to the journal, as one batch, synced."""
        self._flushed = self._clock()
        if not self._pending_rows or self.failed:
            return
        # One batch per flush: fewer, larger batches are cheaper to write and to convert.
        table = pa.concat_tables(self._pending).combine_chunks()
        try:
            if self._journal is None:
                self._index += 1
                path = self.out_dir / f"{EVENTS_PREFIX}-{self._index:05d}{JOURNAL_SUFFIX}"
                self._journal = _Journal(path, self.schema, self.sync)
                self.owner.apply(path)
                if self.sync:
                    _fsync_dir(self.out_dir)
            self._journal.write(table.replace_schema_metadata(self.schema.metadata))
        except OSError as exc:
            self._fail(exc)
        self._pending.clear()
        self._pending_rows = self._pending_bytes = 0
        self.rows_written += table.num_rows

    def rotate(self) -> None:
        """Close the journal and turn it into Parquet; keep the ring within max_files."""
        self.flush()
        self._opened = self._clock()
        j, self._journal = self._journal, None
        if j is None:
            return
        try:
            j.close()
            info = self._convert(j.path)
        except OSError as exc:
            # The journal stays, closed and whole, for readers to take as it is.
            if j.path.exists() and j.rows:
                self.files.append({"name": j.path.name, "rows": j.rows, "bytes": j.good})
            self._fail(exc)
        if info is not None:
            self.files.append(info)
        self._prune()

    def close(self) -> None:
        if not self.failed:
            self.rotate()

    # -- files ---------------------------------------------------------------------------
    def _convert(self, journal: Path) -> dict[str, Any] | None:
        """The journal's complete batches into Parquet, a row group at a time (so that a
        storm's 200,000-row file never sits whole in memory), then the journal removed."""
        final = journal.with_suffix(PARQUET_SUFFIX)
        tmp = final.with_name(f".{final.name}.tmp")
        info: dict[str, Any] = {"name": final.name, "rows": 0}
        try:
            with pa.memory_map(str(journal)) as src:
                writer = None
                for group in _row_groups(src):
                    if writer is None:
                        meta = {
                            **(group.schema.metadata or {}),
                            b"file_index": str(event_file_index(journal)).encode(),
                        }
                        writer = pq.ParquetWriter(
                            tmp, group.schema.with_metadata(meta), **PARQUET_OPTIONS
                        )
                        info["first_ts_wall_ns"] = group["ts_wall_ns"][0].as_py()
                    writer.write_table(group.replace_schema_metadata(writer.schema.metadata))
                    info["rows"] += group.num_rows
                    info["last_ts_wall_ns"] = group["ts_wall_ns"][-1].as_py()
                if writer is not None:
                    writer.close()
            if not info["rows"]:
                journal.unlink()
                return None
            if self.sync:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            self.owner.apply(tmp)
            os.replace(tmp, final)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        journal.unlink()
        if self.sync:
            _fsync_dir(self.out_dir)
        info["bytes"] = final.stat().st_size
        return info

    def _recover_journals(self) -> list[dict[str, Any]]:
        """Journals a crashed recorder left: to Parquet (their complete batches). One with
        a Parquet twin was converted but not yet removed when the recorder died."""
        for path in self.out_dir.glob(f"{EVENTS_PREFIX}-*{JOURNAL_SUFFIX}"):
            if path.with_suffix(PARQUET_SUFFIX).exists():
                path.unlink()
        out = []
        for journal in event_files(self.out_dir)[1]:
            try:
                info = self._convert(journal)
            except OSError as exc:
                self._fail(exc)
            if info is not None:
                out.append(info)
        return out

    def _prune(self) -> None:
        """Delete the oldest closed files (of any run) beyond max_files - 1, leaving room
        for the next journal."""
        if self.max_files is None:
            return
        closed = event_files(self.out_dir)[0]
        for path in closed[: max(0, len(closed) - (self.max_files - 1))]:
            mine = next((f for f in self.files if f["name"] == path.name), None)
            rows = mine["rows"] if mine else pq.read_metadata(path).num_rows
            path.unlink()
            if mine:
                self.files.remove(mine)
            self.ring_deleted["files"] += 1
            self.ring_deleted["rows"] += int(rows)

    def _fail(self, exc: OSError) -> None:
        j, self._journal = self._journal, None
        if j is not None:
            j.abandon()
            if j.rows and j.path.exists():  # cut back to its last complete batch
                self.files.append({"name": j.path.name, "rows": j.rows, "bytes": j.good})
        what = "no space left on device" if is_disk_full(exc) else str(exc)
        self.failed = what
        raise OutputFailed(f"{what} writing events to {self.out_dir}") from exc

    # -- what run.json says --------------------------------------------------------------
    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def state(self) -> dict[str, Any]:
        j = self._journal
        return {
            "files": list(self.files),
            "journal": None
            if j is None
            else {"name": j.path.name, "rows": j.rows, "bytes": j.good},
            "ring": {
                "max_files": self.max_files,
                "max_bytes": self.max_bytes,
                "deleted_files": self.ring_deleted["files"],
                "deleted_rows": self.ring_deleted["rows"],
            },
            "recovered_journals": self.recovered,
        }
