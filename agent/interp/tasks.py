"""Tasks from the inside: their coroutine, what they wait on, and where the live ones are.

Owns every read of a task's private attributes (``_coro``, ``_fut_waiter``,
``_exception``, ``_source_traceback``) and of asyncio's task registries. Reads only: it
never registers, unregisters, awaits or cancels a task, never retrieves an exception
(that would silence CPython's report), and never keeps a task alive beyond the list
:func:`live_tasks` returns. Every function is safe to call on any object and never raises.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable
from typing import Any, NamedTuple, Optional

from .shape import Shape

_RETRIES = 100


def is_task(obj: object) -> bool:
    """Whether ``obj`` is a task (futures, including gather's, are not)."""
    return getattr(type(obj), "get_coro", None) is not None


def coro_of(task: Any) -> Any:
    """The task's coroutine, or None (a task that finished eagerly may have none)."""
    try:
        # ``_coro`` first: get_coro() crashes 3.12.0-3.12.4 for a task that finished
        # eagerly (CPython gh-122332); the attribute is safe everywhere.
        return task._coro if hasattr(task, "_coro") else task.get_coro()
    except Exception:
        return None


def coroutine_name(task: Any) -> Optional[str]:
    """The qualified name of the task's coroutine (or its type's), or None."""
    try:
        coro = coro_of(task)
        if coro is None:
            return None
        return _name_of(coro)
    except Exception:
        return None


def task_name(task: Any) -> Optional[str]:
    """``task.get_name()`` as a string, or None."""
    try:
        name = task.get_name()
    except Exception:
        return None
    return name if isinstance(name, str) else None


def waiter_of(task: Any) -> Any:
    """The future a pending task is suspended on, or None."""
    try:
        return getattr(task, "_fut_waiter", None)
    except Exception:
        return None


def has_unread_exception(task: Any) -> bool:
    """Whether a done task holds an exception (read without marking it retrieved:
    ``task.exception()`` would silence CPython's "never retrieved" report)."""
    try:
        return getattr(task, "_exception", None) is not None
    except Exception:
        return False


def source_traceback(task: Any) -> Any:
    """The creation stack asyncio's debug mode keeps on the task (a list), or None."""
    try:
        return getattr(task, "_source_traceback", None)
    except Exception:
        return None


MAX_AWAIT_DEPTH = 32


def _name_of(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None)
    return name if isinstance(name, str) else str(type(obj).__qualname__)


def _frame_line(frame: Any, owner: Any) -> str:
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {getattr(code, 'co_qualname', _name_of(owner))}"


def await_chain(task: Any) -> tuple[str, ...]:
    """Where a pending task is suspended: each coroutine of its await chain as
    ``"file:line in function"``, outermost first, then what the innermost one waits on
    (``"-> Future"``, ``"-> Task 'name' (coro)"``). Empty if nothing can be read."""
    lines: list[str] = []
    try:
        current = coro_of(task)
        for _ in range(MAX_AWAIT_DEPTH):
            frame = getattr(current, "cr_frame", None) or getattr(current, "gi_frame", None)
            if frame is None:
                frame = getattr(current, "ag_frame", None)
            if frame is None:
                break
            lines.append(_frame_line(frame, current))
            following = (
                getattr(current, "cr_await", None)
                or getattr(current, "gi_yieldfrom", None)
                or getattr(current, "ag_await", None)
            )
            if following is None or not (
                hasattr(following, "cr_frame")
                or hasattr(following, "gi_frame")
                or hasattr(following, "ag_frame")
            ):
                break
            current = following
        waiter = waiter_of(task)
        if waiter is not None:
            if is_task(waiter):
                lines.append(f"-> Task {waiter.get_name()!r} ({_name_of(coro_of(waiter))})")
            else:
                lines.append(f"-> {type(waiter).__qualname__}")
    except Exception:
        pass
    return tuple(lines)


class LiveTasks(NamedTuple):
    """The tasks listed, and how complete the list is."""

    tasks: list[Any]
    complete: bool
    """True: every task not yet collected, finished ones too, on every loop. False: the
    pending tasks of the loops the agent has seen (the interpreter lists no more)."""
    source: str


def _copy(container: Any) -> list[Any]:
    # Another thread may add or remove tasks while we copy; asyncio.all_tasks() does
    # the same retry. list() of a WeakSet holds strong references only in our list.
    for _ in range(_RETRIES):
        try:
            return list(container)
        except RuntimeError:
            continue
    return []


def live_tasks(shape: Optional[Shape], loops: Iterable[Any] = ()) -> LiveTasks:
    """Every task of the process not yet collected, or, where the interpreter cannot list
    them, the pending tasks of ``loops``. The caller drops the list when done."""
    if shape is None:
        return LiveTasks([], True, "asyncio not imported")
    if shape.complete:
        found = _copy(shape.registry)
        if shape.eager is not None:
            seen = {id(task) for task in found}
            found.extend(task for task in _copy(shape.eager) if id(task) not in seen)
        return LiveTasks(found, True, shape.live_tasks_source)
    asyncio = sys.modules.get("asyncio")
    found = []
    for loop in list(loops):
        try:
            # From any thread: pending tasks of that loop (3.14 reads the per-thread
            # lists; earlier versions the registry).
            found.extend(asyncio.all_tasks(loop))  # type: ignore[union-attr]
        except Exception:
            continue
    return LiveTasks(found, False, shape.live_tasks_source)


def weak_references(registry: Any) -> Any:
    """The set of weak references a WeakSet keeps (its ``data``), or None."""
    refs = getattr(registry, "data", None)
    return refs if type(refs) is set else None


def live_task_count(shape: Optional[Shape], loops: Iterable[Any] = ()) -> int:
    """How many tasks :func:`live_tasks` would list, without keeping them."""
    if shape is not None and shape.complete:
        try:
            count = len(shape.registry)
            return count + (len(shape.eager) if shape.eager is not None else 0)
        except Exception:
            return 0
    return len(live_tasks(shape, loops).tasks)


class SeenLoops:
    """The loops the agent has seen create tasks, held weakly.

    Needed only where the interpreter lists no tasks of its own (3.14+), to ask each loop
    for its pending ones. :meth:`add` costs an identity check per task otherwise.
    """

    def __init__(self) -> None:
        self._loops: weakref.WeakSet[Any] = weakref.WeakSet()
        self._last: Any = None  # a weak reference to the loop seen last

    def add(self, loop: Any) -> None:
        """Remember ``loop`` (cheap when it is the same loop as last time)."""
        last = self._last
        if last is not None and last() is loop:
            return
        try:
            self._loops.add(loop)
            self._last = weakref.ref(loop)
        except TypeError:
            pass

    def __iter__(self) -> Any:
        return iter(list(self._loops))
