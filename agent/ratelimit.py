"""Per-site rate limiting of reports, and the count of every report it holds back.

Owns two things. :class:`RateLimiter` decides, inside the finalizer and from what is
cheap (the report's kind and creation site), whether a report is built and written or
only counted: a flood of lost tasks from one line then costs a clock read and a dict
update per task, not a traceback each. It takes no lock: two threads deciding at once
may let a report or two more through than the limit, never lose one from the counts.
:class:`SuppressedCounts` adds up, in the reporter thread, what was held back, so that
the events written plus the counts said equal the reports CPython made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Optional

from .report import Suppressed
from .sites import Site

SUPPRESSED_EVENT = "asyncio.agent.reports_suppressed"

WINDOW_S = 1.0
"""The rate limit counts reports per site and kind in windows of this many seconds."""


class RateLimiter:
    """Lets at most ``per_second`` reports of one kind from one site through per second.

    ``per_second`` of 0 lets everything through. Keys are (site, kind): Site objects are
    made once per call site and never freed, and their number is capped
    (sites.MAX_SITES), which caps the table.
    """

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = per_second
        self._clock = clock
        # key -> [window start, reports seen in it]
        self._windows: dict[Hashable, list[float]] = {}

    def admit(self, key: Hashable) -> bool:
        """True to build and write the report; False to count it only. Finalizer-safe."""
        limit = self.limit
        if limit <= 0:
            return True
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= WINDOW_S:
            self._windows[key] = [now, 1.0]
            return True
        window[1] += 1.0
        return window[1] <= limit


SuppressedKey = tuple[Optional[Site], str, bool]
"""(creation site, event kind, at shutdown)."""


class SuppressedCounts:
    """Reports held back by the rate limit, counted per site, kind and shutdown flag.

    Used in the reporter thread only. :meth:`take` hands the counts out at most once a
    second (unless forced: flush, exit, idle), so a flood gives a few summaries.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._counts: dict[SuppressedKey, int] = {}
        self._last_taken = clock()

    def add(self, token: Suppressed) -> None:
        """Count one held-back report."""
        key = (token.site, token.kind, token.at_shutdown)
        self._counts[key] = self._counts.get(key, 0) + 1

    @property
    def pending(self) -> bool:
        """Whether counts are waiting to be said."""
        return bool(self._counts)

    def take(self, force: bool = False) -> list[tuple[SuppressedKey, int]]:
        """The counts gathered since last time (empty within a second of it, unless
        ``force``)."""
        if not self._counts:
            return []
        now = self._clock()
        if not force and now - self._last_taken < WINDOW_S:
            return []
        self._last_taken = now
        taken, self._counts = self._counts, {}
        return list(taken.items())
