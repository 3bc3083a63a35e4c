"""The loop side of blocking detection: a heartbeat timer on every running loop.

Owns :class:`Beat`, the timer itself, and the fallback way of learning that a loop
runs: a ``run_forever`` wrapper, for loop classes that never tell asyncio they run (a
uvloop imported before the agent was installed, other loop implementations). Every
other loop is seen through asyncio's own "this loop runs in this thread now" call
(agent.interp.running.RunningLoopHook), which leaves no frame of ours on the loop's stack
(debug mode's creation tracebacks and every traceback through ``run_forever`` stay
exactly as without the agent). A beat lives exactly as long as one run of its loop:
nothing is scheduled on a loop that does not run, and a task's creation pays nothing.
Runs in the loop's thread: a tick is one clock read, one comparison and one
``call_later``; it never blocks and never raises into the loop. It only notes that a
stall ended (with its thread's CPU times, one small /proc read); the watchdog thread
does the rest.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from .interp.running import caller_depth
from .threadstat import cpu_times

_monotonic = time.monotonic
_WRAPPER_MARK = "__asyncio_agent_wrapper__"
_MISSING = object()

# Ticks run in a context of their own: never a copy of the application's (which could
# keep a request's context variables alive, or show our timer inside its traces).
_CONTEXT = contextvars.Context()

StallEnded = Callable[["Beat", float, float, Optional[tuple[float, float]]], None]
"""``(beat, due, ended, cpu)``: the loop ran its heartbeat ``ended - due`` seconds late;
``cpu`` is its thread's (seconds on a CPU, seconds waiting for one) then, if known."""


class Beat:
    """The heartbeat of one loop during one ``run_forever``.

    ``due`` is when the next tick should run (``time.monotonic()``); the watchdog
    thread reads it without a lock (one attribute read) and writes ``sample``. The loop
    thread writes everything else.
    """

    __slots__ = (
        "cpu_mark",
        "due",
        "handle",
        "interval",
        "joined",
        "loop",
        "native_id",
        "on_stall_end",
        "outer_depth",
        "running",
        "sample",
        "thread_id",
        "thread_name",
        "threshold",
    )

    def __init__(
        self,
        loop: Any,
        interval: float,
        threshold: float,
        on_stall_end: StallEnded,
        outer_depth: int = 0,
        *,
        joined: bool = False,
    ) -> None:
        self.loop = loop
        self.outer_depth = outer_depth
        """Frames of the loop's thread outside the loop (0: not known): in a sampled
        stack, the frames inside them are the loop's and its callbacks'."""
        self.interval = interval
        self.threshold = threshold
        self.on_stall_end = on_stall_end
        self.joined = joined
        """Started on a loop that was already running (install() inside a loop): no
        ``run_forever`` wrapper will stop it, the watchdog drops it once the loop stops."""
        self.thread_id = threading.get_ident()
        self.native_id = threading.get_native_id()
        self.thread_name = threading.current_thread().name
        self.running = True
        self.sample: Any = None  # the watchdog's, see agent.watchdog
        self.cpu_mark: Any = None  # the watchdog's: CPU times at its last look
        self.due = _monotonic() + interval
        self.handle: Any = loop.call_later(interval, self._tick, context=_CONTEXT)

    def _tick(self) -> None:
        if not self.running:
            return
        now = _monotonic()
        due = self.due
        if now - due > self.threshold:  # rare: one /proc read, then the watchdog's turn
            self.on_stall_end(self, due, now, cpu_times(self.native_id))
        self.due = now + self.interval
        try:
            self.handle = self.loop.call_later(self.interval, self._tick, context=_CONTEXT)
        except Exception:  # the loop is closing: no more beats
            self.running = False

    def stop(self) -> None:
        """The loop stops (loop thread): a stall that ends with it ends here."""
        if not self.running:
            return
        self.running = False
        now = _monotonic()
        due = self.due
        if now - due > self.threshold:
            self.on_stall_end(self, due, now, cpu_times(self.native_id))
        handle, self.handle = self.handle, None
        if handle is not None:
            try:
                handle.cancel()
            except Exception:
                pass


LoopStarting = Callable[[Any, int], Optional[Beat]]
LoopStopped = Callable[[Beat], None]


def _make_run_forever(
    original: Callable[[Any], Any], starting: LoopStarting, stopped: LoopStopped
) -> Callable[[Any], Any]:
    def run_forever(self: Any) -> Any:
        beat = starting(self, caller_depth())  # this frame and those outside it
        try:
            return original(self)
        finally:
            if beat is not None:
                stopped(beat)

    return run_forever


TICK_CODE = Beat._tick.__code__
"""The code of a tick: a stack sampled inside it was taken after the stall ended."""


class RunForeverPatch:
    """Wraps ``run_forever`` on loop classes and remembers how to undo it.

    The fallback only: its frame stays on the loop's stack while the loop runs (it
    shows in tracebacks through ``run_forever`` and in debug mode's creation stacks).
    """

    def __init__(self, starting: LoopStarting, stopped: LoopStopped) -> None:
        self._starting = starting
        self._stopped = stopped
        self._undo: dict[type, Any] = {}
        self.patched: list[str] = []
        """Names of the classes patched, for people (``doctor``, tests)."""

    def patch_class(self, cls: type) -> bool:
        """Wrap ``cls.run_forever``; False if it has none or it cannot be replaced."""
        original = getattr(cls, "run_forever", None)
        if original is None:
            return False
        if getattr(original, _WRAPPER_MARK, False):
            return True
        wrapper = functools.wraps(original)(
            _make_run_forever(original, self._starting, self._stopped)
        )
        setattr(wrapper, _WRAPPER_MARK, True)
        before = cls.__dict__.get("run_forever", _MISSING)
        try:
            cls.run_forever = wrapper  # type: ignore[attr-defined]
        except (TypeError, AttributeError):
            return False
        self._undo.setdefault(cls, before)
        self.patched.append(f"{cls.__module__}.{cls.__qualname__}.run_forever")
        return True

    def unpatch_all(self) -> None:
        """Put every ``run_forever`` back (loops running now keep their wrapper frame)."""
        for cls, before in reversed(list(self._undo.items())):
            try:
                if before is _MISSING:
                    delattr(cls, "run_forever")
                else:
                    cls.run_forever = before
            except (TypeError, AttributeError):
                pass
        self._undo.clear()
        self.patched.clear()
