"""What the interpreter can tell about a running event loop from another thread.

Owns every private name the blocking detector needs: ``sys._current_frames()``,
``asyncio.events.Handle._run`` (its code object and its ``self``), a handle's
``_callback``, a task's ``_coro``, and the fact that ``asyncio.current_task(loop)``
called from another thread answers for that loop (a dict keyed by loop on 3.10-3.13,
a scan of the thread states on 3.14+). Every function answers a question and never
raises; none keeps what it was given alive after it returns.
"""

from __future__ import annotations

import sys
from types import CodeType, FrameType
from typing import Any, Optional


def thread_frame(thread_id: int) -> Optional[FrameType]:
    """The innermost frame the thread ``thread_id`` is running now, or None.

    ``sys._current_frames()`` makes frame objects for every thread at once (a
    stop-the-world on free-threaded builds): call it rarely, only for a stall.
    """
    try:
        return sys._current_frames().get(thread_id)
    except Exception:
        return None


def running_task(loop: Any) -> Any:
    """The task whose step ``loop`` runs right now, asked from any thread; or None.

    3.10-3.13: ``current_task(loop)`` reads asyncio's dict of current tasks by loop
    (C and Python tasks both write it). 3.14+: it finds the loop's thread state and
    returns its running task. Between two steps the answer is None.
    """
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.current_task(loop)
    except Exception:
        return None


def handle_run_codes() -> frozenset[CodeType]:
    """The code objects of asyncio's ``Handle._run`` (and its 3.14 thread-safe twin).

    A frame running one of them is asyncio's loop calling a callback: its ``self`` is
    the handle. uvloop's handles are compiled and have no such frame.
    """
    events = sys.modules.get("asyncio.events")
    codes: set[CodeType] = set()
    for name in ("Handle", "TimerHandle", "_ThreadSafeHandle"):
        run = getattr(getattr(events, name, None), "_run", None)
        code = getattr(run, "__code__", None)
        if isinstance(code, CodeType):
            codes.add(code)
    return frozenset(codes)


def handle_callback(run_frame: FrameType) -> Any:
    """The callback the ``Handle._run`` frame ``run_frame`` is calling, or None.

    Reads the frame's ``self`` (on 3.10-3.12 that copies the frame's locals into its
    ``f_locals`` dict, as a debugger does; the frame is asyncio's, not the program's).
    """
    try:
        handle = run_frame.f_locals.get("self")
        return getattr(handle, "_callback", None)
    except Exception:
        return None


def callback_name(callback: Any) -> Optional[str]:
    """A callback's qualified name: ``slow``, ``Server.on_tick``, ``gc.collect``."""
    try:
        for _ in range(8):  # functools.partial and bound methods, unwrapped
            inner = getattr(callback, "func", None)
            if inner is None or inner is callback:
                break
            callback = inner
        function = getattr(callback, "__func__", callback)
        name = getattr(function, "__qualname__", None)
        if not isinstance(name, str):
            return type(callback).__qualname__
        if getattr(function, "__code__", None) is None:  # builtin: say its module
            module = getattr(function, "__module__", None)
            if isinstance(module, str) and module not in ("builtins", "__main__"):
                return f"{module}.{name}"
        return name
    except Exception:
        return None


def task_name(task: Any) -> Optional[str]:
    """``task.get_name()`` as a string, or None."""
    try:
        name = task.get_name()
    except Exception:
        return None
    return name if isinstance(name, str) else None


def coroutine_name(task: Any) -> Optional[str]:
    """The qualified name of the task's coroutine, or None.

    ``_coro`` first: on 3.12.0-3.12.4, ``get_coro()`` crashes the interpreter for a task
    that finished eagerly (CPython gh-122332); the attribute is safe.
    """
    try:
        coro = task._coro if hasattr(task, "_coro") else task.get_coro()
        if coro is None:
            return None
        name = getattr(coro, "__qualname__", None)
        return name if isinstance(name, str) else type(coro).__qualname__
    except Exception:
        return None
