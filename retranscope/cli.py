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
from retranscope.fleet.cli import app as fleet_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Explain Linux TCP retransmissions: record them with the kernel's "
    "reason, classify them from packet captures, report.",
)


app.add_typer(fleet_app, name="fleet")


@app.callback()
def _root() -> None:
    """Explain Linux TCP retransmissions."""


def _fail(err: RetranscopeError) -> None:
    typer.echo(f"retranscope: error: {err}", err=True)
    raise typer.Exit(err.exit_code)


@app.command()
def record(
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Directory for events-*.parquet and run.json."
    ),
    pcap: Optional[Path] = typer.Option(
        None, "--pcap", help="Also capture packets (tcpdump) into this file."
    ),
    interface: str = typer.Option("any", "--interface", "-i", help="Interface for --pcap."),
    sequence: bool = typer.Option(
        False, "--sequence", "-s", help="Show TCP sequence numbers (like tcpretrans -s)."
    ),
    lossprobe: bool = typer.Option(
        False, "--lossprobe", "-l", help="Include TLP attempts (kprobe tcp_send_loss_probe)."
    ),
    count: bool = typer.Option(
        False, "--count", "-c", help="Count retransmits per flow in the kernel; print at exit."
    ),
    ipv4: bool = typer.Option(False, "--ipv4", "-4", help="IPv4 only."),
    ipv6: bool = typer.Option(False, "--ipv6", "-6", help="IPv6 only."),
    port: Optional[int] = typer.Option(None, "--port", help="Only this local or remote port."),
    pid: Optional[int] = typer.Option(None, "--pid", help="Only sockets held by this process."),
    netns: str = typer.Option(
        "auto", "--netns", help="auto | all | self | INODE: which network namespace's retransmits."
    ),
    duration: Optional[float] = typer.Option(
        None, "--duration", "-d", help="Stop after this many seconds."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live line per event."),
    rotate_seconds: float = typer.Option(
        10.0, "--rotate-seconds", help="Close a Parquet file at least this often."
    ),
    rotate_rows: int = typer.Option(
        200_000, "--rotate-rows", help="Close a Parquet file at this many rows."
    ),
    buffer_mb: int = typer.Option(
        16,
        "--buffer-mb",
        help="Kernel buffer for events (ring buffer, or perf buffer over all CPUs).",
    ),
    perf_buffer: bool = typer.Option(
        False, "--perf-buffer", help="Use the perf buffer even where a ring buffer exists."
    ),
) -> None:
    """Trace every TCP retransmission with the kernel's reason (needs root)."""
    from retranscope.record.recorder import RecordOptions
    from retranscope.record.recorder import record as run

    try:
        if ipv4 and ipv6:
            raise BadInput("-4 and -6 exclude each other")
        if port is not None and not 0 < port < 65536:
            raise BadInput(f"--port {port}: not a TCP port")
        opts = RecordOptions(
            out=out,
            pcap=pcap,
            interface=interface,
            family=4 if ipv4 else 6 if ipv6 else None,
            port=port,
            pid=pid,
            netns=netns,
            duration_s=duration,
            count=count,
            lossprobe=lossprobe,
            sequence=sequence,
            live=not quiet,
            rotate_seconds=rotate_seconds,
            rotate_rows=rotate_rows,
            force_perf_buffer=perf_buffer,
            buffer_mb=buffer_mb,
        )
        run(opts)
    except RetranscopeError as err:
        _fail(err)


class _Progress:
    """A progress bar on a terminal, nothing otherwise."""

    def __init__(self, label: str):
        self.label = label
        self.on = sys.stderr.isatty()
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.on or total <= 0:
            return
        pct = int(100 * done / total)
        if pct != self.last:
            self.last = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {pct:3d}%")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on and self.last >= 0:
            sys.stderr.write("\n")


@app.command()
def analyze(
    pcap: Optional[Path] = typer.Option(
        None, "--pcap", help="Capture (pcap or pcapng) taken on the sender."
    ),
    events: Optional[Path] = typer.Option(
        None, "--events", help="Directory written by `retranscope record --out`."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory for retransmits.parquet, flows.parquet, summary.json."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary on stdout."),
) -> None:
    """Classify every retransmission (RTO, fast, TLP, ...) from a capture and/or events."""
    try:
        if pcap is None and events is None:
            raise BadInput("give --pcap CAPTURE, --events DIR, or both")
        run_analysis(pcap, events, out, quiet)
    except RetranscopeError as err:
        _fail(err)


def run_analysis(pcap: Optional[Path], events: Optional[Path], out: Path, quiet: bool = True):
    """analyze/run.py with a progress bar and warnings on stderr, and the summary on stdout."""
    from retranscope.analyze.run import run_analysis as run

    bar = _Progress("reading capture")
    try:
        result = run(pcap, events, out, progress=bar,
                     warn=lambda w: typer.echo(f"retranscope: warning: {w}", err=True))
    finally:
        bar.close()
    if not quiet:
        from retranscope.report.render import load, render_terminal

        typer.echo(render_terminal([load(out, name=str(pcap or events))]))
    return result


@app.command()
def report(
    analyses: list[Path] = typer.Argument(
        ..., help="Directories written by `retranscope analyze --out`."
    ),
    out: Path = typer.Option(
        Path("report.html"),
        "--out",
        "-o",
        help="report.html path or directory (report.md beside it).",
    ),
) -> None:
    """Write the postmortem (HTML and Markdown) and print its summary."""
    from retranscope.report.render import load, render_terminal, write_report

    try:
        loaded = [load(a) for a in analyses]
        paths = write_report(loaded, out)
        typer.echo(render_terminal(loaded))
        typer.echo(f"wrote {', '.join(str(p) for p in paths)}")
    except RetranscopeError as err:
        _fail(err)


DEMO_SCENARIOS = (
    "slow_server_tlp",
    "tail_drop_tlp",
    "fast_nth",
    "blackhole_rto",
    "random_loss_rtt",
)


@app.command()
def demo(
    out: Path = typer.Option(
        Path("demo-out"), "--out", "-o", help="Where recordings, analyses and the report go."
    ),
    scenarios: Optional[list[str]] = typer.Option(
        None, "--scenario", help="Lab scenarios (default: a mix)."
    ),
) -> None:
    """Make real retransmissions in a namespace lab, record, analyze and report them (root)."""
    try:
        from retranscope.lab.recorded import record_scenario
        from retranscope.lab.scenarios import SCENARIOS
        from retranscope.record.probe import require_root
        from retranscope.report.render import load, render_terminal, write_report

        require_root()
        names = list(scenarios or DEMO_SCENARIOS)
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise BadInput(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
        loaded = []
        for name in names:
            typer.echo(f"demo: {name}: {SCENARIOS[name].description}", err=True)
            run = record_scenario(SCENARIOS[name], out / name)
            if run.recorder_returncode != 0:
                raise RetranscopeError(
                    f"the recorder failed in scenario {name}: "
                    + " | ".join(run.recorder_stderr[-3:])
                )
            run_analysis(run.capture, run.out_dir, out / name / "analysis")
            loaded.append(load(out / name / "analysis", name=name))
        paths = write_report(loaded, out)
        typer.echo(render_terminal(loaded))
        typer.echo(f"wrote {', '.join(str(p) for p in paths)}")
    except RetranscopeError as err:
        _fail(err)


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(1)
