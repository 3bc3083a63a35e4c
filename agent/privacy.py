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


def redact(report: Report) -> Report:
    """Replace the exception message (and the traceback's exception lines) by the type."""
    if report.exception_type is None:
        return report
    report.exception_message = report.exception_type
    summary = report.exception_summary
    if summary is not None:
        for node in summary.walk():  # the chained and grouped exceptions too
            node.message = ""
            node.notes = None
            if node.syntax is not None:  # a syntax error shows its source line
                node.syntax.msg = ""
                node.syntax.text = None
    return report


def redacting(submit: Callable[[Any], None]) -> Callable[[Any], None]:
    """``submit`` that redacts each report first, still inside the finalizer."""

    def submit_redacted(report: Any) -> None:
        submit(redact(report) if isinstance(report, Report) else report)

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
