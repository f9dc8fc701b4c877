"""The capture beside the events: tcpdump started, watched and stopped by the recorder.

tcpdump runs in the recorder's own network namespace (it inherits it), with a
headers-only snaplen and a filter built from the recorder's own filters, from an argv
list (never a shell). As root it drops to the user the outputs belong to (-Z); without
root it runs on the ambient capabilities it inherits. A ring of capture files comes from
tcpdump's own -C/-W. Its drop counts are parsed from what it prints on SIGUSR1 (while
recording) and at exit.

tcpdump does not check its writes (print-and-go: pcap_dump, pcap_dump_flush), so a full
disk leaves it running with a capture that silently stops growing: the recorder watches
the free space itself (recorder.py).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

from retranscope.errors import EnvironmentProblem
from retranscope.lines import LineReader, MarkerNotSeen

# Headers only: SLL2 (20) + IPv6 (40) + 8 bytes of extension headers + TCP with
# the maximum 40 bytes of options (60) = 128, plus two VLAN tags' worth of slack.
SNAPLEN = 160
# What tcpdump prints on stderr once its capture is open.
LISTENING = "listening on"


def capture_filter(family: int | None, port: int | None) -> list[str]:
    expr = "tcp"
    if family == 4:
        expr = "ip and tcp"
    elif family == 6:
        expr = "ip6 and tcp"
    if port is not None:
        expr += f" and port {int(port)}"
    return [expr]


class Tcpdump:
    def __init__(
        self,
        path: Path,
        interface: str = "any",
        family: int | None = None,
        port: int | None = None,
        snaplen: int = SNAPLEN,
        user: str | None = None,
        max_size_mb: int | None = None,
        max_files: int | None = None,
    ):
        exe = shutil.which("tcpdump")
        if exe is None:
            raise EnvironmentProblem(
                "--pcap needs tcpdump: apt-get install tcpdump (./setup.sh does)"
            )
        self.path = Path(path)
        self.argv = [
            exe,
            "-i",
            interface,
            "-s",
            str(snaplen),
            "-n",
            "-U",
            "--immediate-mode",
        ]
        if user is not None:
            self.argv += ["-Z", user]
        if max_size_mb is not None:
            # -C: a new file every max_size_mb million bytes; -W: keep that many (a ring).
            self.argv += ["-C", str(int(max_size_mb))]
            if max_files is not None:
                self.argv += ["-W", str(int(max_files))]
        self.argv += ["-w", str(self.path), *capture_filter(family, port)]
        self.proc: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []
        self.stats: dict[str, int | None] = {}
        self._lines: LineReader | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        self._lines = LineReader(self.proc.stderr.fileno())
        try:
            self._until_listening(timeout_s)
        except MarkerNotSeen as missed:
            if not missed.exited:
                self.stop()
                raise EnvironmentProblem(
                    f"tcpdump did not start within {timeout_s:.0f} s"
                ) from None
            self.proc.wait()
            err = [ln for ln in self.stderr_lines if ln.strip()]
            raise EnvironmentProblem(
                f"tcpdump exited at start: {err[-1] if err else '?'} (argv: {' '.join(self.argv)})"
            ) from None

    def _until_listening(self, timeout_s: float) -> None:
        """Read tcpdump's stderr into stderr_lines until it says it listens (it prints
        that once the capture is open, before the first packet); MarkerNotSeen if not."""
        assert self.proc is not None and self._lines is not None
        proc = self.proc
        said: list[str] = []
        try:
            said = self._lines.until(LISTENING, timeout_s, alive=lambda: proc.poll() is None)
        except MarkerNotSeen as missed:
            said = missed.lines
            raise
        finally:
            self.stderr_lines += [ln.rstrip() for ln in said]

    def exited(self) -> str | None:
        """None while tcpdump runs; else how it ended (its last words)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        self.stderr_lines += self._lines.rest().splitlines() if self._lines else []
        err = [ln for ln in self.stderr_lines if ln.strip() and "packets" not in ln]
        return f"tcpdump exited ({self.proc.returncode}): {err[-1] if err else '?'}"

    def request_stats(self) -> None:
        """tcpdump prints its counts on SIGUSR1 (SIGNAL_REQ_INFO on Linux)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)

    def read_stats(self) -> dict[str, int | None]:
        """The latest counts tcpdump printed, without waiting."""
        if self._lines is not None and self.proc is not None:
            while (line := self._lines.readline(timeout_s=0.001)) is not None:
                self.stderr_lines.append(line.rstrip())
        self.stats.update(_parse_counts(self.stderr_lines))
        return self.stats

    def stop(self, timeout_s: float = 10.0) -> dict[str, int | None]:
        if self.proc is None:
            return self.stats
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr_lines += self._lines.rest().splitlines()
        self.stats = {**_parse_counts(self.stderr_lines), "exit_code": self.proc.returncode}
        self.proc = None
        return self.stats


def _parse_counts(lines: list[str]) -> dict[str, int | None]:
    """The last report's counts (at exit, or the latest SIGUSR1 line)."""
    reports = [ln for ln in lines if "captured" in ln or "dropped" in ln or "by filter" in ln]
    text = "\n".join(reports[-4:])

    def grab(pattern: str) -> int | None:
        found = re.findall(r"(\d+) packets? " + pattern, text)
        return int(found[-1]) if found else None

    return {
        "captured": grab("captured"),
        "received_by_filter": grab("received by filter"),
        "dropped_by_kernel": grab("dropped by kernel"),
        "dropped_by_interface": grab("dropped by interface"),
    }
