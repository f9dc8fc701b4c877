"""LineReader.until, the start-up handshake with a child (tcpdump's "listening on", the
recorder's "recording"), against real child processes writing to a real pipe."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from retranscope.errors import EnvironmentProblem
from retranscope.lines import LineReader, MarkerNotSeen
from retranscope.record.tcpdump import Tcpdump


@contextmanager
def child(script: str) -> Iterator[tuple[subprocess.Popen, LineReader]]:
    """``sh -c script``, its stdout a pipe read by a LineReader; the child and anything it
    started (its own process group) killed afterwards."""
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    try:
        yield proc, LineReader(proc.stdout.fileno())
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        proc.stdout.close()


def alive(proc: subprocess.Popen):
    return lambda: proc.poll() is None


def test_marker_found_returns_the_lines_up_to_it():
    with child("echo a; echo 'x ready y'; echo b; sleep 30") as (proc, lines):
        assert lines.until("ready", 20, alive=alive(proc)) == ["a", "x ready y"]
        # the line after the marker is not consumed: the next reader of the pipe gets it
        assert lines.readline(timeout_s=20) == "b"
        assert proc.poll() is None


def test_timeout_keeps_the_lines_seen():
    with child("echo a; echo b; sleep 30") as (proc, lines):
        with pytest.raises(MarkerNotSeen) as got:
            lines.until("ready", 0.5, alive=alive(proc))
    assert not got.value.exited
    assert got.value.lines == ["a", "b"]
    assert "'ready' not seen, not within 0.5 s; it said: a | b" == str(got.value)


def test_child_exits_first_with_its_last_words():
    with child("echo a; echo 'no such device' ; exit 3") as (proc, lines):
        with pytest.raises(MarkerNotSeen) as got:
            lines.until("ready", 20, alive=alive(proc))
        assert got.value.exited and got.value.lines == ["a", "no such device"]
        assert proc.wait() == 3


def test_eof_without_alive_and_an_unterminated_last_line():
    with child("echo a; printf 'cut short'") as (_, lines):
        with pytest.raises(MarkerNotSeen) as got:
            lines.until("ready", 20)
    assert got.value.exited and got.value.lines == ["a", "cut short"]
    assert "the process exited" in str(got.value)


def test_child_gone_while_a_grandchild_holds_the_pipe():
    """No EOF comes (the background sleep keeps the pipe open): alive() tells that the child
    is gone, and what it wrote before going is still read."""
    script = "sleep 60 & echo a; echo last; exit 1"
    with child(script) as (proc, lines):
        with pytest.raises(MarkerNotSeen) as got:
            lines.until("ready", 30, alive=alive(proc))
        assert got.value.exited and got.value.lines == ["a", "last"]
        assert not lines.eof
    # Without alive() the same child only times out.
    with child(script) as (_, lines):
        with pytest.raises(MarkerNotSeen) as got:
            lines.until("ready", 1.0)
        assert not got.value.exited and got.value.lines == ["a", "last"]


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
def test_tcpdump_that_exits_at_start_says_why(tmp_path):
    """A caller of until(): the recorder's tcpdump on an interface that does not exist
    fails with tcpdump's own last words (as root: no such device; else: no permission)."""
    dump = Tcpdump(tmp_path / "cap.pcap", interface="nosuchif0")
    with pytest.raises(EnvironmentProblem, match=r"^tcpdump exited at start: .+ \(argv: "):
        dump.start(timeout_s=30)
    assert any(ln.startswith("tcpdump: nosuchif0: ") for ln in dump.stderr_lines)
    assert dump.proc is not None and dump.proc.returncode not in (None, 0)
    dump.stop()
