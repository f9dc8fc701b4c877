"""A capture's bytes as a stream: a plain file, or one compressed with gzip, zstd, xz or
bzip2, recognised by its magic bytes (never by its name) and decompressed as it is read,
with no temporary file.

``tcpdump -z gzip`` and Wireshark write ``.pcap.gz``/``.pcapng.gz``; archives are often
zstd. The reader asks for bytes with ``readinto`` and learns how far into the file on disk
it has come (``consumed_bytes``), which is what progress is measured in: for a compressed
file the total is its compressed size, the only size known before reading it.

Damage inside compressed data (a gzip member cut short, a corrupt zstd frame, a CRC that
does not match) ends the stream: ``readinto`` returns 0 from then on and ``damage`` says
what happened, so the records decompressed before it are kept, as for a plain capture cut
short (the reader marks the capture truncated).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import queue
import threading
import zlib
from typing import Any, BinaryIO, Callable, cast

from retranscope.errors import BadInput

# Magic numbers of the compressed formats (each format's own specification)
GZIP_MAGIC = b"\x1f\x8b"  # RFC 1952 §2.3.1 (ID1 ID2)
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # RFC 8878 §3.1.1, 0xFD2FB528 little-endian
XZ_MAGIC = b"\xfd7zXZ\x00"  # .xz file format §2.1.1.1
BZIP2_MAGIC = b"BZh"  # then the block size '1'..'9', then the block magic 0x314159265359
COMPRESSIONS = ("gzip", "zstd", "xz", "bzip2")
#: what a compressed capture is taken to grow to, times its size, where its decompressed
#: size is wanted before reading it (analyze/run.py: whether to spill): headers-only
#: captures compress about 10:1 (the bench's (a): 184 MB to 15 MB with gzip -6)
COMPRESSED_EXPANSION = 10
SNIFF_BYTES = 10  # enough for every magic above
#: A read-ahead (ByteStream.read_ahead) hands the reader the decompressed bytes in blocks
#: of this size, and holds at most this many blocks ahead of it: 8 MB.
READ_AHEAD_BLOCK_BYTES = 1 << 20
READ_AHEAD_BLOCKS = 8


def sniff_compression(head: bytes) -> str | None:
    """The compression a file's first bytes announce, or None for uncompressed data."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(BZIP2_MAGIC) and len(head) >= 4 and head[3:4] in b"123456789":
        return "bzip2"
    return None


def file_compressed(path: str) -> bool:
    """Whether the file's first bytes announce a compression (sniff_compression).
    Raises OSError where it cannot be read."""
    with open(path, "rb") as f:
        return sniff_compression(f.read(8)) is not None


class ByteStream:
    """The decompressed bytes of one capture file, read front to back.

    ``name`` is what messages call the file; ``size_bytes`` its size on disk (None for a
    pipe); ``compression`` one of COMPRESSIONS or None.
    """

    def __init__(self, raw: BinaryIO, name: str, size_bytes: int | None, head: bytes):
        self.raw = raw
        self.name = name
        self.size_bytes = size_bytes
        self.compression = sniff_compression(head)
        self.damage: str | None = None  # why the compressed data ended early
        self._ended = False
        self._pending = head  # bytes already read from raw for the sniff
        self._inner: io.BufferedIOBase | None = None
        self._closed_at: int | None = None  # consumed_bytes() once closed
        if self.compression is not None:
            self._inner = _decompressor(self.compression, _Prefixed(head, raw))
            self._pending = b""
        self._ahead: _ReadAhead | None = None  # read_ahead's thread
        self._ahead_at = 0  # consumed_bytes when the block being handed over was made
        self._block = memoryview(b"")  # what is left of that block

    def read_ahead(self) -> None:
        """Decompress on a thread of its own from now on, ahead of the reader (a no-op for
        an uncompressed stream). For a reader that reads the whole stream: one that only
        peeks at its first bytes would have megabytes decompressed for nothing."""
        if self._inner is not None and self._ahead is None and not self._ended:
            self._ahead = _ReadAhead(self._inner, self._raw_offset)

    def consumed_bytes(self) -> int:
        """How far into the file (as stored on disk) reading has come."""
        if self._closed_at is not None:
            return self._closed_at
        if self._ahead is not None:
            return self._ahead_at
        return self._raw_offset()

    def _raw_offset(self) -> int:
        try:
            return self.raw.tell() - len(self._pending)
        except (OSError, ValueError):  # a pipe
            return 0

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` as far as the stream goes; 0 at its end (or after damage)."""
        want = len(buf)
        got = 0
        if self._pending:
            k = min(want, len(self._pending))
            buf[:k] = self._pending[:k]
            self._pending = self._pending[k:]
            got = k
        while got < want and not self._ended:
            if self._ahead is not None:
                k = self._from_ahead(buf[got:])
            else:
                try:
                    if self._inner is None:
                        k = cast(Any, self.raw).readinto(buf[got:])
                    else:
                        # readinto1: what one step of the decompressor gives, so that the
                        # data before damage is handed over before the error is raised
                        k = cast(Any, self._inner).readinto1(buf[got:])
                except Exception as err:
                    k = 0
                    self._failed(err)
            if not k:
                self._ended = True
                break
            got += k
        return got

    def _from_ahead(self, buf: memoryview) -> int:
        """What the read-ahead has decompressed, into ``buf``; 0 at the end (or damage)."""
        assert self._ahead is not None
        if not len(self._block):
            block, err, self._ahead_at = self._ahead.take()
            if err is not None:
                self._failed(err)
                return 0
            self._block = block
        k = min(len(buf), len(self._block))
        buf[:k] = self._block[:k]
        self._block = self._block[k:]
        return k

    def _failed(self, err: Exception) -> None:
        """A read that raised ``err``: damage of the compressed data ends the stream
        (``damage`` says why); anything else is raised."""
        if isinstance(err, (EOFError, OSError, ValueError, zlib.error, lzma.LZMAError)):
            if self._inner is None:
                raise BadInput(f"cannot read {self.name}: {err}") from None
        elif self._inner is None or type(err).__name__ != "ZstdError":
            raise err  # zstandard.ZstdError is a corrupt frame; nothing else is damage
        self.damage = _damage_message(self.compression or "", err)

    def close(self) -> None:
        if self._closed_at is not None:
            return
        self._closed_at = self.consumed_bytes()
        if self._ahead is not None:
            self._ahead.stop()
        try:
            if self._inner is not None:
                self._inner.close()
        except Exception:  # closing a damaged decompressor may raise its error again
            pass
        self.raw.close()


class _ReadAhead:
    """A decompressor read on a thread of its own, READ_AHEAD_BLOCKS blocks ahead of the
    reader. zlib, lzma, bz2 and zstandard let go of the interpreter while they work, so
    a block is decompressed on one core while the one before is decoded on another: a
    gzipped capture read alone by one process used one core for both. Each block comes
    with what ``position`` (the compressed file's offset) said once it was made, and the
    error that ended the stream comes after the data before it."""

    def __init__(self, inner: Any, position: Callable[[], int]):
        self._inner = inner
        self._position = position
        self._blocks: queue.Queue = queue.Queue(READ_AHEAD_BLOCKS)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decompress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._decompress()
        except Exception as err:  # the reader would otherwise wait for a block forever
            self._put(memoryview(b""), err)

    def _decompress(self) -> None:
        err: Exception | None = None
        while err is None and not self._stopped.is_set():
            block = bytearray(READ_AHEAD_BLOCK_BYTES)
            got = 0
            with memoryview(block) as mv:
                while got < len(block):
                    try:
                        k = self._inner.readinto1(mv[got:])
                    except Exception as e:  # damage, or what the reader raises in turn
                        err, k = e, 0
                    if not k:
                        break
                    got += k
            if got:
                self._put(memoryview(block)[:got], None)
            if got < len(block) or err is not None:  # the end, or the error after it
                self._put(memoryview(b""), err)
                return

    def _put(self, block: memoryview, err: Exception | None) -> None:
        item = (block, err, self._position())
        while not self._stopped.is_set():
            try:
                self._blocks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def take(self) -> tuple[memoryview, Exception | None, int]:
        """The next block (empty at the end), the error that ended the stream there (or
        None), and the file's offset when it was made."""
        return self._blocks.get()

    def stop(self) -> None:
        """The reader is done: the thread ends at its next block (at once if it waits
        to hand one over). A thread blocked reading a pipe is left to end with the
        process (it is a daemon) rather than waited for."""
        self._stopped.set()
        self._thread.join(timeout=1.0)


def _damage_message(compression: str, err: BaseException) -> str:
    what = str(err) or type(err).__name__
    return f"the {compression} data is damaged or cut short ({what})"


class _Prefixed(io.RawIOBase):
    """A raw file whose first bytes were already read (for the sniff): they come first."""

    def __init__(self, head: bytes, raw: BinaryIO):
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        if self._head:
            k = min(len(b), len(self._head))
            b[:k] = self._head[:k]
            self._head = self._head[k:]
            return k
        return self._raw.readinto(b)  # type: ignore[attr-defined]


def _decompressor(kind: str, raw: io.RawIOBase) -> io.BufferedIOBase:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # every member, as gunzip does
    if kind == "xz":
        return lzma.LZMAFile(cast(BinaryIO, raw))
    if kind == "bzip2":
        return bz2.BZ2File(raw)
    return _ZstdReader(raw)  # type: ignore[return-value]


class _ZstdReader:
    """zstd frames one after another (as ``zstd -d`` reads them), decompressed a piece
    at a time. zstandard's stream_reader ends quietly at a frame cut short; this raises
    EOFError there, so that a cut archive is reported as one."""

    RAW_STEP = 1 << 16

    def __init__(self, raw: io.RawIOBase):
        try:
            import zstandard
        except ImportError:  # a dependency (pyproject.toml); say what to do if it is missing
            raise BadInput(
                "the capture is zstd-compressed and the zstandard module is not installed: "
                "pip install zstandard, or decompress it with: zstd -d FILE"
            ) from None
        self._zstd = zstandard.ZstdDecompressor()
        self._raw = raw
        self._obj = self._zstd.decompressobj()
        self._in_frame = False  # bytes of the current frame have been fed
        self._out = b""
        self._error: Exception | None = None  # raised once the data before it is out

    def readinto1(self, b) -> int:
        while not self._out:
            if self._error is not None:
                raise self._error
            data = self._raw.read(self.RAW_STEP)
            if not data:
                if self._in_frame:
                    raise EOFError("the last zstd frame is cut short")
                return 0
            self._feed(data)
        k = min(len(b), len(self._out))
        b[:k] = self._out[:k]
        self._out = self._out[k:]
        return k

    def _feed(self, data: bytes) -> None:
        while data:
            self._in_frame = True
            try:
                self._out += self._obj.decompress(data)
            except Exception as err:  # zstandard.ZstdError: corrupt data
                self._error = err
                return
            if not self._obj.eof:
                return
            # a frame ended: what follows starts the next one
            data = self._obj.unused_data
            self._obj = self._zstd.decompressobj()
            self._in_frame = False

    def close(self) -> None:
        self._out = b""


def open_stream(path: str | os.PathLike) -> ByteStream:
    """Open a capture file for streaming. Raises BadInput for a missing, unreadable or
    irregular file (a directory, say)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(f"no such file: {path}") from None
    except OSError as err:
        raise BadInput(f"cannot read {path}: {err.strerror}") from None
    if os.path.isdir(path):
        raise BadInput(f"not a regular file: {path}; give a capture file written by tcpdump -w")
    try:
        raw = open(path, "rb", buffering=0)  # noqa: SIM115 - ByteStream.close() closes it
    except OSError as err:
        raise BadInput(f"cannot read {path}: {err.strerror}") from None
    try:
        head = _read_head(raw)
    except OSError as err:
        raw.close()
        raise BadInput(f"cannot read {path}: {err.strerror}") from None
    size = st.st_size if os.path.isfile(path) else None
    return ByteStream(raw, path, size, head)  # type: ignore[arg-type]


def stream_of_fileobj(fh: BinaryIO, name: str) -> ByteStream:
    """A stream over an open binary file (a pipe, standard input, an in-memory buffer)."""
    return ByteStream(fh, name, None, _read_head(fh))


def _read_head(fh: BinaryIO) -> bytes:
    head = b""
    while len(head) < SNIFF_BYTES:
        more = fh.read(SNIFF_BYTES - len(head))
        if not more:
            break
        head += more
    return head
