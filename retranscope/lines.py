"""Wait for a line from a child process's pipe without losing lines to buffering.

select() looks at the file descriptor; a buffered reader may already hold the next line
in user space, so select() then waits for data that has already arrived. Read the raw
descriptor instead and split lines here.
"""

from __future__ import annotations

import os
import select
import time


class LineReader:
    def __init__(self, fd: int):
        self.fd = fd
        self._buf = b""
        self.eof = False

    def readline(self, timeout_s: float) -> str | None:
        """The next line (without newline), or None on timeout / EOF."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            if self.eof:
                if self._buf:
                    line, self._buf = self._buf, b""
                    return line.decode(errors="replace")
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.eof = True
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode(errors="replace")

    def rest(self) -> str:
        """Whatever is left until EOF (blocking)."""
        chunks = [self._buf]
        self._buf = b""
        while True:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        self.eof = True
        return b"".join(chunks).decode(errors="replace")
