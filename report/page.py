"""Parts every report page shares (this one, the fleet's, a capture set's): the page shell
with the inline stylesheet and script, and tables in HTML and Markdown.

The page is one file that works offline: the CSS and the script (assets/) are inlined,
nothing is fetched. The tables are plain HTML, readable without JavaScript; only the
time-sequence graphs need the script.
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources

import pandas as pd


@cache
def asset(name: str) -> str:
    """The text of report/assets/NAME."""
    return resources.files("retranscope.report").joinpath("assets", name).read_text()


def page(title: str, body: list[str], script: bool = True) -> str:
    """A complete HTML page: ``body`` parts in order, the stylesheet inline, and the
    graphs' script inline at the end (``script=False`` for a page without graphs)."""
    js = f"<script>{asset('tsg.js')}</script>" if script else ""
    return "\n".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{asset('report.css')}</style></head><body>",
            *body,
            js,
            "</body></html>",
        ]
    )


def _cell(v) -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def table_html(df: pd.DataFrame, row_class: list[str] | None = None, klass: str = "") -> str:
    """A DataFrame as an HTML table (numbers right-aligned); "(none)" when empty.
    ``row_class``: a CSS class per row ("" for none); ``klass``: the table's own."""
    if df.empty:
        return "<p>(none)</p>"
    head = "".join(f"<th>{escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, row in enumerate(df.itertuples(index=False)):
        cls = f" class='{row_class[i]}'" if row_class and row_class[i] else ""
        cells = "".join(
            f"<td class='num'>{escape(_cell(v))}</td>"
            if _num(v)
            else f"<td>{escape(_cell(v))}</td>"
            for v in row
        )
        rows.append(f"<tr{cls}>{cells}</tr>")
    return (
        f"<div class='tw'><table{f' class={klass!r}' if klass else ''}><thead><tr>{head}</tr>"
        "</thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def table_md(df: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table; "(none)" when empty."""
    if df.empty:
        return "(none)\n"
    cols = list(df.columns)
    out = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(out) + "\n"


def section(title: str, *parts: str, level: int = 3) -> str:
    return f"<h{level}>{escape(title)}</h{level}>" + "".join(parts)
