"""The Sink interface: what every output (events, OpenTelemetry) is told, and when.

Owns the declaration of every method the reporter calls on a sink. Only ``emit`` must be
written by a sink; every other method has a default that does nothing. Sinks are called
from the reporter thread only (or in place during interpreter exit): they may take their
time, but must never import while writing (an import there can re-enter the agent) and
never raise into the reporter (it counts a failure as lost output and says so once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ..report import Report
from ..sites import Site

if TYPE_CHECKING:
    from ..findings import LeftPending, NeverAwaited, StuckTask
    from ..stall import Stall


class Sink:
    """Where finished reports go. Subclasses write :meth:`emit`, and what else they need."""

    def emit(self, report: Report) -> None:
        """Write one report."""
        raise NotImplementedError

    def emit_never_awaited(self, finding: NeverAwaited) -> None:
        """A coroutine CPython warned about: it was never awaited."""

    def emit_stuck(self, finding: StuckTask) -> None:
        """A task pending far longer than its siblings from the same site."""

    def emit_left_pending(self, finding: LeftPending) -> None:
        """A task a test left pending (the pytest plugin writes these itself)."""

    def emit_blocked(self, stall: Stall) -> None:
        """An event loop did not run for longer than the threshold (agent.watchdog)."""

    def emit_dropped(self, count: int) -> None:
        """``count`` reports were dropped because the queue was full."""

    def emit_suppressed(
        self, site: Optional[Site], kind: str, count: int, at_shutdown: bool = False
    ) -> None:
        """``count`` reports of ``kind`` from ``site`` were held back by the rate limit."""

    def emit_snapshot(self, fields: dict[str, Any], growing: list[dict[str, Any]]) -> None:
        """A task snapshot was taken (``fields``), and these sites keep growing."""

    def flush_exports(self) -> bool:
        """Hand what is batched to its destination (time-bounded); False if it could not."""
        return True

    def prepare(self) -> None:
        """The interpreter is about to exit: get ready to write without importing."""

    def close_exports(self, timeout: float) -> None:
        """Exit: push out what is batched and shut down, within ``timeout`` seconds."""

    def summarize_losses(self) -> None:
        """Exit: say once how much output could not be delivered, if any."""
