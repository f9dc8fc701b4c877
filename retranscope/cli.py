"""The `retranscope` command. Thin: parsing and error reporting only; the work is in the
stage modules (record/, analyze/, report/, lab/).

Errors: a RetranscopeError becomes one line on stderr and its exit code (2 bad input,
1 failure); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from retranscope.errors import BadInput, RetranscopeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Explain Linux TCP retransmissions: record them with the kernel's "
                       "reason, classify them from packet captures, report.")


@app.callback()
def _root() -> None:
    """Explain Linux TCP retransmissions."""


def _fail(err: RetranscopeError) -> None:
    typer.echo(f"retranscope: error: {err}", err=True)
    raise typer.Exit(err.exit_code)


@app.command()
def record(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Directory for events-*.parquet and run.json."),
    pcap: Optional[Path] = typer.Option(None, "--pcap", help="Also capture packets (tcpdump) into this file."),
    interface: str = typer.Option("any", "--interface", "-i", help="Interface for --pcap."),
    sequence: bool = typer.Option(False, "--sequence", "-s", help="Show TCP sequence numbers (like tcpretrans -s)."),
    lossprobe: bool = typer.Option(False, "--lossprobe", "-l", help="Include TLP attempts (kprobe tcp_send_loss_probe)."),
    count: bool = typer.Option(False, "--count", "-c", help="Count retransmits per flow in the kernel; print at exit."),
    ipv4: bool = typer.Option(False, "--ipv4", "-4", help="IPv4 only."),
    ipv6: bool = typer.Option(False, "--ipv6", "-6", help="IPv6 only."),
    port: Optional[int] = typer.Option(None, "--port", help="Only this local or remote port."),
    pid: Optional[int] = typer.Option(None, "--pid", help="Only sockets held by this process."),
    netns: str = typer.Option("auto", "--netns", help="auto | all | self | INODE: which network namespace's retransmits."),
    duration: Optional[float] = typer.Option(None, "--duration", "-d", help="Stop after this many seconds."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live line per event."),
    rotate_seconds: float = typer.Option(10.0, "--rotate-seconds", help="Close a Parquet file at least this often."),
    rotate_rows: int = typer.Option(200_000, "--rotate-rows", help="Close a Parquet file at this many rows."),
    perf_buffer: bool = typer.Option(False, "--perf-buffer", help="Use the perf buffer even where a ring buffer exists."),
) -> None:
    """Trace every TCP retransmission with the kernel's reason (needs root)."""
    from retranscope.record.recorder import RecordOptions
    from retranscope.record.recorder import record as run

    try:
        if ipv4 and ipv6:
            raise BadInput("-4 and -6 exclude each other")
        if port is not None and not 0 < port < 65536:
            raise BadInput(f"--port {port}: not a TCP port")
        opts = RecordOptions(out=out, pcap=pcap, interface=interface,
                             family=4 if ipv4 else 6 if ipv6 else None, port=port, pid=pid,
                             netns=netns, duration_s=duration, count=count, lossprobe=lossprobe,
                             sequence=sequence, live=not quiet, rotate_seconds=rotate_seconds,
                             rotate_rows=rotate_rows, force_perf_buffer=perf_buffer)
        run(opts)
    except RetranscopeError as err:
        _fail(err)


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)
