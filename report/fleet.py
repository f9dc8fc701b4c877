"""The fleet report: one self-contained HTML page over a fleet dataset (fleet/dataset.py).

Per host: retransmissions by kind, the share shown spurious, and a verdict, real loss or
probe noise; retransmissions over time by kind; the worst hosts and peers; runs that failed;
what was lost while recording; and every run with a link to its own report. A run's own
report is the one in its directory (report.html) if it has one; otherwise it is made here,
with report/render.py, from the run's rows in the dataset (the same rows `analyze` wrote),
once per analysis.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from html import escape
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from retranscope.fileio import write_atomic
from retranscope.fleet.dataset import TABLES, run_file
from retranscope.fleet.query import connect
from retranscope.fleet.questions import QUESTIONS
from retranscope.report import svg
from retranscope.report.render import load, write_report
from retranscope.schemas.vocabulary import KINDS

#: A host's retransmissions, judged. Thresholds are on what the receiver showed: a share of
#: retransmissions the receiver already had (D-SACK, timestamps), not a guess.
VERDICTS = {
    "quiet": "no retransmissions",
    "probe noise": "every retransmission was shown needless: nothing was lost",
    "mostly probe noise": "half or more were shown needless",
    "real loss": "most retransmissions repaired real loss",
}
#: Bucket widths for the time series, the smallest giving at most MAX_BUCKETS columns.
BUCKETS_S = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 72
RUN_REPORTS = "reports"


@dataclass
class Written:
    path: Path
    runs_linked: int
    run_reports_made: int


def verdict(retransmissions: int, real_loss: int, spurious_share: float) -> str:
    if not retransmissions:
        return "quiet"
    if not real_loss:
        return "probe noise"
    return "mostly probe noise" if spurious_share >= 0.5 else "real loss"


def hosts_table(con, kinds: list[str]) -> pd.DataFrame:
    per_kind = ", ".join(f"count(*) FILTER (WHERE kind = '{k}') AS {k}" for k in kinds)
    df = con.execute(f"""
        WITH r AS (SELECT host, count(*) AS retransmissions, {per_kind},
                          count(*) FILTER (WHERE spurious) AS spurious,
                          count(*) FILTER (WHERE NOT coalesce(spurious, false)) AS real_loss
                   FROM retransmits GROUP BY host),
             d AS (SELECT host, CAST(sum(data_segments) AS BIGINT) AS data_segments
                   FROM runs WHERE status = 'ok' GROUP BY host),
             u AS (SELECT host, count(*) AS runs,
                          count(*) FILTER (WHERE status <> 'ok') AS failed
                   FROM runs GROUP BY host)
        SELECT u.host, u.runs, u.failed, coalesce(r.retransmissions, 0) AS retransmissions,
               {", ".join(f"coalesce(r.{k}, 0) AS {k}" for k in kinds)},
               coalesce(r.spurious, 0) AS spurious, coalesce(r.real_loss, 0) AS real_loss,
               d.data_segments
        FROM u LEFT JOIN r USING (host) LEFT JOIN d USING (host)
        ORDER BY real_loss DESC, retransmissions DESC, u.host""").df()
    df["spurious_share"] = (
        df["spurious"] / df["retransmissions"].where(df["retransmissions"] > 0)
    ).fillna(0.0)
    df["real_loss_per_1k"] = (
        1000 * df["real_loss"] / df["data_segments"].where(df["data_segments"] > 0)
    ).round(2)
    df["verdict"] = [
        verdict(int(n), int(r), float(s))
        for n, r, s in zip(df["retransmissions"], df["real_loss"], df["spurious_share"])
    ]
    return df


def time_series(con) -> tuple[int, pd.DataFrame]:
    """Retransmissions per bucket and kind: (bucket width in s, frame of t_s, kind, n)."""
    lo, hi = con.execute("SELECT min(ts_wall_ns), max(ts_wall_ns) FROM retransmits").fetchone()
    if lo is None:
        return BUCKETS_S[0], pd.DataFrame(columns=["t_s", "kind", "n"])
    span_s = (hi - lo) / 1e9
    width = next((b for b in BUCKETS_S if span_s / b <= MAX_BUCKETS), BUCKETS_S[-1])
    df = con.execute(f"""SELECT (ts_wall_ns // {width * 10**9}) * {width} AS t_s, kind,
                            count(*) AS n
                     FROM retransmits GROUP BY ALL ORDER BY t_s, kind""").df()
    return width, df


def stacked_columns(df: pd.DataFrame, width_s: int, title: str, width: int = 900) -> str:
    """Stacked columns of n per (t_s, kind): the fleet's retransmissions over time."""
    if df.empty:
        return ""
    piv = df.pivot_table(index="t_s", columns="kind", values="n", aggfunc="sum", fill_value=0)
    kinds = [k for k in KINDS if k in piv.columns]
    t0, t1 = int(piv.index.min()), int(piv.index.max())
    n_cols = (t1 - t0) // width_s + 1
    left, top, bottom, legend_h = 50, 24, 34, 18
    height = 260
    pw, ph = width - left - 10, height - top - bottom - legend_h
    col_w = pw / n_cols
    vmax = float(piv[kinds].sum(axis=1).max()) or 1.0
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}">'
        f'<title>{escape(title)}</title><text x="4" y="16" class="ttl">{escape(title)}</text>'
    ]
    for t, row in piv.iterrows():
        x = left + (int(t) - t0) // width_s * col_w
        y = top + ph
        for k in kinds:
            h = ph * row[k] / vmax
            if h <= 0:
                continue
            y -= h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(col_w - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{svg.COLORS.get(k, "#999")}"><title>'
                f"{_when(int(t))}: {int(row[k])} {k}</title></rect>"
            )
    out.append(f'<text x="4" y="{top + 10}">{int(vmax)}</text>')
    out.append(f'<text x="{left}" y="{top + ph + 14}">{_when(t0)}</text>')
    out.append(
        f'<text x="{left + pw}" y="{top + ph + 14}" text-anchor="end">{_when(t1 + width_s)}</text>'
    )
    for i, k in enumerate(kinds):
        x = left + i * 110
        out.append(
            f'<rect x="{x}" y="{height - 14}" width="10" height="10" '
            f'fill="{svg.COLORS.get(k, "#999")}"/><text x="{x + 14}" y="{height - 5}">'
            f"{escape(k)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _when(t_s: int) -> str:
    return pd.Timestamp(t_s, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


def run_report(dataset: Path, run: dict, out_dir: Path) -> tuple[Path, bool]:
    """The run's own report: the one beside its inputs, else one made from its rows in the
    dataset (made again when the run was analyzed after it). Returns (path, made)."""
    run_dir = Path(run["root"], run["path"])
    for own in (run_dir / "report.html", run_dir.with_suffix(".report.html")):
        if own.is_file() and own != run_dir:
            return own, False
    target = dataset / RUN_REPORTS / run["run_id"] / "report.html"
    if target.is_file() and target.stat().st_mtime_ns >= (run.get("analyzed_at_ns") or 0):
        return target, False
    with tempfile.TemporaryDirectory(prefix="retranscope-run-") as scratch:
        tmp = Path(scratch)
        for table in TABLES:
            rows = pq.read_table(run_file(dataset, table, run["host"], run["date"], run["run_id"]))
            rows = rows.drop_columns(["run_id"])
            pq.write_table(rows, tmp / f"{table}.parquet")
        (tmp / "summary.json").write_text(run["summary_json"])
        analysis = load(tmp, name=f"{run['host']} {run['date']} {run['path']}")
        write_report([analysis], target)
    return target, True


def _link(target: Path, page: Path) -> str:
    return Path(os.path.relpath(target, page.parent)).as_posix()


def _table(df: pd.DataFrame, raw: tuple[str, ...] = ()) -> str:
    """An HTML table; columns in ``raw`` hold HTML made here (links), the rest is escaped."""
    if df.empty:
        return "<p>(none)</p>"
    head = "".join(f"<th>{escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{v if c in raw else escape(_fmt(v))}</td>" for c, v in zip(df.columns, row))
        + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v) -> str:
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        if v.is_integer():
            return str(int(v))
        return f"{v:.3g}" if abs(v) < 1 else f"{v:,.1f}"
    if isinstance(v, pd.Timestamp):
        return v.strftime("%Y-%m-%d")
    return str(v)


CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
  color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;white-space:nowrap}
th{background:#f4f4f4}
.lead{font-size:1.05em;background:#fff8e6;border-left:4px solid #e69f00;padding:.6em 1em}
svg.chart{display:block;margin:.5em 0;font-size:12px} svg .ttl{font-weight:600}
"""


def _head(con, dataset: Path) -> str:
    n, ok, hosts, first, last, versions, copies = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'ok'), count(DISTINCT host), "
        "min(date), max(date), string_agg(DISTINCT analyzer_version, ', '), "
        "coalesce(sum(len(duplicate_paths)), 0) FROM runs"
    ).fetchone()
    dup = (
        f" {copies} more directories held a copy of a run's recording (same run_id): "
        "each analyzed once (runs.parquet duplicate_paths)."
        if copies
        else ""
    )
    return (
        f"<p class='lead'>{n} runs from {hosts} host{'s' if hosts != 1 else ''}, "
        f"{first} to {last}: {ok} analyzed, "
        f"{n - ok} failed.{dup} Dataset <code>{escape(str(dataset))}</code>; analyzer "
        f"{escape(str(versions))}.</p>"
    )


def _worst_section(hosts: pd.DataFrame, peers: pd.DataFrame) -> str:
    worst = hosts[hosts["real_loss"] > 0].head(15)
    chart = svg.bars(
        [(h, int(r)) for h, r in zip(worst["host"], worst["real_loss"])],
        "Worst hosts: retransmissions that repaired real loss",
    )
    return (
        "<h2>Worst hosts and peers</h2>"
        + (chart or "<p>No host had real loss.</p>")
        + "<p>Receivers the fleet resent to most, by real loss:</p>"
        + _table(peers)
    )


def _hosts_section(hosts: pd.DataFrame, kinds: list[str]) -> str:
    cols = ["host", "runs", "failed", "retransmissions", *kinds, "spurious"]
    shown = hosts[[*cols, "spurious_share", "real_loss", "real_loss_per_1k", "verdict"]].copy()
    shown["spurious_share"] = [f"{100 * s:.1f}%" for s in shown["spurious_share"]]
    legend = "".join(f"<li><b>{escape(k)}</b>: {escape(v)}</li>" for k, v in VERDICTS.items())
    return (
        "<h2>Hosts</h2><p>Real loss: retransmissions the receiver did not show needless"
        " (no D-SACK, no timestamp echo of the original); per thousand data segments "
        f"of the host's captures.</p><ul>{legend}</ul>" + _table(shown)
    )


def _runs_sections(runs: pd.DataFrame, links: dict[str, str]) -> tuple[str, str]:
    """The runs that failed, and every analyzed run with its report."""
    ok = runs[runs["status"] == "ok"].copy()
    ok["report"] = [
        f"<a href='{escape(links[r])}'>report</a>" if r in links else "" for r in ok["run_id"]
    ]
    cols = ["host", "date", "path", "retransmissions", "tlp", "spurious", "report"]
    failed = runs[runs["status"] != "ok"][["host", "date", "path", "status", "error"]]
    return "<h2>Runs that failed</h2>" + _table(failed), "<h2>Runs</h2>" + _table(
        ok[cols], raw=("report",)
    )


def _lost_section(con) -> str:
    df = con.execute("""
        SELECT host, CAST(sum(events_lost_in_kernel) AS BIGINT) AS events_lost_in_kernel,
               CAST(sum(unreported_segments) AS BIGINT) AS unreported_segments,
               CAST(sum(tcpdump_dropped) AS BIGINT) AS tcpdump_dropped,
               CAST(sum(capture_if_drops) AS BIGINT) AS capture_if_drops,
               count(*) FILTER (WHERE capture_truncated) AS truncated_captures,
               CAST(sum(frames_without_event) AS BIGINT) AS frames_without_event,
               CAST(sum(len(warnings)) AS BIGINT) AS warnings
        FROM runs WHERE status = 'ok' GROUP BY host
        HAVING coalesce(sum(events_lost_in_kernel), 0) + coalesce(sum(unreported_segments), 0)
               + coalesce(sum(tcpdump_dropped), 0) + coalesce(sum(capture_if_drops), 0)
               + count(*) FILTER (WHERE capture_truncated) + coalesce(sum(len(warnings)), 0) > 0
        ORDER BY host""").df()
    text = (
        "Per host, summed over its runs: events lost in the kernel buffer, segments the "
        "kernel resent without an event, capture drops, truncated captures, analyzer "
        "warnings (each run's own report says more)."
    )
    return f"<h2>What was lost or not matched</h2><p>{text}</p>" + _table(df)


def render_fleet_html(con, dataset: Path, links: dict[str, str]) -> str:
    runs = con.execute(
        "SELECT * EXCLUDE (summary_json, traceback, date), "
        "CAST(date AS VARCHAR) AS date FROM runs ORDER BY host, date, path"
    ).df()
    failed, analyzed = _runs_sections(runs, links)
    have_rows = "retransmits" in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>retranscope fleet report</title><style>{CSS}</style></head><body>"
        "<h1>retranscope fleet report</h1>",
        _head(con, dataset),
        failed,
    ]
    if have_rows:
        kinds = [
            k
            for k in KINDS
            if con.execute(f"SELECT count(*) FROM retransmits WHERE kind = '{k}'").fetchone()[0]
        ]
        hosts = hosts_table(con, kinds)
        parts.append(_worst_section(hosts, con.execute(QUESTIONS["top_peers"][1]).df()))
        width_s, series = time_series(con)
        parts.append(
            "<h2>Over time</h2>"
            + stacked_columns(series, width_s, f"Retransmissions by kind, per {_span(width_s)}")
        )
        parts.append(_hosts_section(hosts, kinds))
    parts += [_lost_section(con), analyzed, "</body></html>"]
    return "\n".join(parts)


def _span(width_s: int) -> str:
    for unit, s in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if width_s % s == 0:
            n = width_s // s
            return f"{n} {unit}s" if n > 1 else unit
    return f"{width_s} s"


def write_fleet_report(dataset: Path, out: Path) -> Written:
    """Write the fleet report to ``out`` (and each run's own report where it lacks one)."""
    dataset = Path(dataset)
    out = Path(out)
    con = connect(dataset)
    runs = con.execute(
        "SELECT run_id, host, date, root, path, analyzed_at_ns, summary_json "
        "FROM runs WHERE status = 'ok'"
    ).fetchall()
    names = ("run_id", "host", "date", "root", "path", "analyzed_at_ns", "summary_json")
    links: dict[str, str] = {}
    made = 0
    for values in runs:
        run = dict(zip(names, values))
        target, was_made = run_report(dataset, run, out)
        links[run["run_id"]] = _link(target, out)
        made += was_made
    html = render_fleet_html(con, dataset, links)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda p: p.write_text(html))
    return Written(out, len(links), made)
