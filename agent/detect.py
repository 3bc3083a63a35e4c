"""Detection: turn the context CPython's task finalizer hands the loop into a Report.

Runs inside ``__del__``/``tp_finalize``, in any thread, possibly inside another
handler's lock: no I/O, no locks, no imports, no logging. Build the value and return.
The rate limit is asked first, from the kind and creation site alone: a report it holds
back costs a dict update, nothing more. User code run here, only for reports that are
written, is what CPython's default handler runs for them: ``str()`` of the exception
and of its chain and notes (see agent.exception_summary), and a Task subclass's
``get_name()``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional, Union

from .exception_summary import summarize
from .records import record_of
from .report import DESTROYED_PENDING, EXCEPTION_UNRETRIEVED, Report, Suppressed
from .sites import SPAN_ATTR, Site

# The exact texts of CPython's finalizers (Modules/_asynciomodule.c and
# Lib/asyncio/{tasks,futures}.py). The unretrieved one starts with the class name.
PENDING_MESSAGE = "Task was destroyed but it is pending!"
UNRETRIEVED_SUFFIX = " exception was never retrieved"

_monotonic = time.monotonic
_wall = time.time


def _is_task(obj: object) -> bool:
    # Futures (plain, gather's) are reported by CPython too but are not tasks.
    return getattr(type(obj), "get_coro", None) is not None


def _qualified_type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    if module in (None, "builtins", "__main__"):
        return str(name)
    return f"{module}.{name}"


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__} whose str() failed>"


def _task_name(task: Any) -> Optional[str]:
    try:
        name = task.get_name()
    except Exception:
        return None
    return name if isinstance(name, str) else _safe_str(name)


def _coroutine_name(task: Any) -> Optional[str]:
    try:
        # ``_coro`` first: on 3.12.0-3.12.4, get_coro() crashes the interpreter for a
        # task that finished eagerly (CPython gh-122332); the attribute is safe.
        coro = task._coro if hasattr(task, "_coro") else task.get_coro()
        if coro is None:
            return None
        name = getattr(coro, "__qualname__", None)
        if isinstance(name, str):
            return name
        return type(coro).__qualname__
    except Exception:
        return None


def _at_shutdown(loop: Any) -> bool:
    try:
        return bool(sys.is_finalizing() or loop.is_closed() or not loop.is_running())
    except Exception:
        return True


def _thread_name(loop: Any) -> str:
    # The thread whose loop owned the task, when the loop is running: a collection
    # can run a finalizer in whichever thread happened to allocate (even the agent's).
    # threading._active is read with a plain dict lookup: enumerate() takes a lock.
    try:
        loop_thread = getattr(loop, "_thread_id", None)
        if loop_thread is not None:
            owner = getattr(threading, "_active", {}).get(loop_thread)
            if owner is not None:
                return str(owner.name)
        return threading.current_thread().name
    except Exception:
        return "?"


Decoder = Callable[[object], tuple[Optional[Site], Optional[float]]]


Admit = Callable[[tuple[Optional[Site], str]], bool]


def _admit_all(key: tuple[Optional[Site], str]) -> bool:
    return True


def report_from_context(
    loop: Any, context: Mapping[str, Any], decode: Decoder, admit: Admit = _admit_all
) -> Union[Report, Suppressed, None]:
    """The Report for a task finalizer's context, or None if it is anything else.

    ``context`` is what ``loop.call_exception_handler`` received; only CPython's two
    task finalizer reports qualify, never plain futures or application contexts.
    ``decode`` turns the task's creation record into its site and creation time.
    ``admit((site, kind))`` is asked before anything costly is done: when it says no,
    the result is a :class:`Suppressed` count, and the exception is not even read.
    """
    message = context.get("message")
    if not isinstance(message, str):
        return None
    exception: Optional[BaseException] = None
    task = context.get("task")
    if task is not None and message == PENDING_MESSAGE:
        kind = DESTROYED_PENDING
    else:
        task = context.get("future")
        raw = context.get("exception")
        if task is None or not isinstance(raw, BaseException):
            return None
        if not message.endswith(UNRETRIEVED_SUFFIX):
            return None
        kind = EXCEPTION_UNRETRIEVED
        exception = raw
    if not _is_task(task):
        return None

    site, created = decode(record_of(task))
    if not admit((site, kind)):
        return Suppressed(kind, site, _coroutine_name(task), _at_shutdown(loop))
    age = None if created is None else max(0.0, _monotonic() - created)

    exception_type = exception_message = None
    summary = None
    if exception is not None:
        try:
            summary = summarize(exception)
        except Exception:
            summary = None
        if summary is not None:
            exception_type, exception_message = summary.type_name, summary.message
        else:
            exception_type, exception_message = _qualified_type_name(exception), "?"

    return Report(
        kind=kind,
        task_name=_task_name(task),
        coroutine=_coroutine_name(task),
        site=site,
        task_age_s=age,
        at_shutdown=_at_shutdown(loop),
        exception_type=exception_type,
        exception_message=exception_message,
        exception_summary=summary,
        timestamp=_wall(),
        pid=os.getpid(),
        thread=_thread_name(loop),
        span=getattr(task, SPAN_ATTR, None),
    )
