"""Helpers for the programs the lab runs inside its namespaces (delay line, traffic)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent exits (prctl(2)).

    ``ip netns exec`` execs the command in place, so the parent is the Python process that
    owns the ``Lab``: if that one is SIGKILLed, its children go with it instead of running
    on in a namespace nobody will delete. (The death signal follows the parent *thread*:
    create labs from a thread that outlives them.)
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        sys.exit(0)
