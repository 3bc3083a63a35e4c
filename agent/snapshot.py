"""Task snapshots: the live tasks of the process, grouped by the line that created them.

Owns the snapshot values and how a task is described (state, coroutine, what it awaits).
Reads tasks and their frames only: never awaits, cancels, retrieves an exception, or
keeps a task alive after :func:`take_snapshot` returns.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Iterable
from typing import Any, Optional

from .interp.shape import Shape
from .interp.tasks import await_chain, coro_of, has_unread_exception, live_tasks
from .records import record_of
from .sites import Site, SiteRecorder

MAX_EXAMPLES = 3
"""Example task names and distinct awaiting stacks kept per site."""
MAX_AWAIT_SAMPLES = 200
"""Pending tasks per site whose awaiting stack is read (the rest are only counted)."""

UNKNOWN_SITE = ("<unknown>", 0, "<unknown>")


@dataclasses.dataclass(frozen=True)
class Awaiting:
    """One distinct place where pending tasks of a site are suspended."""

    stack: tuple[str, ...]
    """``"file:line in function"`` of each coroutine in the await chain, outermost first,
    then what the innermost one waits on (``"-> Future"``, ``"-> Task 'name' (coro)"``)."""
    count: int


@dataclasses.dataclass(frozen=True)
class SiteSnapshot:
    """The live tasks created at one line."""

    creation_file: str
    creation_line: int
    creation_function: str
    creation_stack: tuple[str, ...]
    count: int
    oldest_age_s: Optional[float]
    states: tuple[tuple[str, int], ...]
    """(state, count): ``pending``, ``cancelling``, ``finished``, ``failed``, ``cancelled``."""
    coroutines: tuple[tuple[str, int], ...]
    """(coroutine qualified name, count), most frequent first."""
    task_names: tuple[str, ...]
    """A few example task names."""
    awaiting: tuple[Awaiting, ...]
    """Where pending tasks wait, most frequent first (a sample of at most
    :data:`MAX_AWAIT_SAMPLES` tasks per site)."""

    @property
    def key(self) -> tuple[str, int, str]:
        """(file, line, function): what identifies the site across snapshots."""
        return (self.creation_file, self.creation_line, self.creation_function)


@dataclasses.dataclass(frozen=True)
class LoopState:
    """One running event loop at the moment of the snapshot."""

    loop_thread: str
    blocked_s: float
    """How long it has not run (0.0: it is responsive); with blocking detection on."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Every live task of the process at one moment, by creation site, largest first."""

    timestamp: float
    """``time.time()`` when it was taken."""
    pid: int
    total: int
    source: str
    """Where the tasks were listed from (see agent.interp.tasks)."""
    complete: bool
    """True: every task not yet collected, finished ones too. False: only the pending
    tasks of the loops the agent has seen (Python 3.14+ lists no more): "pending only"."""
    sites: tuple[SiteSnapshot, ...]
    never_awaited: tuple[dict[str, Any], ...] = ()
    """Coroutines never awaited since the agent was installed, by coroutine and
    creation site, most frequent first (``coroutine``, ``creation_site``, ``count``)."""
    loops: tuple[LoopState, ...] = ()
    """The running loops the blocking detector watches, and how long each has been
    blocked right now (empty with ``ASYNCIO_AGENT_BLOCK_MS=0``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and dicts, ready for ``json.dumps``."""
        return {
            "timestamp": self.timestamp,
            "pid": self.pid,
            "total": self.total,
            "source": self.source,
            "complete": self.complete,
            "tasks": "all" if self.complete else "pending only",
            "sites": [site_to_dict(site) for site in self.sites],
            "never_awaited": [dict(entry) for entry in self.never_awaited],
            "loops": loops_to_list(self.loops),
        }


def loops_to_list(loops: Iterable[LoopState]) -> list[dict[str, Any]]:
    """Loop states as plain values."""
    return [{"loop_thread": s.loop_thread, "blocked_s": s.blocked_s} for s in loops]


def site_to_dict(site: SiteSnapshot) -> dict[str, Any]:
    """One :class:`SiteSnapshot` as plain values."""
    return {
        "creation_file": site.creation_file,
        "creation_line": site.creation_line,
        "creation_function": site.creation_function,
        "creation_stack": list(site.creation_stack),
        "count": site.count,
        "oldest_age_s": site.oldest_age_s,
        "states": dict(site.states),
        "coroutines": dict(site.coroutines),
        "task_names": list(site.task_names),
        "awaiting": [{"stack": list(a.stack), "count": a.count} for a in site.awaiting],
    }


def _state(task: Any) -> str:
    try:
        if not task.done():
            cancelling = getattr(task, "cancelling", None)
            return "cancelling" if cancelling is not None and cancelling() else "pending"
        if task.cancelled():
            return "cancelled"
        # The attribute, not exception(): calling that would mark the exception
        # retrieved and silence CPython's "exception was never retrieved".
        return "failed" if has_unread_exception(task) else "finished"
    except Exception:
        return "unknown"


def _name_of(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None)
    return name if isinstance(name, str) else type(obj).__qualname__


def _awaiting(task: Any) -> tuple[str, ...]:
    """The await chain of a pending task, outermost coroutine first."""
    return await_chain(task)


class _Group:
    __slots__ = ("awaiting", "coroutines", "count", "names", "oldest", "site", "states")

    def __init__(self, site: Optional[Site]) -> None:
        self.site = site
        self.count = 0
        self.oldest: Optional[float] = None
        self.states: collections.Counter[str] = collections.Counter()
        self.coroutines: collections.Counter[str] = collections.Counter()
        self.names: list[str] = []
        self.awaiting: collections.Counter[tuple[str, ...]] = collections.Counter()

    def add(self, task: Any, created: Optional[float], now: float) -> None:
        self.count += 1
        if created is not None and (self.oldest is None or created < self.oldest):
            self.oldest = created
        state = _state(task)
        self.states[state] += 1
        try:
            self.coroutines[_name_of(coro_of(task))] += 1
        except Exception:
            self.coroutines["?"] += 1
        if len(self.names) < MAX_EXAMPLES:
            try:
                self.names.append(str(task.get_name()))
            except Exception:
                pass
        if state in ("pending", "cancelling") and sum(self.awaiting.values()) < MAX_AWAIT_SAMPLES:
            stack = _awaiting(task)
            if stack:
                self.awaiting[stack] += 1

    def freeze(self, now: float) -> SiteSnapshot:
        site = self.site
        filename, lineno, function = (
            (site.filename, site.lineno, site.function) if site is not None else UNKNOWN_SITE
        )
        return SiteSnapshot(
            creation_file=filename,
            creation_line=lineno,
            creation_function=function,
            creation_stack=site.stack if site is not None else (),
            count=self.count,
            oldest_age_s=None if self.oldest is None else round(max(0.0, now - self.oldest), 3),
            states=tuple(sorted(self.states.items())),
            coroutines=tuple(self.coroutines.most_common()),
            task_names=tuple(self.names),
            awaiting=tuple(
                Awaiting(stack, count) for stack, count in self.awaiting.most_common(MAX_EXAMPLES)
            ),
        )


def group_tasks(tasks: Iterable[Any], recorder: SiteRecorder) -> tuple[SiteSnapshot, ...]:
    """Group ``tasks`` by creation site (tasks without a record under ``<unknown>``)."""
    now = time.monotonic()
    groups: dict[tuple[str, int, str], _Group] = {}
    for task in tasks:
        site, created = recorder.decode(record_of(task))
        key = (site.filename, site.lineno, site.function) if site is not None else UNKNOWN_SITE
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(site)
        group.add(task, created, now)
    frozen = [group.freeze(now) for group in groups.values()]
    frozen.sort(key=lambda s: (-s.count, s.creation_file, s.creation_line))
    return tuple(frozen)


def take_snapshot(
    recorder: SiteRecorder,
    shape: Optional[Shape],
    loops: Iterable[Any] = (),
    never_awaited: tuple[dict[str, Any], ...] = (),
    blocked: Iterable[dict[str, Any]] = (),
) -> Snapshot:
    """The live tasks now, by creation site (see :func:`asyncio_agent.snapshot`).

    ``shape`` says how to list them (agent.interp.shape); ``loops`` are the loops the
    agent has seen, asked for their pending tasks where the interpreter lists no more;
    ``never_awaited`` the tally of never-awaited coroutines so far.
    ``blocked`` is the blocking detector's view of the running loops
    (agent.watchdog.Watchdog.blocked_now).
    """
    listed = live_tasks(shape, loops)
    source, complete = listed.source, listed.complete
    try:
        sites = group_tasks(listed.tasks, recorder)
        total = len(listed.tasks)
    finally:
        del listed  # the only strong references: gone before we return
    states = tuple(LoopState(entry["loop_thread"], entry["blocked_s"]) for entry in blocked)
    return Snapshot(time.time(), os.getpid(), total, source, complete, sites, never_awaited, states)
