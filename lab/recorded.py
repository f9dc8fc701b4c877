"""Run a lab scenario with the real recorder attached: kernel events + capture + metadata.

This is how ground truth is made: the recorder (`retranscope record`) runs inside the
retransmitting namespace while the scenario makes real loss; the capture is taken where the
scenario says (lab/capture.py: on that host by the recorder's own tcpdump, or at the
receiver, a mid-path tap, one way only). scenario.json says where. Used by the recorder's
tests, the accuracy corpus and `retranscope demo`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from retranscope.lab.capture import LabCapture, capture_meta, capture_site
from retranscope.lab.netns import Lab
from retranscope.lab.scenarios import Scenario, ScenarioResult, run_scenario
from retranscope.lines import LineReader, MarkerNotSeen

READY_MARK = "retranscope: recording"


@dataclass
class RecordedRun:
    scenario: Scenario
    out_dir: Path
    capture: Path
    result: ScenarioResult
    run_meta: dict
    recorder_stderr: list[str]
    recorder_returncode: int


class RecorderProcess:
    """`python -m retranscope record ...` in a namespace; ready when it says so."""

    def __init__(self, lab: Lab, ns: str, args: list[str], ready_timeout_s: float = 60.0):
        proc = lab.popen(
            ns,
            [sys.executable, "-m", "retranscope", "record", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_ready(proc, ready_timeout_s)

    @classmethod
    def attach(cls, proc: subprocess.Popen, ready_timeout_s: float = 60.0) -> RecorderProcess:
        """A recorder the caller started its own way (another user, outside the lab), its
        stderr a pipe: returned once it is recording. Compiling and attaching the BPF
        program takes seconds on a loaded machine; a fixed sleep instead races with it."""
        rec = cls.__new__(cls)
        rec._wait_ready(proc, ready_timeout_s)
        return rec

    def _wait_ready(self, proc: subprocess.Popen, ready_timeout_s: float) -> None:
        self.stderr_lines: list[str] = []
        self.proc = proc
        assert self.proc.stderr is not None
        # The reader's own descriptor of the pipe: the lab closes proc.stderr as it closes
        # (netns._kill_group), maybe while the drain thread still reads a killed recorder's
        # last words. On the shared descriptor that read failed with EBADF (seen under
        # load), or, had the number been reused by then, read another process's pipe.
        self._fd = os.dup(self.proc.stderr.fileno())
        self._lines = LineReader(self._fd)
        try:
            self.stderr_lines += self._lines.until(
                READY_MARK, ready_timeout_s, alive=lambda: proc.poll() is None
            )
        except MarkerNotSeen as missed:
            self.stderr_lines += missed.lines
            if missed.exited:
                self.proc.wait()
                self.stderr_lines += self._lines.rest().splitlines()
                os.close(self._fd)
                raise RuntimeError(
                    "recorder exited before it was ready: "
                    + " | ".join(x for x in self.stderr_lines[-5:] if x)
                ) from None
            self.proc.kill()
            os.close(self._fd)
            raise RuntimeError(f"recorder not ready after {ready_timeout_s:.0f} s") from None
        # Keep draining stderr so the recorder never blocks on a full pipe.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        try:
            while True:
                line = self._lines.readline(timeout_s=1.0)
                if line is not None:
                    self.stderr_lines.append(line)
                elif self._lines.eof:
                    return
        finally:
            os.close(self._fd)

    def wait(self, timeout_s: float = 60.0) -> int:
        """Until it stops by itself (--duration, an error), its stderr read to the end."""
        self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return self.proc.returncode

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


def record_scenario(
    scenario: Scenario,
    out_dir: Path,
    *,
    extra_args: tuple[str, ...] = (),
    settle_s: float = 0.3,
    lab_kw: dict | None = None,
    interface: str | None = None,
) -> RecordedRun:
    """Build the scenario's lab, record while it runs, tear everything down.

    The recorder runs in the retransmitting namespace. A scenario captured there (the
    default CapturePoint) uses the recorder's own tcpdump (on ``interface`` if given, e.g.
    "any"); any other capture point gets its own tcpdump there (lab/capture.py) and the
    recorder records events only. scenario.json says where the capture was taken.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    capture = out_dir / "capture.pcap"
    own_capture = scenario.capture.is_default
    with scenario.lab(**(lab_kw or {})) as lab:
        ns = scenario.retransmitting_ns(lab)
        iface = interface or (
            lab.sender_if if scenario.retransmitter == "client" else lab.receiver_if
        )
        pcap_args = ["--pcap", str(capture), "--interface", iface] if own_capture else []
        rec = RecorderProcess(lab, ns, ["--out", str(out_dir), *pcap_args, "--quiet", *extra_args])
        tap = None if own_capture else LabCapture(lab, scenario, capture)
        try:
            if tap is not None:
                tap.wait_ready()
            result = run_scenario(lab, scenario)
            time.sleep(settle_s)  # late retransmissions (a FIN's probe) still land
        finally:
            tap_stats = tap.stop() if tap is not None else None
            code = rec.stop()
        where = capture_meta(scenario)
        where["capture"]["interface"] = interface or capture_site(lab, scenario)[1]
        result.delay_stats = lab.delay_stats()
    meta = json.loads((out_dir / "run.json").read_text())
    where["capture"]["tcpdump"] = tap_stats or (meta.get("pcap") or {}).get("tcpdump")
    meta["scenario"] = {
        "name": scenario.name,
        "family": scenario.family,
        "tso": scenario.tso,
        "rtt_ms": scenario.rtt_ms,
        "expected": sorted(scenario.expected),
        "counters": result.deltas(),
        **where,
        "delay_line": result.delay_stats,
        "derived": None,
    }
    (out_dir / "scenario.json").write_text(json.dumps(meta["scenario"], indent=2) + "\n")
    return RecordedRun(scenario, out_dir, capture, result, meta, rec.stderr_lines, code)


def start_server(lab: Lab, *args: object, ready_timeout_s: float = 10.0) -> subprocess.Popen:
    """`python -m retranscope.lab.traffic server ARGS` in the receiver namespace, returned
    once it says it is listening."""
    proc = lab.pymodule(
        lab.receiver_ns, "retranscope.lab.traffic", ["server", *(str(a) for a in args)]
    )
    reader = LineReader(proc.stdout.fileno())
    line = reader.readline(timeout_s=ready_timeout_s)
    if not line or not line.startswith("LISTENING"):
        raise RuntimeError(f"traffic server did not start: {line!r}")
    return proc


def start_client(lab: Lab, *args: object) -> subprocess.Popen:
    """`python -m retranscope.lab.traffic ARGS` (bulk, requests, connect) in the sender
    namespace."""
    return lab.pymodule(lab.sender_ns, "retranscope.lab.traffic", [str(a) for a in args])


def start_bulk(
    lab: Lab, port: int, nbytes: int, *, family: int = 4, conns: int = 1, timeout_s: float = 20.0
) -> subprocess.Popen:
    """A bulk sender to the receiver (`traffic bulk`), started in the sender namespace."""
    return start_client(
        lab,
        "bulk",
        "--host",
        lab.receiver_addr(family),
        "--port",
        port,
        "--bytes",
        nbytes,
        "--conns",
        conns,
        "--timeout-s",
        timeout_s,
    )
