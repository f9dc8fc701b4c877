"""`retranscope fleet analyze`: find the runs, decide which need work, run one task per run
on the engine the caller gives, and commit each result to runs.parquet.

Incremental: a run whose row says it was analyzed (ok, or settled as bad input) from the
same inputs (fingerprint) by the same analyzer version is skipped, and the engine is not
even started when nothing needs work. Results are committed every ``checkpoint_s`` and at
the end, also on Ctrl-C or SIGTERM: a killed process loses at most the last interval's
commits, and those runs are analyzed again next time into the same files (fleet/dataset.py).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from retranscope.fleet import engine as engines
from retranscope.fleet.dataset import (
    RUNS_FILE,
    SETTLED,
    read_runs,
    remove_run_files,
    write_runs,
)
from retranscope.fleet.discover import Found, HostPattern, Identity, find_runs, identify
from retranscope.fleet.task import Job, analyze_run, analyzer_version

Say = Callable[[str], None]


@dataclass
class Outcome:
    found: int = 0
    up_to_date: int = 0
    analyzed: int = 0
    duplicates: int = 0
    #: runs under ROOT whose row is not ok now (this invocation's or settled earlier)
    failed: list[dict] = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass
class _Plan:
    rows: dict[str, dict]  # run_id -> runs.parquet row
    jobs: list[tuple[Job, Found]]
    current: list[str]  # run_ids of the runs found under root, in path order
    outcome: Outcome
    dirty: bool = False
    copies: dict[str, list[str]] = field(default_factory=dict)


def analyze_fleet(
    root: Path,
    dataset: Path,
    engine: engines.Engine,
    *,
    force: bool = False,
    host_from: HostPattern | None = None,
    say: Say = lambda _l: None,
    checkpoint_s: float = 2.0,
) -> Outcome:
    """Analyze every run under ``root`` that needs it into ``dataset``. ``engine()`` is a
    context manager yielding a Dask client (fleet/engine.py), entered only if there is work."""
    t0 = time.perf_counter()
    dataset = dataset.resolve()
    plan = _plan(root, dataset, force, host_from)
    if plan.jobs:
        say(f"fleet: {len(plan.jobs)} of {plan.outcome.found} runs to analyze")
        with engine() as client:
            _execute(client, plan, dataset, say, checkpoint_s)
    elif plan.dirty:
        write_runs(dataset, list(plan.rows.values()))
    out = plan.outcome
    out.failed = [
        plan.rows[r] for r in dict.fromkeys(plan.current) if plan.rows[r].get("status") != "ok"
    ]
    out.elapsed_s = time.perf_counter() - t0
    return out


def _settled(prev: dict | None, found: Found, version: str, host: str | None) -> bool:
    return bool(
        prev
        and prev.get("status") in SETTLED
        and prev.get("task_s") is not None  # reached a task: not an identity problem
        and prev.get("fingerprint") == found.fingerprint
        and prev.get("analyzer_version") == version
        and (host is None or prev.get("host") == host)
    )


def _plan(root: Path, dataset: Path, force: bool, host_from: HostPattern | None) -> _Plan:
    found = find_runs(root, skip=dataset)
    previous = read_runs(dataset)
    version = analyzer_version()
    by_location = {(r["root"], r["path"]): r for r in previous}
    plan = _Plan(
        dirty=not (dataset / RUNS_FILE).exists(),  # a new dataset exists even if ROOT is empty
        rows={r["run_id"]: r for r in previous},
        jobs=[],
        current=[],
        outcome=Outcome(found=len(found)),
    )
    claimed: dict[str, str] = {}  # run_id -> the path analyzed for it this time
    copies: dict[str, list[str]] = {}  # run_id -> other paths holding the same recording
    # Places known from before first: a copy of a run that appears elsewhere later is the
    # duplicate, and a run keeps its path. Among new places, the first by path wins.
    found.sort(key=lambda f: ((f.root, f.path) not in by_location, f.path))
    for f in found:
        host = None if f.run_json or host_from is None else host_from.host(f.path)
        prev = by_location.get((f.root, f.path))
        if (
            prev is not None
            and not force
            and _settled(prev, f, version, host)
            and prev["run_id"] not in claimed
        ):
            run_id = prev["run_id"]
            plan.outcome.up_to_date += 1
        else:
            ident = identify(f, host_from)
            run_id = ident.run_id
            if run_id in claimed:
                copies.setdefault(run_id, []).append(f.path)
                plan.outcome.duplicates += 1
                continue
            prev = plan.rows.get(run_id)
            plan.dirty = True
            if ident.problem is not None:
                plan.rows[run_id] = _row(
                    f, run_id, ident.host, version, status="bad_input", error=ident.problem
                )
            elif prev is not None and not force and _settled(prev, f, version, ident.host):
                prev.update(root=f.root, path=f.path, capture=f.capture)  # moved, unchanged
                plan.outcome.up_to_date += 1
            else:
                plan.jobs.append((_job(dataset, f, ident), f))
        claimed[run_id] = f.path
        plan.current.append(run_id)
    plan.copies = copies
    for run_id in plan.current:
        row = plan.rows.get(run_id)
        if row is not None and list(row.get("duplicate_paths") or []) != copies.get(run_id, []):
            row["duplicate_paths"] = copies.get(run_id)
            plan.dirty = True
    # Largest first: the long runs start early and the last minutes are not one worker's.
    plan.jobs.sort(key=lambda jf: -jf[1].size_bytes)
    return plan


def _job(dataset: Path, f: Found, ident: Identity) -> Job:
    return Job(
        dataset=str(dataset),
        root=f.root,
        path=f.path,
        run_dir=str(f.abs(f.path)) if f.run_json else None,
        capture=str(f.abs(f.capture)) if f.capture else None,
        run_id=ident.run_id,
        host=ident.host or "",
        started_wall_ns=ident.started_wall_ns,
    )


def _row(f: Found, run_id: str, host: str | None, version: str, **kw) -> dict:
    return dict(
        run_id=run_id,
        host=host,
        root=f.root,
        path=f.path,
        capture=f.capture,
        fingerprint=f.fingerprint,
        analyzer_version=version,
        **kw,
    )


#: Tasks in flight at once: enough to keep any cluster busy, few enough that a fleet of
#: a million runs does not hold a million futures (the client's and scheduler's memory).
WINDOW = 4096


def _execute(client, plan: _Plan, dataset: Path, say: Say, checkpoint_s: float) -> None:
    pending = iter(plan.jobs)
    futures: dict = {}

    def submit() -> object | None:
        job, f = next(pending, (None, None))
        if job is None:
            return None
        key = f"retranscope-fleet-{job.run_id}-{uuid.uuid4().hex[:8]}"
        fut = client.submit(analyze_run, job, key=key, pure=False)
        futures[fut] = (job, f)
        return fut

    first = [fut for fut in (submit() for _ in range(WINDOW)) if fut is not None]
    last = time.monotonic()
    done = 0
    try:
        completed = engines.as_completed(first)
        for fut in completed:
            job, f = futures.pop(fut)
            nxt = submit()
            if nxt is not None:
                completed.add(nxt)
            _commit(plan, dataset, f, _result(fut, job, f))
            done += 1
            row = plan.rows[job.run_id]
            say(
                f"fleet: [{done}/{len(plan.jobs)}] {row['status']} {row.get('host')} "
                f"{row.get('date')} {row['run_id']} {f.path}"
                + (f": {row['error']}" if row.get("error") else "")
            )
            if time.monotonic() - last >= checkpoint_s:
                write_runs(dataset, list(plan.rows.values()))
                last = time.monotonic()
    finally:
        for fut in futures:
            fut.cancel()
        write_runs(dataset, list(plan.rows.values()))
    plan.outcome.analyzed = done


def _result(fut, job: Job, f: Found) -> dict:
    try:
        return fut.result()
    except Exception as exc:  # the engine lost the task (a worker died each time)
        return _row(
            f,
            job.run_id,
            job.host,
            analyzer_version(),
            status="failed",
            error=f"the task was lost: {type(exc).__name__}: {exc}".strip(),
        )


def _commit(plan: _Plan, dataset: Path, f: Found, row: dict) -> None:
    prev = plan.rows.get(row["run_id"])
    row.update(
        capture=f.capture,
        fingerprint=f.fingerprint,
        duplicate_paths=plan.copies.get(row["run_id"]),
    )
    if (
        prev
        and prev.get("status") == "ok"
        and row["status"] == "ok"
        and (prev.get("host"), prev.get("date")) != (row["host"], row["date"])
    ):
        remove_run_files(dataset, prev["host"], prev["date"], row["run_id"])
    plan.rows[row["run_id"]] = row
