"""Typed errors. The CLI turns each into one line and an exit code (STYLE.md §6).

Every message says what is wrong *and* what to do; ``exit_code`` is 2 for bad input
(the user can fix the arguments or files) and 1 for a failure of the environment or tool.
"""

from __future__ import annotations


class RetranscopeError(Exception):
    """Base class: ``str(err)`` is the one line shown to the user."""

    exit_code = 1


class BadInput(RetranscopeError):
    """The user's input is unusable: missing file, corrupt capture, wrong schema version."""

    exit_code = 2


class CaptureError(BadInput):
    """A packet capture cannot be read."""


class NotACapture(CaptureError):
    """The file is neither pcap nor pcapng (bad magic), or is empty."""


class TruncatedCapture(CaptureError):
    """The capture ends inside a header before any packet could be read."""


class UnknownLinkType(CaptureError):
    """The capture's link-layer type is not one the reader decodes."""


class SchemaMismatch(BadInput):
    """Parquet written with another schema version, or not by retranscope at all."""


class EnvironmentProblem(RetranscopeError):
    """The machine lacks something the recorder needs: root, bcc, headers, tracefs, BPF."""
