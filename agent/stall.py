"""The ``Stall`` value: one time an event loop did not run for longer than the threshold.

Built by the watchdog thread (agent.watchdog) from a stack sampled while the loop was
still blocked, and read by sinks in the reporter thread. Holds plain values only: never
the loop, the task, its coroutine or a frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .findings import Finding
from .sites import Site

if TYPE_CHECKING:
    from .sinks.base import Sink

BLOCKED = "asyncio.loop.blocked"
"""The event name, and the stall's kind for the rate limit and its counts."""

# Where the loop thread was when the watchdog looked (the ``blocked_in`` field).
IN_TASK = "task"
"""A task's step was running: the task is named, with its creation site."""
IN_CALLBACK = "callback"
"""A plain callback (``call_soon``, ``call_later``, a protocol method) was running."""
OUTSIDE_CALLBACKS = "outside_callbacks"
"""The loop thread was in the loop's own code (waiting for I/O or timers, or between
callbacks) yet did not run: it could not get the GIL (another thread held it, a garbage
collection ran in another thread) or the process was not scheduled."""
NOT_SCHEDULED = "not_scheduled"
"""The loop thread was ready to run but waited for a CPU most of the time the watchdog
looked (an overloaded machine): its running task or callback is not to blame."""
NOT_SAMPLED = "not_sampled"
"""The watchdog could not look while the loop was blocked: the GIL was held for the
whole stall (a long C call, a collection, another thread) or the process was paused."""


class Stall(Finding):
    """One stall of one loop: how long, where its thread was, and who it was running."""

    kind = BLOCKED
    __slots__ = (
        "at_shutdown",
        "blocked_in",
        "blocking_stack",
        "callback",
        "coroutine",
        "duration_s",
        "loop_thread",
        "pid",
        "site",
        "span",
        "task_name",
        "threshold_s",
        "timestamp",
    )

    def write_to(self, sink: Sink) -> None:
        """Hand this stall to ``sink.emit_blocked``."""
        sink.emit_blocked(self)

    def __init__(
        self,
        *,
        duration_s: float,
        threshold_s: float,
        blocked_in: str,
        blocking_stack: tuple[str, ...],
        task_name: Optional[str],
        coroutine: Optional[str],
        site: Optional[Site],
        callback: Optional[str],
        loop_thread: str,
        pid: int,
        timestamp: float,
        span: object = None,
    ) -> None:
        self.duration_s = duration_s
        """From the moment the loop should have run its heartbeat to the moment it did."""
        self.threshold_s = threshold_s
        self.blocked_in = blocked_in
        self.blocking_stack = blocking_stack
        """``"file:line in function"`` of the loop thread while blocked, outermost first."""
        self.task_name = task_name
        self.coroutine = coroutine
        self.site = site
        """The running task's creation site (IN_TASK only; None if it has no record)."""
        self.callback = callback
        """The running callback's qualified name (IN_CALLBACK only)."""
        self.loop_thread = loop_thread
        self.pid = pid
        self.timestamp = timestamp
        """``time.time()`` when the stall ended."""
        self.span = span
        """What the span probe kept at the task's creation (ids only), or None."""
        self.at_shutdown = False  # read by the rate limit's counts, like a Report's

    def __repr__(self) -> str:
        who = self.coroutine if self.blocked_in == IN_TASK else self.callback
        return f"Stall({self.duration_s:.3f}s, {self.blocked_in}, {who!r})"
