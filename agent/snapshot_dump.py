"""Snapshot dumps: task snapshot events on a signal or every N seconds, and leak growth.

Owns the signal handler, the interval thread and the per-site growth history. The
handler only queues a request; snapshots are taken and written in the reporter thread.
"""

from __future__ import annotations

import collections
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Optional, Union

from .config import Settings
from .notices import warn_once
from .reporter import Reporter
from .sinks.base import Sink
from .snapshot import Snapshot, loops_to_list, site_to_dict

GROWTH_RUNS = 3
"""A site is "growing" when its live count rose in each of this many snapshots in a row."""

_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]


class GrowthTracker:
    """Remembers the last few counts per site and names the ones that keep rising."""

    def __init__(self, runs: int = GROWTH_RUNS) -> None:
        self._runs = runs
        self._history: collections.deque[dict[tuple[str, int, str], int]] = collections.deque(
            maxlen=runs + 1
        )

    def update(self, snapshot: Snapshot) -> list[dict[str, Any]]:
        """Add ``snapshot``; return the sites that grew in each of the last ``runs``."""
        self._history.append({site.key: site.count for site in snapshot.sites})
        if len(self._history) <= self._runs:
            return []
        growing = []
        for site in snapshot.sites:
            counts = [past.get(site.key, 0) for past in self._history]
            if all(counts[i] < counts[i + 1] for i in range(len(counts) - 1)):
                growing.append(
                    {
                        "creation_file": site.creation_file,
                        "creation_line": site.creation_line,
                        "creation_function": site.creation_function,
                        "counts": counts,
                    }
                )
        return growing


class SnapshotDumper:
    """Writes ``asyncio.tasks.snapshot`` events when asked by signal or timer."""

    def __init__(
        self,
        settings: Settings,
        reporter: Reporter,
        sink: Sink,
        take: Callable[[], Snapshot],
        after_dump: Optional[Callable[[], None]] = None,
    ) -> None:
        self._signal_name = settings.dump_signal
        self._interval = settings.snapshot_interval
        self._reporter = reporter
        self._sink = sink
        self._take = take
        self._after_dump = after_dump  # e.g. the stuck-task check, after each snapshot
        self._growth = GrowthTracker()
        self._requested = False
        self._previous: _Handler = None
        self._signum: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- application side ------------------------------------------------------

    def install_signal_handler(self) -> None:
        """Install the signal handler, if the settings ask for one (at install)."""
        if self._signal_name:
            self._install_handler()

    def start_timer(self) -> None:
        """Start the interval timer, if the settings ask for one (once asyncio is
        imported: a program that never imports asyncio gets no snapshot events)."""
        if self._interval > 0 and self._thread is None and not self._stop.is_set():
            self._start_timer()

    def stop(self) -> None:
        """Restore the previous signal handler and stop the timer."""
        self._stop.set()
        signum = self._signum
        if signum is not None and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, self._previous)
            except (ValueError, OSError, TypeError):
                pass
            self._signum = None

    def request(self) -> None:
        """Ask for one snapshot event; safe in a signal handler (one queue ``put``)."""
        if self._requested:
            return  # one is already on its way: never pile them up
        self._requested = True
        self._reporter.call_soon(self._dump)

    def _install_handler(self) -> None:
        name = self._signal_name
        if threading.current_thread() is not threading.main_thread():
            warn_once(
                "ASYNCIO_AGENT_DUMP_SIGNAL",
                f"ASYNCIO_AGENT_DUMP_SIGNAL={name}: the agent was installed outside the "
                "main thread, where Python cannot set signal handlers; no signal dumps",
            )
            return
        try:
            signum = int(getattr(signal, name))
            self._previous = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)
        except (ValueError, OSError, TypeError, AttributeError) as exc:
            warn_once(
                "ASYNCIO_AGENT_DUMP_SIGNAL",
                f"ASYNCIO_AGENT_DUMP_SIGNAL={name} cannot be handled ({exc}); no signal dumps",
            )
            return
        self._signum = signum

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        # Runs in the main thread between two bytecodes: queue, nothing more.
        self.request()
        previous = self._previous
        if callable(previous):
            previous(signum, frame)

    def _start_timer(self) -> None:
        self._stop = threading.Event()
        thread = threading.Thread(target=self._tick, name="asyncio-agent-snapshots", daemon=True)
        self._thread = thread
        thread.start()

    def _tick(self) -> None:
        stop = self._stop
        while not stop.wait(self._interval):
            self.request()

    def after_fork_in_child(self) -> None:
        """In a forked child: its own growth history, and its own timer if one ran."""
        self._requested = False
        self._growth = GrowthTracker()  # another process: its own history
        if self._thread is not None and not self._stop.is_set():
            self._start_timer()

    # -- reporter thread -------------------------------------------------------

    def _dump(self) -> None:
        self._requested = False
        snapshot = self._take()
        growing = self._growth.update(snapshot)
        fields = {
            "total": snapshot.total,
            "source": snapshot.source,
            "tasks": "all" if snapshot.complete else "pending only",
            "sites": [site_to_dict(site) for site in snapshot.sites],
            "never_awaited": [dict(entry) for entry in snapshot.never_awaited],
            "loops": loops_to_list(snapshot.loops),
            "pid": snapshot.pid,
            "_timestamp": snapshot.timestamp,
        }
        self._sink.emit_snapshot(fields, growing)
        if self._after_dump is not None:
            self._after_dump()
