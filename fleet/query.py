"""`retranscope fleet query`: DuckDB over a fleet dataset (I/O edge).

Three views: ``runs`` (runs.parquet), ``retransmits`` and ``flows`` (every run's Parquet
files, ``host`` and ``date`` read from the hive partitions, columns unioned by name so runs
analyzed by older versions sit beside newer ones). The two data views hold only committed
runs: rows whose run is ``ok`` in runs.parquet at that host and date (fleet/dataset.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TextIO

from retranscope.errors import BadInput, EnvironmentProblem
from retranscope.fileio import write_atomic
from retranscope.fleet.dataset import RUNS_FILE, TABLES
from retranscope.fleet.questions import QUESTIONS

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet"}


def _duckdb():
    try:
        import duckdb
    except ImportError as exc:
        raise EnvironmentProblem(
            "DuckDB is not installed: run ./setup.sh, or pip install 'retranscope[fleet]'"
        ) from exc
    return duckdb


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def connect(dataset: Path, sql: str | None = None):
    """An in-memory DuckDB connection with the views ``runs``, ``retransmits``, ``flows``
    (only those ``sql`` names, if given: making a view reads every file's footer)."""
    duckdb = _duckdb()
    runs = dataset / RUNS_FILE
    if not runs.is_file():
        raise BadInput(
            f"{dataset}: no {RUNS_FILE}; give a directory written by "
            "`retranscope fleet analyze ROOT --out DATASET`"
        )
    con = duckdb.connect()
    con.execute(f"CREATE VIEW runs AS SELECT * FROM read_parquet({_quote(runs)})")
    for table in TABLES:
        if sql is not None and not re.search(rf"\b{table}\b", sql, re.IGNORECASE):
            continue
        if next((dataset / table).glob("*/*/*.parquet"), None) is None:
            continue  # no run has rows yet: a query naming the view says it does not exist
        files = dataset / table / "*" / "*" / "*.parquet"
        union = "true" if _mixed_columns(con, table, duckdb) else "false"
        con.execute(
            f"CREATE VIEW {table} AS SELECT d.* FROM read_parquet({_quote(files)}, "
            f"hive_partitioning = true, union_by_name = {union}, "
            "hive_types = {'host': VARCHAR, 'date': DATE}) d "
            "SEMI JOIN (SELECT run_id, host, date FROM runs WHERE status = 'ok') c "
            "ON d.run_id = c.run_id AND d.host = c.host AND d.date = c.date"
        )
    return con


def _mixed_columns(con, table: str, duckdb) -> bool:
    """Whether the runs' files of ``table`` differ in columns (analyzer versions that wrote
    other columns): then the view unions them by name, which reads every file's schema
    first; files that agree are read as one schema."""
    try:
        kinds, unknown = con.execute(
            f"SELECT count(DISTINCT {table}_schema), count(*) FILTER "
            f"(WHERE {table}_schema IS NULL) FROM runs WHERE status = 'ok'"
        ).fetchone()
    except duckdb.BinderException:  # runs.parquet from before the digests
        return True
    return bool(kinds > 1 or unknown)


def resolve(sql_or_name: str) -> str:
    """A question's name (fleet/questions.py) stands for its SQL."""
    if sql_or_name in QUESTIONS:
        return QUESTIONS[sql_or_name][1]
    return sql_or_name


def run_query(
    dataset: Path,
    sql_or_name: str,
    out: Path | None = None,
    max_rows: int = 50,
    stream: TextIO = sys.stdout,
):
    """Run the query; print it as a table, or write ``out`` (.csv or .parquet) whole."""
    duckdb = _duckdb()
    sql = resolve(sql_or_name)
    con = connect(dataset, sql)
    if out is not None and out.suffix.lower() not in OUTPUT_FORMATS:
        raise BadInput(f"--out {out}: give a .csv or .parquet file")
    try:
        rel = con.sql(sql)
        if rel is None:
            raise BadInput("the query returns no rows (not a SELECT); give a query")
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            fmt = OUTPUT_FORMATS[out.suffix.lower()]
            write_atomic(
                out,
                (lambda p: rel.write_csv(str(p), header=True))
                if fmt == "csv"
                else (lambda p: rel.write_parquet(str(p))),
            )
            return None
        # DuckDB 2 renamed it (the old name warns); 1.x has only the old one.
        fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
        table = fetch()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise BadInput(f"the query failed: {first}" + _hint(dataset, str(exc))) from exc
    stream.write(format_table(table, max_rows) + "\n")
    return table


def _hint(dataset: Path, message: str) -> str:
    missing = [t for t in TABLES if f"{t} does not exist" in message]
    if missing:
        return f" (no run in {dataset} has {missing[0]} rows yet)"
    return ""


def format_table(table, max_rows: int = 50) -> str:
    """Plain aligned columns, like psql: easy to read and to grep."""
    if table.num_columns == 0:
        return "(no columns)"
    head = table.slice(0, max_rows).to_pylist()
    cols = table.column_names
    cells = [[_cell(r[c]) for c in cols] for r in head]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    more = table.num_rows - len(head)
    lines.append(
        f"({table.num_rows} rows"
        + (f", {more} not shown: --max-rows or --out)" if more > 0 else ")")
    )
    return "\n".join(lines)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
