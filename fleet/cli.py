"""`retranscope fleet ...`: the Typer sub-app (retranscope/cli.py adds it). Thin, like the
main CLI: parsing, the engine chosen from the options, errors as one line."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from retranscope.errors import BadInput, RetranscopeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Many hosts' runs: analyze them in parallel (Dask), query them (DuckDB), report.",
)

#: Exit codes above this mean something else to shells (126+: not run, signals).
MAX_FAILED_EXIT = 100


def _fail(err: RetranscopeError) -> None:
    typer.echo(f"retranscope: error: {err}", err=True)
    raise typer.Exit(err.exit_code)


def _sigterm_as_interrupt() -> None:
    """SIGTERM (a scheduler job's end, `kill`) commits what is done, like Ctrl-C."""

    def handler(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@app.command("analyze")
def analyze_cmd(
    root: Path = typer.Argument(..., help="Directory holding the runs (recordings, captures)."),
    out: Path = typer.Option(..., "--out", "-o", help="The dataset directory."),
    scheduler: Optional[str] = typer.Option(
        None,
        "--scheduler",
        help="Dask scheduler address (tcp://HOST:8786); default: a LocalCluster on this machine.",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", "-w", help="LocalCluster worker processes (default: one per core)."
    ),
    force: bool = typer.Option(False, "--force", help="Analyze every run again."),
    host_from: Optional[str] = typer.Option(
        None,
        "--host-from",
        help="Where a capture without run.json names its host, as a "
        "path pattern under ROOT: '{host}/*.pcap'.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No line per run."),
) -> None:
    """Analyze every run under ROOT into DATASET; exit code: how many runs failed."""
    from retranscope.fleet import engine
    from retranscope.fleet.discover import HostPattern
    from retranscope.fleet.runner import analyze_fleet

    say = (lambda _line: None) if quiet else (lambda line: typer.echo(line, err=True))
    try:
        pattern = HostPattern(host_from) if host_from else None
        if scheduler and workers is not None:
            raise BadInput(
                "--workers sizes a LocalCluster; with --scheduler the "
                "cluster's own workers run the tasks: give one of them"
            )
        chosen = (
            (lambda: engine.remote(scheduler)) if scheduler else (lambda: engine.local(workers))
        )
        _sigterm_as_interrupt()
        outcome = analyze_fleet(root, out, chosen, force=force, host_from=pattern, say=say)
    except RetranscopeError as err:
        _fail(err)
    except KeyboardInterrupt:
        typer.echo(
            "retranscope: interrupted: the runs finished so far are committed; run "
            "again to analyze the rest",
            err=True,
        )
        raise typer.Exit(130) from None
    typer.echo(
        f"fleet: {outcome.found} runs: {outcome.analyzed} analyzed, {outcome.up_to_date} up to "
        f"date, {len(outcome.failed)} failed"
        + (
            f", {outcome.duplicates} copies of another run's recording (analyzed once; "
            "runs.parquet duplicate_paths)"
            if outcome.duplicates
            else ""
        )
        + f"; {outcome.elapsed_s:.1f} s -> {out}"
    )
    for row in outcome.failed[:20]:
        typer.echo(f"fleet: {row['status']}: {row['path']}: {row.get('error')}", err=True)
    if len(outcome.failed) > 20:
        typer.echo(
            f"fleet: ... {len(outcome.failed) - 20} more: SELECT path, error FROM runs "
            "WHERE status <> 'ok'",
            err=True,
        )
    raise typer.Exit(min(len(outcome.failed), MAX_FAILED_EXIT))


@app.command("query")
def query_cmd(
    dataset: Path = typer.Argument(..., help="The dataset directory."),
    sql: str = typer.Argument(
        ...,
        help="SQL over the views runs, retransmits, flows; or the name of a ready question "
        "(`retranscope fleet questions`).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write a .csv or .parquet."),
    max_rows: int = typer.Option(50, "--max-rows", help="Rows printed (not written)."),
) -> None:
    """Query the dataset with DuckDB; print a table, or write CSV/Parquet."""
    from retranscope.fleet.query import run_query

    try:
        run_query(dataset, sql, out, max_rows=max_rows, stream=sys.stdout)
    except RetranscopeError as err:
        _fail(err)
    if out is not None:
        typer.echo(f"wrote {out}", err=True)


@app.command("questions")
def questions_cmd() -> None:
    """The ready questions, by name, and their SQL."""
    from retranscope.fleet.questions import QUESTIONS

    for name, (title, sql) in QUESTIONS.items():
        typer.echo(f"{name}: {title}\n{sql}\n")


@app.command("report")
def report_cmd(
    dataset: Path = typer.Argument(..., help="The dataset directory."),
    out: Path = typer.Option(Path("fleet.html"), "--out", "-o", help="The HTML file."),
) -> None:
    """Write the fleet report (self-contained HTML), with each run's own report linked."""
    from retranscope.report.fleet import write_fleet_report

    try:
        written = write_fleet_report(dataset, out)
    except RetranscopeError as err:
        _fail(err)
    typer.echo(
        f"wrote {out} ({written.runs_linked} run reports linked, {written.run_reports_made} made)"
    )
