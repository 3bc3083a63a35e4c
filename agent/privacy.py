"""Privacy: redacting exception messages and shortening file paths in reports.

Owns what of an exception's text and of the host's file layout may leave the process.
Never reads locals or arguments; ``redact`` runs in the finalizer, so it only sets
attributes and allocates nothing large.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Optional

from .report import Report


def _redact_summary(summary: Any, depth: int = 0) -> None:
    # TracebackException keeps str(exc) in ``_str`` (3.10-3.13) and, from 3.11, the
    # exception's notes; chained and grouped exceptions carry their own. Private
    # attributes, so every step is allowed to fail: then the traceback is dropped.
    if summary is None or depth > 64:
        return
    summary._str = ""
    if getattr(summary, "__notes__", None) is not None:
        summary.__notes__ = None
    if getattr(summary, "msg", None) is not None:  # SyntaxError: the message and line
        summary.msg = ""
        summary.text = None
    _redact_summary(getattr(summary, "__cause__", None), depth + 1)
    _redact_summary(getattr(summary, "__context__", None), depth + 1)
    for inner in getattr(summary, "exceptions", None) or ():
        _redact_summary(inner, depth + 1)


def redact(report: Report) -> Report:
    """Replace the exception message (and the traceback's exception lines) by the type."""
    if report.exception_type is None:
        return report
    report.exception_message = report.exception_type
    try:
        _redact_summary(report.exception_summary)
    except Exception:
        report.exception_summary = None
    return report


def redacting(submit: Callable[[Report], None]) -> Callable[[Report], None]:
    """``submit`` that redacts each report first, still inside the finalizer."""

    def submit_redacted(report: Report) -> None:
        submit(redact(report))

    return submit_redacted


class PathRewriter:
    """Makes file paths under ``root`` relative to it (``/srv/app/x.py`` -> ``x.py``)."""

    def __init__(self, root: Optional[str]) -> None:
        self.root = root.rstrip(os.sep) + os.sep if root else None

    def path(self, path: Optional[str]) -> Optional[str]:
        """``path`` relative to the root if it is under it, else unchanged."""
        root = self.root
        if root is None or path is None or not path.startswith(root):
            return path
        return path[len(root) :]

    def stack(self, stack: list[str]) -> list[str]:
        """``"file:line in function"`` entries with their files rewritten."""
        root = self.root
        if root is None:
            return stack
        return [entry[len(root) :] if entry.startswith(root) else entry for entry in stack]

    def traceback(self, text: Optional[str]) -> Optional[str]:
        """A formatted traceback with its ``File "..."`` paths rewritten."""
        root = self.root
        if root is None or text is None:
            return text
        return text.replace(f'File "{root}', 'File "')
