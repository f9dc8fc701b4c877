"""The `retranscope` command. Thin: parsing and error reporting only; the work is in the
stage modules (record/, analyze/, report/, lab/).

Errors: a RetranscopeError becomes one line on stderr and its exit code (2 bad input,
1 failure); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

# numpy's OpenBLAS starts a thread per core when numpy is imported, and it spins: ~2% of
# the CPU samples of `analyze` on the 13M-packet capture (perf), on a 2-core machine
# where the other core reads the capture's second half. Nothing here does linear
# algebra. Set before anything imports numpy; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402

from retranscope.errors import BadInput, RetranscopeError  # noqa: E402
from retranscope.fleet.cli import app as fleet_app  # noqa: E402

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
    flush_seconds: float = typer.Option(
        0.25,
        "--flush-seconds",
        help="Sync the events journal this often (a crash loses at most this much; at most 1).",
    ),
    max_size: Optional[int] = typer.Option(
        None,
        "--max-size",
        help="MB (10^6 bytes) per event file and per capture file (like tcpdump -C).",
    ),
    max_files: Optional[int] = typer.Option(
        None,
        "--max-files",
        help="Keep at most this many event files and capture files, "
        "deleting the oldest (like tcpdump -W).",
    ),
    min_free_mb: float = typer.Option(
        1.0,
        "--min-free-mb",
        help="Stop cleanly when the output filesystem has less than this many MB free.",
    ),
    metrics: Optional[str] = typer.Option(
        None, "--metrics", help="Serve Prometheus metrics at ADDR:PORT (e.g. 127.0.0.1:9977)."
    ),
    metrics_remote: bool = typer.Option(
        False, "--metrics-remote", help="Label retransmission metrics with the remote address."
    ),
    ring_reader: str = typer.Option(
        "mmap",
        "--ring-reader",
        help="mmap: read the ring buffer directly, in batches; bcc: bcc's per-event callback.",
    ),
) -> None:
    """Trace every TCP retransmission with the kernel's reason (root, or CAP_BPF +
    CAP_PERFMON and the others docs/recorder.md lists)."""
    import os

    # Before pyarrow loads: Arrow on the C library's allocator (record/recorder.py, record).
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
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
            flush_seconds=flush_seconds,
            max_size_mb=max_size,
            max_files=max_files,
            min_free_mb=min_free_mb,
            metrics=metrics,
            metrics_remote=metrics_remote,
            ring_reader=ring_reader,
        )
        run(opts)
    except RetranscopeError as err:
        _fail(err)


class _Progress:
    """A progress line on a terminal, nothing otherwise: while reading (called with
    analyze.capture.ReadProgress after each chunk) bytes and packets read, rate, ETA; then,
    for a spilled capture (analyze.spill.ShardProgress after each shard), the packets
    classified, shards, ETA. The last state of each phase is always drawn."""

    def __init__(self, label: str):
        self.label = label
        self.on = sys.stderr.isatty()
        self.next_at = 0.0
        self.phase: str | None = None  # the line being drawn
        self.pending = None  # the last state, when not drawn yet

    def __call__(self, p) -> None:
        import time

        if not self.on:
            return
        phase = "classify" if hasattr(p, "shards_total") else "read"
        if phase != self.phase and self.phase is not None:
            self._finish_line()
        self.phase = phase
        now = time.monotonic()
        self.pending = p
        last = phase == "classify" and p.shards_done == p.shards_total
        if now < self.next_at and not last:
            return
        self.next_at = now + 0.2  # at most five updates a second
        self._draw(p)

    def _draw(self, p) -> None:
        mb = 1e6
        eta = f", ETA {p.eta_s:.0f} s" if p.eta_s is not None else ""
        if hasattr(p, "shards_total"):
            line = (
                f"classifying {_bar(p.fraction)} {p.packets_done:,}/{p.packets_total:,} "
                f"packets, shard {p.shards_done}/{p.shards_total}{eta}"
            )
        else:
            if p.fraction is not None:
                done = f"{_bar(p.fraction)} {p.bytes_done / mb:,.0f}/{p.bytes_total / mb:,.0f} MB"
            else:
                done = f"{p.bytes_done / mb:,.0f} MB"
            files = f", file {p.files_done + 1}/{p.files_total}" if p.files_total > 1 else ""
            line = (
                f"{self.label} {done}, {p.records_done:,} packets, "
                f"{p.bytes_per_s / mb:,.0f} MB/s{eta}{files}"
            )
        sys.stderr.write(f"\r{line}   ")
        sys.stderr.flush()
        self.pending = None

    def _finish_line(self) -> None:
        if self.pending is not None:
            self._draw(self.pending)
        sys.stderr.write("\n")
        self.next_at = 0.0

    def close(self) -> None:
        if self.on and self.phase is not None:
            self._finish_line()


def _bar(fraction: float) -> str:
    return f"[{'#' * int(25 * fraction):<25}] {100 * fraction:3.0f}%"


@app.command()
def analyze(
    pcap: Optional[list[Path]] = typer.Option(
        None,
        "--pcap",
        help="Capture (best at the sender; docs/capture-points.md): pcap or pcapng, gzip, zstd, "
        "xz or bzip2. Several files, a directory or a glob make one capture (a rotated "
        "tcpdump -C/-W/-G set); repeat --pcap, or list more files after it.",
    ),
    more: Optional[list[Path]] = typer.Argument(
        None,
        metavar="CAPTURES...",
        help="More capture files of the same set (what a shell glob after --pcap gives).",
    ),
    events: Optional[Path] = typer.Option(
        None, "--events", help="Directory written by `retranscope record --out`."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Directory for retransmits.parquet, flows.parquet, summary.json."
    ),
    jobs: Optional[int] = typer.Option(
        None,
        "--jobs",
        "-j",
        min=1,
        help="Processes that classify the capture, in shards of connections; the output is "
        "the same for any N. Default: a spilled capture (64 MiB and more) on every core, "
        "holding no more shards at once than one process would (the peak memory of one, "
        "plus an interpreter a worker); "
        "one process in memory. An explicit N holds up to N shards at once, as the memory "
        "available allows (docs/scale.md).",
    ),
    decode_jobs: Optional[int] = typer.Option(
        None,
        "--decode-jobs",
        min=1,
        help="Processes that read and decode the capture. A spilled capture (see --spill) "
        "is read in that many parts at once (default: every core): one uncompressed pcap "
        "file in parts of its bytes, a set of files in runs of files. Other inputs are "
        "decoded on worker processes only when N is given, which was slower on the 2-core "
        "machine measured (docs/captures.md, docs/scale.md).",
    ),
    spill: Optional[bool] = typer.Option(
        None,
        "--spill/--no-spill",
        help="Spill the capture's packets to disk (in --out, removed after) and classify "
        "them a shard of connections at a time: memory follows the largest connection, not "
        "the capture. Default: for captures of 64 MiB and more (a compressed file counted "
        "at 10 times its size) and from a pipe, without --events (docs/scale.md).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary on stdout."),
) -> None:
    """Classify every retransmission (RTO, fast, TLP, ...) from a capture and/or events."""
    try:
        captures = list(pcap or []) + list(more or [])
        if not captures and events is None:
            raise BadInput("give --pcap CAPTURE, --events DIR, or both")
        source = None if not captures else captures[0] if len(captures) == 1 else captures
        run_analysis(source, events, out, quiet, jobs=jobs, decode_jobs=decode_jobs, spill=spill)
    except RetranscopeError as err:
        _fail(err)
    _FINISHED["exit_now"] = True


#: set by a command that has closed everything it wrote: main() then ends the process
#: without the interpreter's teardown (freeing every array and module one at a time:
#: 40-50 ms after an analysis of the bench's 1.3M-packet capture, ~6% of its time). Not
#: for `record`, whose bcc cleanup runs at exit.
_FINISHED = {"exit_now": False}


def run_analysis(
    pcap,
    events: Optional[Path],
    out: Path,
    quiet: bool = True,
    jobs: Optional[int] = None,
    decode_jobs: Optional[int] = None,
    spill: Optional[bool] = None,
):
    """analyze/run.py with a progress line and warnings on stderr, and the summary on
    stdout. ``pcap``: a capture path, a list of them (a set), or None."""
    from retranscope.analyze.run import run_analysis as run

    bar = _Progress("reading capture")
    try:
        result = run(
            pcap,
            events,
            out,
            progress=bar,
            jobs=jobs,
            decode_jobs=decode_jobs,
            spill=spill,
            warn=lambda w: typer.echo(f"retranscope: warning: {w}", err=True),
        )
    finally:
        bar.close()
    if not quiet:
        from retranscope.report.render import load, render_terminal

        name = pcap if isinstance(pcap, Path) else (pcap[0] if pcap else events)
        typer.echo(render_terminal([load(out, name=str(name), terminal=True)]))
    return result


@app.command()
def report(
    analyses: list[Path] = typer.Argument(
        ..., help="Directories written by `retranscope analyze --out` (two: compare them)."
    ),
    out: Path = typer.Option(
        Path("report.html"),
        "--out",
        "-o",
        help="report.html path or directory (report.md beside it).",
    ),
    flow: Optional[list[str]] = typer.Option(
        None,
        "--flow",
        help="Draw this flow's time-sequence graph: a flow_id or ADDR:PORT-ADDR:PORT (repeatable).",
    ),
    pcap: Optional[list[Path]] = typer.Option(
        None,
        "--pcap",
        help="The capture the analysis read, if not where summary.json says (one analysis: "
        "its file(s); several: one per analysis, in order).",
    ),
    graphs: int = typer.Option(
        3, "--graphs", help="Time-sequence graphs of the flows that suffered most (0: none)."
    ),
) -> None:
    """Write the postmortem (HTML and Markdown) and print its summary."""
    from retranscope.report.render import ReportOptions, load, render_terminal, write_report

    try:
        loaded = [load(a) for a in analyses]
        opts = ReportOptions(
            flows=list(flow or []),
            pcap=list(pcap or []),
            top=max(0, graphs),
            warn=lambda w: typer.echo(f"retranscope: warning: {w}", err=True),
        )
        paths = write_report(loaded, out, opts)
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
    except SystemExit as done:
        if _FINISHED["exit_now"] and done.code in (0, None):
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except BrokenPipeError:
                os._exit(1)
            os._exit(0)
        raise
