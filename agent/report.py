"""The ``Report`` value: one anomaly CPython's finalizer logged for one task.

Built inside a finalizer and read by sinks in the reporter thread. Holds plain values
only: never the task, its coroutine, its frames or its context. ``Suppressed`` is what
the finalizer queues instead when the rate limit holds the report back: only what the
counts need.
"""

from __future__ import annotations

from typing import Optional

from .exception_summary import ExceptionSummary
from .sites import Site

DESTROYED_PENDING = "asyncio.task.destroyed_pending"
EXCEPTION_UNRETRIEVED = "asyncio.task.exception_unretrieved"
KINDS = (DESTROYED_PENDING, EXCEPTION_UNRETRIEVED)


class Report:
    """A task that was destroyed while pending, or died with an exception nobody read."""

    __slots__ = (
        "at_shutdown",
        "coroutine",
        "exception_message",
        "exception_summary",
        "exception_type",
        "kind",
        "pid",
        "site",
        "span",
        "task_age_s",
        "task_name",
        "thread",
        "timestamp",
    )

    def __init__(
        self,
        *,
        kind: str,
        task_name: Optional[str],
        coroutine: Optional[str],
        site: Optional[Site],
        task_age_s: Optional[float],
        at_shutdown: bool,
        exception_type: Optional[str],
        exception_message: Optional[str],
        exception_summary: Optional[ExceptionSummary],
        timestamp: float,
        pid: int,
        thread: str,
        span: object = None,
    ) -> None:
        self.kind = kind
        self.task_name = task_name
        self.coroutine = coroutine
        self.site = site
        self.task_age_s = task_age_s
        self.at_shutdown = at_shutdown
        self.exception_type = exception_type
        self.exception_message = exception_message
        # Frame summaries without frames or locals; source lines are read later,
        # in the reporter thread, never in the finalizer.
        self.exception_summary = exception_summary
        self.timestamp = timestamp
        self.pid = pid
        self.thread = thread
        # What a tracing integration's span probe kept at task creation (ids only).
        self.span = span

    def traceback_text(self) -> Optional[str]:
        """The exception's formatted traceback, as CPython would print it."""
        summary = self.exception_summary
        if summary is None:
            return None
        try:
            return summary.format()
        except Exception:
            # Source lines need linecache, which fails during interpreter teardown.
            lines = ["Traceback (most recent call last):\n"]
            lines += [
                f'  File "{f.filename}", line {f.lineno}, in {f.name}\n' for f in summary.stack
            ]
            lines.append(f"{self.exception_type}: {self.exception_message}\n")
            return "".join(lines)

    def __repr__(self) -> str:
        return f"Report({self.kind}, task={self.task_name!r}, site={self.site!r})"


class Suppressed:
    """A report the rate limit held back: counted, never written on its own."""

    __slots__ = ("at_shutdown", "coroutine", "kind", "site")

    def __init__(
        self, kind: str, site: Optional[Site], coroutine: Optional[str], at_shutdown: bool
    ) -> None:
        self.kind = kind
        self.site = site
        self.coroutine = coroutine
        self.at_shutdown = at_shutdown

    def __repr__(self) -> str:
        return f"Suppressed({self.kind}, site={self.site!r})"
