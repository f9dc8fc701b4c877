"""The capture beside the events: tcpdump started, watched and stopped by the recorder.

tcpdump runs in the recorder's own network namespace (it inherits it), with a
headers-only snaplen and a filter built from the recorder's own filters, from an argv
list (never a shell). Its drop counts are parsed from what it prints at exit.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from retranscope.errors import EnvironmentProblem
from retranscope.lines import LineReader

# Headers only: SLL2 (20) + IPv6 (40) + 8 bytes of extension headers + TCP with
# the maximum 40 bytes of options (60) = 128, plus two VLAN tags' worth of slack.
SNAPLEN = 160


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
            "-w",
            str(self.path),
            *capture_filter(family, port),
        ]
        if interface == "any":
            # pcapng would be fine too; pcap keeps tcpdump's SLL2 link type for "any".
            pass
        self.proc: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []
        self.stats: dict[str, int | None] = {}
        self._lines: LineReader | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Run as root: tcpdump would otherwise drop to the tcpdump user, which may not be
        # allowed to write into the output directory.
        self.argv[1:1] = ["-Z", "root"]
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        self._lines = LineReader(self.proc.stderr.fileno())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self._lines.readline(timeout_s=0.2)
            if line is not None:
                self.stderr_lines.append(line.rstrip())
                if "listening on" in line:
                    return
            elif self._lines.eof or self.proc.poll() is not None:
                self.proc.wait()
                err = [ln for ln in self.stderr_lines if ln.strip()]
                raise EnvironmentProblem(
                    f"tcpdump exited at start: {err[-1] if err else '?'}"
                    f" (argv: {' '.join(self.argv)})"
                )
        self.stop()
        raise EnvironmentProblem(f"tcpdump did not start within {timeout_s:.0f} s")

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
        text = "\n".join(self.stderr_lines)

        def grab(pattern: str) -> int | None:
            m = re.search(r"(\d+) packets? " + pattern, text)
            return int(m.group(1)) if m else None

        self.stats = {
            "captured": grab("captured"),
            "received_by_filter": grab("received by filter"),
            "dropped_by_kernel": grab("dropped by kernel"),
            "dropped_by_interface": grab("dropped by interface"),
            "exit_code": self.proc.returncode,
        }
        self.proc = None
        return self.stats
