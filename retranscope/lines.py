"""Wait for a line from a child process's pipe without losing lines to buffering.

select() looks at the file descriptor; a buffered reader may already hold the next line
in user space, so select() then waits for data that has already arrived. Read the raw
descriptor instead and split lines here.

:meth:`LineReader.until` is the start-up handshake with a child (tcpdump's "listening on",
the recorder's "recording"): its stderr read line by line until a marker, within a
deadline, or :class:`MarkerNotSeen` with what it said if it ends first. Each caller turns
that into its own error (EnvironmentProblem in record/, LabError in lab/, an assert in tests).
"""

from __future__ import annotations

import os
import select
import time
from typing import Callable

# How often until() looks whether the child is still alive while it waits for a line.
POLL_S = 0.2
# How long until() reads on for a gone child's last words still in the pipe.
LAST_WORDS_S = 1.0


class MarkerNotSeen(Exception):
    """The marker did not come. ``lines``: what was read meanwhile (the child's last
    words); ``exited``: the stream ended or the child is gone (else the time ran out)."""

    def __init__(self, marker: str, lines: list[str], exited: bool, timeout_s: float):
        self.marker = marker
        self.lines = lines
        self.exited = exited
        why = "the process exited" if exited else f"not within {timeout_s:g} s"
        said = " | ".join(ln for ln in lines[-3:] if ln.strip()) or "nothing"
        super().__init__(f"{marker!r} not seen, {why}; it said: {said}")


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

    def until(
        self, marker: str, timeout_s: float, *, alive: Callable[[], bool] | None = None
    ) -> list[str]:
        """Lines up to and including the first one containing ``marker``.

        Raises :class:`MarkerNotSeen` when ``timeout_s`` passes, the stream ends, or
        ``alive()`` turns false first (a child whose pipe a grandchild still holds never
        shows EOF). A child gone has written all it will: what it left in the pipe is read
        into the exception's lines, without waiting for an EOF that may never come."""
        lines: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.readline(timeout_s=max(0.0, min(POLL_S, deadline - time.monotonic())))
            if line is not None:
                lines.append(line)
                if marker in line:
                    return lines
                continue
            if self.eof or (alive is not None and not alive()):
                raise MarkerNotSeen(marker, lines + self._pending(LAST_WORDS_S), True, timeout_s)
            if time.monotonic() >= deadline:
                raise MarkerNotSeen(marker, lines, False, timeout_s)

    def _pending(self, within_s: float) -> list[str]:
        """The lines already in the pipe, read for at most ``within_s`` (a grandchild
        holding the pipe could write on for ever)."""
        got: list[str] = []
        end = time.monotonic() + within_s
        while time.monotonic() < end and (line := self.readline(timeout_s=0.05)) is not None:
            got.append(line)
        return got

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
