"""Stuck tasks: pending far longer than their siblings from the same creation site.

Owns the definition, the periodic check and the memory of what was reported. A check
reads live tasks (in the reporter thread, like a snapshot) and never keeps one alive
after it returns; it never awaits, cancels or otherwise touches a task.

The definition, at a check at time ``now``: for each creation site S, let P be the
pending tasks created at S whose creation time is known, and ``age(T) = now -
created(T)``. A task T of P is **stuck** when

1. ``age(T) >= ASYNCIO_AGENT_STUCK_S`` (the setting; off by default), and
2. S has at least one other pending task (its *siblings*: P without T), and
3. ``age(T) >= STUCK_RATIO x median(age of each sibling)``, with STUCK_RATIO = 10.

So a lone long-lived task (a server's accept loop, a worker started once) is never
stuck: it has no sibling to be compared with; and a site whose tasks all live long (a
connection handler per open connection) has a long median. A whole site that hangs
together is not "far longer than its siblings" either: the snapshot's growth report
is the tool for that. Each stuck task is reported once; per site and check one event
is written (for the oldest newly stuck task, with ``also_stuck`` counting the others):
that is the rate limit by site. Cost: one pass over the live tasks per check (every
STUCK_S / 2 seconds, at least every 0.1 s and at most every 60 s), and a sort of the
ages of the sites that have a candidate.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from .findings import StuckTask
from .interp.tasks import await_chain, coroutine_name, task_name
from .interp.unfinished import loop_thread_name
from .records import record_of
from .sites import SPAN_ATTR, Site, SiteRecorder

STUCK_RATIO = 10.0
"""How many times the median age of its siblings a stuck task has been pending."""


def check_interval(stuck_s: float) -> float:
    """Seconds between two periodic checks for a threshold of ``stuck_s``."""
    return max(0.1, min(60.0, stuck_s / 2))


def median_without(ages: list[float], index: int) -> float:
    """The median of sorted ``ages`` with the element at ``index`` left out (n >= 2)."""
    count = len(ages) - 1

    def rank(r: int) -> float:
        return ages[r] if r < index else ages[r + 1]

    middle = count // 2
    if count % 2:
        return rank(middle)
    return (rank(middle - 1) + rank(middle)) / 2


class _Entry:
    __slots__ = ("age", "key", "task")

    def __init__(self, age: float, task: Any, key: tuple[int, int]) -> None:
        self.age = age
        self.task = task
        self.key = key


class StuckDetector:
    """Finds stuck tasks (see the module docstring) and queues one finding per site."""

    def __init__(
        self,
        stuck_s: float,
        recorder: SiteRecorder,
        submit: Callable[[StuckTask], None],
        list_tasks: Callable[[], list[Any]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = stuck_s
        self._list_tasks = list_tasks  # the live tasks (agent.interp.tasks, by the runtime)
        self._recorder = recorder
        self._submit = submit
        self._clock = clock
        # (id(task), creation record) of each task already reported, while it is pending.
        self._reported: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._request: Optional[Callable[[Callable[[], None]], None]] = None

    # -- the check (reporter thread) -------------------------------------------------

    def find(self) -> list[StuckTask]:
        """The findings of one check; each stuck task is in at most one check's."""
        wall = time.time()
        findings = []
        ages_by_site, candidates_by_site = self._pending_by_site()
        still_pending: set[tuple[int, int]] = set()
        for site, candidates in candidates_by_site.items():
            still_pending.update(entry.key for entry in candidates)
            ages = ages_by_site[site]
            if len(ages) < 2:
                continue
            ages.sort()
            candidates.sort(key=lambda entry: -entry.age)
            newly: list[tuple[_Entry, float]] = []
            # Oldest first; once a task is not stuck, younger ones are not either.
            for entry in candidates:
                median = median_without(ages, bisect.bisect_right(ages, entry.age) - 1)
                if entry.age < STUCK_RATIO * median:
                    break
                if entry.key not in self._reported:
                    newly.append((entry, median))
            if newly:
                findings.append(self._finding(site, newly, len(ages) - 1, wall))
        self._reported &= still_pending  # forget tasks that finished
        return findings

    def _pending_by_site(
        self,
    ) -> tuple[dict[Site, list[float]], dict[Site, list[_Entry]]]:
        """The ages of the pending tasks whose site and creation time are known, by
        site, and the tasks at least :attr:`threshold` old (the only possible stuck
        ones): per task, a float appended, nothing more."""
        now = self._clock()
        threshold = self.threshold
        decode = self._recorder.decode
        ages_by_site: dict[Site, list[float]] = {}
        candidates: dict[Site, list[_Entry]] = {}
        tasks = self._list_tasks()
        try:
            for task in tasks:
                try:
                    if task.done():
                        continue
                except Exception:
                    continue
                record = record_of(task)
                site, created = decode(record)
                if site is None or created is None or record is None:
                    continue
                age = now - created
                ages = ages_by_site.get(site)
                if ages is None:
                    ages = ages_by_site[site] = []
                ages.append(age)
                if age >= threshold:
                    old = candidates.get(site)
                    if old is None:
                        old = candidates[site] = []
                    old.append(_Entry(age, task, (id(task), record)))
        finally:
            del tasks
        return ages_by_site, candidates

    def _finding(
        self, site: Site, newly: list[tuple[_Entry, float]], siblings: int, wall: float
    ) -> StuckTask:
        for entry, _median in newly:
            self._reported.add(entry.key)
        oldest, median = newly[0]
        task = oldest.task
        return StuckTask(
            task_name=task_name(task),
            coroutine=coroutine_name(task),
            site=site,
            task_age_s=oldest.age,
            awaiting=await_chain(task),
            siblings=siblings,
            siblings_median_age_s=median,
            also_stuck=len(newly) - 1,
            timestamp=wall,
            pid=os.getpid(),
            thread=loop_thread_name(task),
            span=getattr(task, SPAN_ATTR, None),
        )

    def check(self) -> None:
        """Run one check and queue its findings (in the reporter thread)."""
        for finding in self.find():
            self._submit(finding)

    # -- the periodic check ----------------------------------------------------------

    def start_timer(self, request: Callable[[Callable[[], None]], None]) -> None:
        """Ask ``request(self.check)`` every :func:`check_interval` seconds (the
        reporter's ``call_soon``: the check runs in the reporter thread)."""
        if self._thread is not None or self._stop.is_set():
            return
        self._request = request
        self._start_thread()

    def _start_thread(self) -> None:
        self._stop = threading.Event()
        thread = threading.Thread(target=self._tick, name="asyncio-agent-stuck", daemon=True)
        self._thread = thread
        thread.start()

    def _tick(self) -> None:
        stop, interval, request = self._stop, check_interval(self.threshold), self._request
        while not stop.wait(interval):
            if request is not None:
                request(self.check)

    def stop(self) -> None:
        """Stop the periodic check."""
        self._stop.set()

    def after_fork_in_child(self) -> None:
        """In a forked child: its own memory of what was reported, its own timer."""
        self._reported = set()
        if self._thread is not None and not self._stop.is_set():
            self._start_thread()
