"""Findings: the values other than task-finalizer reports that go through the reporter.

Owns the event kinds ``asyncio.coroutine.never_awaited``, ``asyncio.task.stuck`` and
``asyncio.task.left_pending`` and the plain values that carry them. A finding holds
plain values only (strings, ints, tuples of them): never a task, a coroutine, a frame or
a context. Each kind is written by its own method of the Sink interface
(agent.sinks.base), which :meth:`Finding.write_to` calls: sinks that do not write a kind
inherit a method that does nothing.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, ClassVar, Optional

from .sites import PACKAGE_DIR, Site

if TYPE_CHECKING:
    from .sinks.base import Sink

NEVER_AWAITED = "asyncio.coroutine.never_awaited"
STUCK = "asyncio.task.stuck"
LEFT_PENDING = "asyncio.task.left_pending"

Origin = tuple[tuple[str, int, str], ...]
"""CPython's ``cr_origin``: (file, line, function) of each frame, innermost first."""


class Finding:
    """Base of the values that sinks write through a method of their own."""

    __slots__ = ()
    kind: ClassVar[str]
    coroutine: Optional[str]

    def write_to(self, sink: Sink) -> None:
        """Hand this finding to ``sink``'s method for its kind."""
        raise NotImplementedError


class NeverAwaited(Finding):
    """A coroutine CPython warned about: finalized without ever having started."""

    kind = NEVER_AWAITED
    __slots__ = (
        "at_shutdown",
        "collected",
        "coroutine",
        "garbage_collected",
        "origin",
        "pid",
        "site",
        "span",
        "thread",
        "timestamp",
    )

    def write_to(self, sink: Sink) -> None:
        """Hand this finding to ``sink.emit_never_awaited``."""
        sink.emit_never_awaited(self)

    def __init__(
        self,
        *,
        coroutine: Optional[str],
        origin: Optional[Origin],
        site: Optional[Site],
        collected: Optional[tuple[str, int, str]],
        garbage_collected: bool,
        at_shutdown: bool,
        timestamp: float,
        pid: int,
        thread: str,
        span: object = None,
    ) -> None:
        self.coroutine = coroutine
        self.origin = origin
        """Where it was created (when origin tracking was on), innermost frame first."""
        self.site = site
        """The innermost origin frame as an interned Site (rate limit and counts)."""
        self.collected = collected
        """(file, line, function) running when it was finalized: where CPython's
        warning points."""
        self.garbage_collected = garbage_collected
        """True when the cyclic garbage collector finalized it (not its last reference
        going away)."""
        self.at_shutdown = at_shutdown
        self.timestamp = timestamp
        self.pid = pid
        self.thread = thread
        self.span = span
        """The OpenTelemetry span current where it was created, packed (see
        asyncio_agent.tracing), when that is known; else None."""

    def __repr__(self) -> str:
        return f"NeverAwaited({self.coroutine!r}, site={self.site!r})"


class StuckTask(Finding):
    """A task pending far longer than its siblings from the same creation site."""

    kind = STUCK
    __slots__ = (
        "also_stuck",
        "awaiting",
        "coroutine",
        "pid",
        "siblings",
        "siblings_median_age_s",
        "site",
        "span",
        "task_age_s",
        "task_name",
        "thread",
        "timestamp",
    )

    def write_to(self, sink: Sink) -> None:
        """Hand this finding to ``sink.emit_stuck``."""
        sink.emit_stuck(self)

    def __init__(
        self,
        *,
        task_name: Optional[str],
        coroutine: Optional[str],
        site: Optional[Site],
        task_age_s: float,
        awaiting: tuple[str, ...],
        siblings: int,
        siblings_median_age_s: float,
        also_stuck: int,
        timestamp: float,
        pid: int,
        thread: Optional[str],
        span: object = None,
    ) -> None:
        self.task_name = task_name
        self.coroutine = coroutine
        self.site = site
        self.task_age_s = task_age_s
        self.awaiting = awaiting
        self.siblings = siblings
        """Other pending tasks of the same site it was compared with."""
        self.siblings_median_age_s = siblings_median_age_s
        self.also_stuck = also_stuck
        """Other tasks of the same site found stuck in the same check (not written on
        their own: one event per site per check)."""
        self.timestamp = timestamp
        self.pid = pid
        self.thread = thread
        self.span = span

    def __repr__(self) -> str:
        return f"StuckTask({self.task_name!r}, site={self.site!r}, age={self.task_age_s:.1f})"


class LeftPending(Finding):
    """A task a test created and left behind: pending at the test's teardown, or
    cancelled only by its loop's shutdown (``asyncio.run``, ``Runner.close``)."""

    kind = LEFT_PENDING
    __slots__ = ("awaiting", "coroutine", "how", "site", "task_age_s", "task_name")

    STILL_PENDING: ClassVar[str] = "still pending at teardown"
    CANCELLED_AT_SHUTDOWN: ClassVar[str] = "cancelled only by its loop's shutdown"

    def write_to(self, sink: Sink) -> None:
        """Hand this finding to ``sink.emit_left_pending``."""
        sink.emit_left_pending(self)

    def __init__(
        self,
        *,
        task_name: Optional[str],
        coroutine: Optional[str],
        site: Optional[Site],
        task_age_s: Optional[float],
        awaiting: tuple[str, ...],
        how: str,
    ) -> None:
        self.task_name = task_name
        self.coroutine = coroutine
        self.site = site
        self.task_age_s = task_age_s
        self.awaiting = awaiting
        self.how = how

    def __repr__(self) -> str:
        return f"LeftPending({self.task_name!r}, {self.how})"


def _internal_dirs() -> tuple[str, ...]:
    # Read from sys.modules, never imported: asyncio is there whenever a loop ran.
    dirs = [PACKAGE_DIR]
    asyncio = sys.modules.get("asyncio")
    path = getattr(asyncio, "__file__", None)
    if isinstance(path, str):
        dirs.append(os.path.dirname(path) + os.sep)
    return tuple(dirs)


def origin_site(origin: Optional[Origin]) -> Optional[tuple[str, int, str, tuple[str, ...]]]:
    """(file, line, function, stack) of where a coroutine was created, from its origin.

    The site is the innermost frame outside asyncio and the agent (the innermost frame
    if all are inside); the stack is ``"file:line in function"`` strings, outermost
    first, without asyncio's and the agent's frames, the site last. Called in the
    reporter thread (never in a finalizer).
    """
    if not origin:
        return None
    internal = _internal_dirs()
    outside = [frame for frame in origin if not frame[0].startswith(internal)]
    site = outside[0] if outside else origin[0]
    stack = [f"{f}:{line} in {name}" for f, line, name in reversed(outside or origin[:1])]
    return site[0], site[1], site[2], tuple(stack)
