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
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional, Union

from .exception_summary import summarize
from .interp.loops import thread_name
from .interp.tasks import coroutine_name, is_task
from .records import record_of
from .report import DESTROYED_PENDING, EXCEPTION_UNRETRIEVED, Report, Suppressed
from .sites import SPAN_ATTR, Site

# The exact texts of CPython's finalizers (Modules/_asynciomodule.c and
# Lib/asyncio/{tasks,futures}.py). The unretrieved one starts with the class name.
PENDING_MESSAGE = "Task was destroyed but it is pending!"
UNRETRIEVED_SUFFIX = " exception was never retrieved"

_monotonic = time.monotonic
_wall = time.time


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


def _at_shutdown(loop: Any) -> bool:
    try:
        return bool(sys.is_finalizing() or loop.is_closed() or not loop.is_running())
    except Exception:
        return True


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
    if not is_task(task):
        return None

    site, created = decode(record_of(task))
    if not admit((site, kind)):
        return Suppressed(kind, site, coroutine_name(task), _at_shutdown(loop))
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
        coroutine=coroutine_name(task),
        site=site,
        task_age_s=age,
        at_shutdown=_at_shutdown(loop),
        exception_type=exception_type,
        exception_message=exception_message,
        exception_summary=summary,
        timestamp=_wall(),
        pid=os.getpid(),
        thread=thread_name(loop),
        span=getattr(task, SPAN_ATTR, None),
    )
