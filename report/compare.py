"""Two analyses side by side (before and after a sysctl, a kernel, a network fix): kinds,
spurious shares, probe gaps and per-peer retransmission rates, and which differences are
beyond noise.

Each share is tested (report/stats.py: Fisher's exact test on small counts, else the
two-proportion z-test; the probe gaps with the Mann-Whitney U test), and the p-values of
the page are adjusted together (Holm): a row is marked changed when its adjusted p-value
is below ALPHA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from retranscope.report import stats
from retranscope.schemas.vocabulary import FAMILY_OF_KIND, KINDS

ALPHA = 0.05
#: Peers compared at most (by their retransmissions in both analyses).
MAX_PEERS = 20


@dataclass
class Test:
    what: str  # the row's label
    group: str  # which table it belongs to
    a: str
    b: str
    p: float | None  # None: nothing to test (a side has no cases, or neither has any)
    method: str
    adjusted: float | None = None

    @property
    def changed(self) -> bool:
        return self.adjusted is not None and self.adjusted < ALPHA


def _share(x: int, n: int) -> str:
    return f"{x:,}/{n:,} ({100 * x / n:.1f}%)" if n else f"{x:,}/0"


def _share_test(group: str, what: str, xa: int, na: int, xb: int, nb: int) -> Test:
    if na == 0 or nb == 0 or (xa + xb == 0) or (xa == na and xb == nb):
        return Test(what, group, _share(xa, na), _share(xb, nb), None, "")
    t = stats.compare_shares(xa, na, xb, nb)
    return Test(what, group, _share(xa, na), _share(xb, nb), t.p_value, t.method)


def _spurious(r: pd.DataFrame) -> pd.Series:
    return r["spurious"].fillna(False).astype(bool)


def _sent(a) -> tuple[int, int] | None:
    """(retransmissions, data segments sent) over the flows of the capture; None without
    one. flows.parquet counts both per flow: the same segments in both analyses."""
    f = a.flows
    if "n_data" not in f or (f["flow_id"] < 0).all():
        return None
    f = f[f["flow_id"] >= 0]
    return int(f["retransmissions"].sum()), int(f["n_data"].sum())


def kind_tests(a, b) -> list[Test]:
    """Share of each kind (and family) among the retransmissions; the retransmissions per
    data segment sent, where both analyses had a capture."""
    ra, rb = a.retransmits, b.retransmits
    na, nb = len(ra), len(rb)
    out = []
    sa, sb = _sent(a), _sent(b)
    if sa and sb and sa[1] and sb[1]:
        out.append(_share_test("kinds", "retransmissions per data segment sent", *sa, *sb))
    fa, fb = ra["kind"].map(FAMILY_OF_KIND), rb["kind"].map(FAMILY_OF_KIND)
    for fam, label in (
        ("tlp", "tail loss probes"),
        ("fast", "fast retransmits"),
        ("rto", "timeouts (RTO, SYN, slow start after RTO)"),
    ):
        xa, xb = int((fa == fam).sum()), int((fb == fam).sum())
        if xa or xb:
            out.append(_share_test("kinds", f"share: {label}", xa, na, xb, nb))
    # The kinds within the timeout family, when it has more than one (tlp and fast are
    # families of one kind: their rows above say it).
    seen = set(ra["kind"]) | set(rb["kind"])
    timeouts = [k for k in KINDS if FAMILY_OF_KIND[k] == "rto" and k in seen]
    for k in (timeouts if len(timeouts) > 1 else []) + (["unknown"] if "unknown" in seen else []):
        xa, xb = int((ra["kind"] == k).sum()), int((rb["kind"] == k).sum())
        out.append(_share_test("kinds", f"share: {k}", xa, na, xb, nb))
    return out


def spurious_tests(a, b) -> list[Test]:
    ra, rb = a.retransmits, b.retransmits
    sa, sb = _spurious(ra), _spurious(rb)
    out = [
        _share_test(
            "spurious",
            "spurious, of all retransmissions",
            int(sa.sum()),
            len(ra),
            int(sb.sum()),
            len(rb),
        )
    ]
    for k in KINDS:
        ka, kb = ra["kind"] == k, rb["kind"] == k
        if ka.any() or kb.any():
            out.append(
                _share_test(
                    "spurious",
                    f"spurious, of {k}",
                    int((sa & ka).sum()),
                    int(ka.sum()),
                    int((sb & kb).sum()),
                    int(kb.sum()),
                )
            )
    return out


def _gaps(r: pd.DataFrame) -> pd.DataFrame:
    t = r[(r["kind"] == "tlp") & r["since_last_send_ns"].notna()]
    return pd.DataFrame(
        {
            "gap": t["since_last_send_ns"].astype(float) / 1e6,
            "pto": pd.to_numeric(t["expected_pto_ns"], errors="coerce") / 1e6,
        }
    )


def _dist(x: pd.Series) -> str:
    x = x.dropna()
    if x.empty:
        return "none"
    return f"median {x.median():.3g} ms, p90 {np.percentile(x, 90):.3g} ms (n={len(x):,})"


def gap_tests(a, b) -> list[Test]:
    """Probe gaps, and gaps over their expected PTO (1 = on time), compared as
    distributions."""
    ga, gb = _gaps(a.retransmits), _gaps(b.retransmits)
    if ga.empty and gb.empty:
        return []
    both = len(ga) and len(gb)
    out = [
        Test(
            "probe gap (TLP time since the last send)",
            "gaps",
            _dist(ga["gap"]),
            _dist(gb["gap"]),
            stats.mann_whitney(ga["gap"], gb["gap"]) if both else None,
            "Mann-Whitney U" if both else "",
        )
    ]
    ra, rb = (ga["gap"] / ga["pto"]).dropna(), (gb["gap"] / gb["pto"]).dropna()
    if len(ra) and len(rb):
        out.append(
            Test(
                "probe gap / expected PTO",
                "gaps",
                f"median {ra.median():.2f} (n={len(ra):,})",
                f"median {rb.median():.2f} (n={len(rb):,})",
                stats.mann_whitney(ra, rb),
                "Mann-Whitney U",
            )
        )
    return out


def peer_table(a) -> pd.DataFrame:
    """Per peer (the receiver of a data flow): data segments sent and retransmissions."""
    f = a.flows
    f = f[f["flow_id"] >= 0] if (f["flow_id"] >= 0).any() else f
    cols = {"retransmissions": "sum"}
    if "n_data" in f:
        cols["n_data"] = "sum"
    g = f.groupby("daddr").agg(cols)
    if "n_data" in g:
        g = g[g["n_data"] > 0]
    return g


def peer_tests(a, b) -> list[Test]:
    """Retransmissions per data segment sent, per peer present in both analyses (or the
    count alone, untested, where a side has no capture)."""
    pa, pb = peer_table(a), peer_table(b)
    both = pa.index.intersection(pb.index)
    if not len(both) or "n_data" not in pa or "n_data" not in pb:
        return []
    load = pa.loc[both, "retransmissions"] + pb.loc[both, "retransmissions"]
    load = load[load > 0]
    if len(load) < 2:  # one peer: the same test as the overall rate
        return []
    out = []
    for peer in load.sort_values(ascending=False).index[:MAX_PEERS]:
        out.append(
            _share_test(
                "peers",
                f"to {peer}",
                int(pa.at[peer, "retransmissions"]),
                int(pa.at[peer, "n_data"]),
                int(pb.at[peer, "retransmissions"]),
                int(pb.at[peer, "n_data"]),
            )
        )
    return out


def compare(a, b) -> list[Test]:
    """Every test of the page, Holm-adjusted together (rows with nothing to test are
    shown, not counted)."""
    tests = kind_tests(a, b) + spurious_tests(a, b) + gap_tests(a, b) + peer_tests(a, b)
    tested = [t for t in tests if t.p is not None]
    for t, adj in zip(tested, stats.holm([t.p for t in tested])):
        t.adjusted = adj
    return tests


GROUPS = (
    ("kinds", "Kinds of retransmission"),
    ("spurious", "Spurious shares"),
    ("gaps", "Probe gaps"),
    ("peers", "Retransmissions per data segment sent, per peer"),
)


def _p(p: float | None) -> str:
    if p is None:
        return ""
    return "1" if p >= 0.9995 else f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def table(tests: list[Test], group: str, name_a: str, name_b: str) -> pd.DataFrame:
    rows = [t for t in tests if t.group == group]
    return pd.DataFrame(
        {
            "": [t.what for t in rows],
            name_a: [t.a for t in rows],
            name_b: [t.b for t in rows],
            "test": [t.method for t in rows],
            "p": [_p(t.p) for t in rows],
            "p (Holm)": [_p(t.adjusted) for t in rows],
            "verdict": [
                "changed" if t.changed else "within noise" if t.p is not None else "nothing to test"
                for t in rows
            ],
        }
    )


def headline(tests: list[Test], name_a: str, name_b: str) -> str:
    changed = [t for t in tests if t.changed]
    n = sum(t.p is not None for t in tests)
    if not n:
        return f"Nothing to compare between {name_a} and {name_b}."
    if not changed:
        return (
            f"From {name_a} to {name_b}: no difference beyond noise in {n} "
            f"tests (adjusted p < {ALPHA})."
        )
    parts = [
        f"{t.what}: {t.a} → {t.b} (p = {_p(t.adjusted)} adjusted, {t.method})" for t in changed[:6]
    ]
    more = f"; and {len(changed) - 6} more" if len(changed) > 6 else ""
    return (
        f"From {name_a} to {name_b}, {len(changed)} of {n} tests show a change "
        f"beyond noise: " + "; ".join(parts) + more + "."
    )


METHOD_NOTE = (
    f"Each share is compared with Fisher's exact test when a 2×2 table has an expected "
    f"count below 5, else with the pooled two-proportion z-test; probe gaps with the "
    f"Mann-Whitney U test (normal approximation). The p-values on this page are adjusted "
    f"together with Holm's method; 'changed' means an adjusted p-value below {ALPHA}. "
    "Retransmissions of one flow are not independent events (one loss episode resends "
    "several segments), so treat a p-value near the threshold as a hint, not a proof."
)
