"""The engine, chosen by the caller (Dask's own style): an existing cluster by its
scheduler's address, or a LocalCluster sized to this machine (no servers beyond what
LocalCluster starts in-process and as worker processes, all gone when it closes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Callable

from retranscope.errors import BadInput, EnvironmentProblem

#: Opens a Dask client when (and only when) there is work: ``with engine() as client``.
Engine = Callable[[], AbstractContextManager[Any]]


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise EnvironmentProblem(
            "Dask distributed is not installed: run ./setup.sh, or pip install 'retranscope[fleet]'"
        ) from exc
    return distributed


def local_workers(workers: int | None) -> int:
    """One single-threaded worker process per core: the analysis is CPU-bound Python,
    so threads would only queue on the GIL."""
    n = (
        workers
        if workers is not None
        else (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    )
    if n < 1:
        raise BadInput(f"--workers {n}: give at least 1")
    return n


@contextmanager
def local(workers: int | None = None, processes: bool = True) -> Iterator[object]:
    """A LocalCluster on this machine; ``processes=False`` keeps the workers as threads of
    this process (tests, tiny fleets)."""
    distributed = _distributed()
    n = local_workers(workers)
    with (
        distributed.LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=processes,
            # Worker processes talk over TCP on localhost only (in-process ones need no
            # network). The scheduler always serves a few HTTP routes (health, metrics): on
            # a free localhost port, never a fixed one another program may hold.
            **({"host": "127.0.0.1"} if processes else {}),
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@contextmanager
def remote(address: str, timeout_s: float = 10.0) -> Iterator[object]:
    """A client of the cluster whose scheduler listens at ``address`` (tcp://HOST:8786)."""
    distributed = _distributed()
    try:
        client = distributed.Client(address, timeout=timeout_s)
    except (OSError, TimeoutError) as exc:
        raise EnvironmentProblem(
            f"no Dask scheduler answers at {address} ({exc}): start one "
            "(`dask scheduler`, then `dask worker ADDRESS`), or leave "
            "out --scheduler to use this machine"
        ) from exc
    with client:
        if not client.scheduler_info().get("workers"):
            try:
                client.wait_for_workers(1, timeout=timeout_s)
            except TimeoutError as exc:
                raise EnvironmentProblem(
                    f"the scheduler at {address} has no workers: start "
                    f"some with `dask worker {address}`"
                ) from exc
        yield client


def as_completed(futures):
    return _distributed().as_completed(futures)
