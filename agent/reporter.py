"""The reporter: a bounded queue filled by finalizers and a thread that empties it.

Owns ``submit`` (finalizer-safe: no lock, no I/O, never blocks), the writer thread,
``flush``, ``close`` (what the installation runs at exit), drop counting, the counts of
held-back reports, and ``after_fork_in_child``. Writes through the sinks and never
imports; registers no process-wide hook itself (agent.lifecycle does).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Optional, Union

from .findings import Finding
from .notices import warn_once
from .ratelimit import RateLimiter, SuppressedCounts
from .report import Report, Suppressed
from .sinks.base import Sink
from .sites import Site


class _FlushMarker:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _Stop:
    pass


_STOP = _Stop()


class _Wake:
    """Put on the queue when a held-back count arrives and the writer sleeps for good."""


_WAKE = _Wake()

HELD_BACK_PERIOD_S = 0.25
"""How often the writer collects held-back counts while there are any (no wake-up per
held-back report: in a flood, a wake-up per report would cost more than the report)."""


class _Call:
    """A job to run in the writer thread (snapshots: they write through the sinks)."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[[], None]) -> None:
        self.function = function


_Item = Union[Report, Suppressed, Finding, _FlushMarker, _Stop, _Call, _Wake]
Listener = Callable[[Union[Report, Suppressed, Finding]], None]


class Reporter:
    """Moves reports from finalizers to sinks without ever blocking a finalizer."""

    def __init__(
        self, sinks: Sequence[Sink], queue_size: int, limiter: Optional[RateLimiter] = None
    ) -> None:
        self._sinks = list(sinks)
        # The finalizers' rate limit: lifted at exit, when reports are written in place.
        self._limiter = limiter
        # What the rate limit held back (decided in the finalizer), added up here.
        self._suppressed = SuppressedCounts()
        self._capacity = queue_size
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._drop_counter = itertools.count(1)
        self._dropped = 0  # latest value drawn from _drop_counter
        self._dropped_said = 0
        self._thread: Optional[threading.Thread] = None
        # After the exit flush, nothing is left to write reports in the background:
        # the few that arrive while the interpreter shuts down are written in place.
        self._inline = False
        self._closed = False
        # Called with every report in the writer thread (the pytest plugin's way in).
        self._listeners: list[Listener] = []
        # The flush that timed out (a sink stuck writing): later flushes do not wait
        # again until the writer has got past it, so exit never waits twice on it.
        self._late_flush: Optional[_FlushMarker] = None
        # Reports the rate limit held back, waiting to be counted: appended by
        # finalizers (deque.append is atomic), collected by the writer periodically.
        self._held_back: collections.deque[Suppressed] = collections.deque()
        # Producers holding finished reports they have not submitted yet (the loop
        # watchdog): each is asked to submit them at the start of every flush.
        self._before_flush: list[Callable[[], None]] = []
        self._idle = False  # the writer waits with no time-out: a held-back count wakes it

    # -- finalizer side --------------------------------------------------------

    def submit(self, report: Union[Report, Suppressed, Finding]) -> None:
        """Queue ``report``; safe inside ``__del__``. Drops and counts when full."""
        if self._closed:
            return
        if self._inline:
            self._write(report)
            return
        if type(report) is Suppressed:
            held = self._held_back
            if len(held) >= self._capacity:
                self._dropped = next(self._drop_counter)
                return
            held.append(report)
            # Appended first, read second (the writer does the opposite): either the
            # writer sees this count when it decides how long to sleep, or we see it
            # idle and wake it.
            if self._idle:
                self._idle = False
                self._queue.put(_WAKE)
            return
        # SimpleQueue.put is reentrant (documented safe in __del__); qsize takes no lock.
        if self._queue.qsize() >= self._capacity:
            self._dropped = next(self._drop_counter)
            return
        self._queue.put(report)

    # -- application side ------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Also hand every report to ``listener``, and every :class:`Suppressed` count
        (in the writer thread; must not block)."""
        self._listeners = [*self._listeners, listener]

    def add_before_flush(self, submit_pending: Callable[[], None]) -> None:
        """Call ``submit_pending()`` at the start of every flush (in the flushing thread)."""
        self._before_flush = [*self._before_flush, submit_pending]

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        self._listeners = [known for known in self._listeners if known is not listener]

    def call_soon(self, function: Callable[[], None]) -> None:
        """Run ``function`` in the writer thread, after what is queued; safe in a
        signal handler (one reentrant ``put``). Dropped once the exit flush has begun:
        running it in place could re-enter a write that the signal interrupted."""
        if self._closed or self._inline:
            return
        self._queue.put(_Call(function))

    def start(self) -> None:
        """Start the writer thread if it is not running."""
        if self._closed or self._inline:
            return
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        thread = threading.Thread(target=self._run, name="asyncio-agent-reporter", daemon=True)
        self._thread = thread
        thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every report queued so far is written; False on timeout."""
        for submit_pending in self._before_flush:
            with contextlib.suppress(Exception):
                submit_pending()
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            self._drain()
            self._flush_exports()
            return True
        late = self._late_flush
        if late is not None and not late.done.is_set():
            return False  # still stuck where the last flush gave up: do not wait again
        marker = _FlushMarker()
        self._queue.put(marker)
        if marker.done.wait(timeout):
            return True
        self._late_flush = marker
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Flush, stop the thread, and write any later report in place."""
        if self._closed:
            return
        flushed = self.flush(timeout)
        if self._thread is not None:
            # Tasks still alive are destroyed during interpreter teardown, when nothing
            # can be imported any more: sinks get ready to write without importing.
            self._each_sink(lambda sink: sink.prepare())
        self._inline = True
        if self._limiter is not None:
            # From now on each report is written in place, in full: no count held back
            # could be said after the last finalizer of the interpreter's teardown.
            self._limiter.limit = 0
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout if flushed else 0.1)
            if thread.is_alive():
                return  # a sink is stuck: never hang the exiting program on it
        self._drain()
        self._say_dropped()
        self._say_suppressed(force=True)
        # Exporting sinks (OpenTelemetry) push out what they batched, time-bounded;
        # then a sink that could not write says once, at exit, how much it lost.
        self._each_sink(lambda sink: sink.close_exports(timeout))
        self._each_sink(lambda sink: sink.summarize_losses())

    def shutdown(self, timeout: float = 5.0) -> None:
        """Like :meth:`close`, then ignore every later report (used by uninstall)."""
        self.close(timeout)
        self._closed = True

    # -- writer thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._idle = True
            if self._held_back or self._suppressed.pending:
                # Held-back counts are collected every HELD_BACK_PERIOD_S and said
                # within a second even if nothing else comes.
                self._idle = False
                try:
                    item = self._queue.get(timeout=HELD_BACK_PERIOD_S)
                except queue.Empty:
                    self._collect_held_back()
                    self._say_suppressed(force=not self._held_back)
                    continue
            else:
                item = self._queue.get()
            self._idle = False
            if isinstance(item, _Stop):
                return
            self._handle(item)

    def _collect_held_back(self) -> None:
        held = self._held_back
        listeners = self._listeners
        while held:
            token = held.popleft()
            self._suppressed.add(token)
            for listener in listeners:
                with contextlib.suppress(Exception):
                    listener(token)

    def _drain(self) -> None:
        self._collect_held_back()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if not isinstance(item, _Stop):
                self._handle(item)

    def _handle(self, item: _Item) -> None:
        if isinstance(item, _Wake):
            self._collect_held_back()
            return
        if isinstance(item, _FlushMarker):
            self._collect_held_back()
            self._say_dropped()
            self._say_suppressed(force=True)
            self._flush_exports()
            item.done.set()
            return
        if isinstance(item, _Call):
            try:
                item.function()
            except Exception as exc:
                warn_once("reporter:call", f"a background job failed ({type(exc).__name__}: {exc})")
            return
        if isinstance(item, (Report, Finding)):
            for listener in self._listeners:
                with contextlib.suppress(Exception):
                    listener(item)
            self._write(item)
            self._collect_held_back()
            self._say_suppressed(force=False)
        if self._queue.empty():
            self._say_dropped()

    def _write(self, report: Union[Report, Suppressed, Finding]) -> None:
        if isinstance(report, Suppressed):
            # Only in place, at exit, for a report held back just before the limit was
            # lifted: said at once, since nothing runs after the last finalizer.
            site, kind, shutdown = report.site, report.kind, report.at_shutdown
            self._each_sink(lambda sink: sink.emit_suppressed(site, kind, 1, shutdown))
            return
        for sink in self._sinks:
            try:
                if isinstance(report, Finding):
                    report.write_to(sink)  # the Sink method for its kind
                else:
                    sink.emit(report)
            except Exception as exc:  # a broken sink must never reach the application
                if sys.is_finalizing():
                    continue  # modules are being torn down: nothing useful to say
                warn_once(
                    f"sink:{type(sink).__name__}",
                    f"{type(sink).__name__} failed ({type(exc).__name__}: {exc}); "
                    "its reports are being lost",
                )

    def _each_sink(self, call: Callable[[Sink], object]) -> None:
        """``call(sink)`` for every sink; a failure stays with that sink."""
        for sink in self._sinks:
            with contextlib.suppress(Exception):
                call(sink)

    def _flush_exports(self) -> None:
        # Sinks that batch (OpenTelemetry) hand over what they hold; each is time-bounded.
        self._each_sink(lambda sink: sink.flush_exports())

    def _say_suppressed(self, force: bool) -> None:
        for (site, kind, shutdown), count in self._suppressed.take(force):
            self._each_sink(functools.partial(_say_suppressed, site, kind, count, shutdown))

    def _say_dropped(self) -> None:
        dropped = self._dropped
        if dropped <= self._dropped_said:
            return
        count = dropped - self._dropped_said
        self._dropped_said = dropped
        self._each_sink(lambda sink: sink.emit_dropped(count))

    def after_fork_in_child(self) -> None:
        """In a forked child: a new queue and writer; the parent writes what it queued."""
        # The parent still owns and writes what was queued before the fork.
        # threading's own fork handler has already marked our thread stopped, so
        # "was it started" is the question, not "is it alive".
        was_running = self._thread is not None
        self._queue = queue.SimpleQueue()
        self._held_back = collections.deque()
        self._suppressed = SuppressedCounts()
        self._idle = False
        self._dropped_said = self._dropped
        self._thread = None
        if was_running and not self._inline and not self._closed:
            self.start()


def _say_suppressed(
    site: Optional[Site], kind: str, count: int, at_shutdown: bool, sink: Sink
) -> None:
    sink.emit_suppressed(site, kind, count, at_shutdown)
