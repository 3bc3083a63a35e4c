"""Per-site rate limiting of reports, keeping a count of every report it holds back.

Owns the decision "write this report now, or count it as suppressed for its site".
Runs in the reporter thread only, never in a finalizer: it reads the clock and keeps dicts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Optional

from .report import Report
from .sites import Site

SUPPRESSED_EVENT = "asyncio.agent.reports_suppressed"

# (site, event kind): Site objects are created once per call site and never freed,
# so identity is the site's key. The number of sites is capped (sites.MAX_SITES),
# which caps both tables below.
_Key = tuple[Optional[Site], str]


class RateLimiter:
    """Lets at most ``per_second`` reports of one kind from one site through per second.

    ``per_second`` of 0 lets everything through. What is held back is counted per site
    and handed out by :meth:`take_suppressed`, so nothing is lost without a trace.
    """

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_second
        self._clock = clock
        self._window_start = clock()
        self._seen: dict[_Key, int] = {}
        self._suppressed: dict[_Key, int] = {}
        self._last_summary = self._window_start

    def allow(self, report: Report) -> bool:
        """True to write ``report``; False if its site is over the limit (then counted)."""
        if self._limit <= 0:
            return True
        now = self._clock()
        if now - self._window_start >= 1.0:
            self._seen.clear()
            self._window_start = now
        key = (report.site, report.kind)
        seen = self._seen.get(key, 0) + 1
        self._seen[key] = seen
        if seen <= self._limit:
            return True
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        return False

    @property
    def pending(self) -> bool:
        """Whether suppressed counts are waiting to be said."""
        return bool(self._suppressed)

    def take_suppressed(self, force: bool = False) -> list[tuple[Optional[Site], str, int]]:
        """The (site, kind, count) held back since last time; at most once a second
        unless ``force`` (flush, exit, idle), so a flood gives a few summaries, not many."""
        if not self._suppressed:
            return []
        now = self._clock()
        if not force and now - self._last_summary < 1.0:
            return []
        self._last_summary = now
        taken = [(site, kind, count) for (site, kind), count in self._suppressed.items()]
        self._suppressed = {}
        return taken
