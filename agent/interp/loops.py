"""Event loops from the inside: the Python ``create_task`` wrappers, and a loop's thread.

Owns every read of a loop's private attributes (``_task_factory``, ``_debug``,
``_thread_id``) and of a task's debug-mode ``_source_traceback`` in the wrappers, and of
``threading._active``. The wrappers call the loop's own ``create_task`` with the very
arguments they got and return its task; whatever the agent adds after that never raises
into the program. The compiled wrapper (``_speedups.CreateTask``) does the same in C.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Optional

_THIS_FILE = sys._getframe().f_code.co_filename


def hide_wrapper_frame(task: Any) -> None:
    """In asyncio debug mode, make ``task._source_traceback`` what it is without us.

    CPython records the creation stack (``DEBUG_STACK_DEPTH`` frames) and prints it in
    the task's repr and in its "Task was destroyed" report. Our wrapper's frame must
    not appear there, and the outermost frame it pushed out of the limit comes back.
    """
    stack = task._source_traceback
    for index in range(len(stack) - 1, -1, -1):
        entry = stack[index]
        if entry.filename == _THIS_FILE and entry.name == "create_task":
            break
    else:
        return
    del stack[index]
    # stack[:index] are our caller and its callers; one level further up is the
    # frame the limit cut off, if there is one.
    frame: Any = sys._getframe(2)
    for _ in range(index):
        if frame is None:
            return
        frame = frame.f_back
    if frame is not None:
        extracted = traceback.StackSummary.extract([(frame, frame.f_lineno)], lookup_lines=False)
        stack.insert(0, extracted[0])


def keyword_only_signature(function: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword-only names of ``(self, coro, *, <names>=None)``, else ``()``."""
    code = getattr(function, "__code__", None)
    if code is None or code.co_argcount != 2 or code.co_flags & 0x0C:  # *args, **kwargs
        return ()
    names = code.co_varnames[2 : 2 + code.co_kwonlyargcount]
    defaults = getattr(function, "__kwdefaults__", None) or {}
    if all(name in defaults and defaults[name] is None for name in names):
        return tuple(names)
    return ()


def python_create_task(
    original: Callable[..., Any],
    recorder: Any,
    keep_on_task: Callable[[Any], None],
    span_attr: str,
    note_loop: Optional[Callable[[Any], None]],
) -> Callable[..., Any]:
    """The Python wrapper of a loop class's ``create_task``.

    ``recorder.record_task(task)`` records the creator's site (it looks two frames up:
    past this wrapper) and ``recorder.span_probe`` is the tracing probe in use, if any
    (agent.sites.SiteRecorder); ``keep_on_task`` moves the record onto an eager task
    that finished before it could register; ``note_loop(loop)``, where given, remembers
    the loop (shapes without a registry).
    """
    create_task: Callable[..., Any]
    record_task = recorder.record_task
    if span_attr != "_asyncio_agent_span":  # spelled out below, for speed
        raise ValueError(f"unexpected span attribute {span_attr!r}")
    if keyword_only_signature(original) == ("name", "context") and note_loop is None:
        # asyncio's own create_task on 3.11-3.13.2: explicit keywords are cheaper than
        # **kwargs, and passing their default None is the same as not passing them.
        def create_task(self: Any, coro: Any, *, name: Any = None, context: Any = None) -> Any:
            task = original(self, coro, name=name, context=context)
            try:
                record_task(task)
                if self._task_factory is not None and task.done():
                    keep_on_task(task)  # eager and finished: never registered
                probe = recorder.span_probe
                if probe is not None:
                    span = probe()
                    if span is not None:
                        task._asyncio_agent_span = span
                if self._debug and task._source_traceback:  # asyncio debug mode
                    hide_wrapper_frame(task)
            except Exception:
                pass
            return task

        return create_task

    # Any other signature (3.10, 3.13.3+, 3.14+, uvloop, custom loops): forward untouched.
    def create_task(self: Any, coro: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[no-redef]
        task = original(self, coro, *args, **kwargs)
        try:
            record_task(task)
            if note_loop is not None:
                note_loop(self)
            if task.done():
                keep_on_task(task)
            probe = recorder.span_probe
            if probe is not None:
                span = probe()
                if span is not None:
                    task._asyncio_agent_span = span
            if getattr(task, "_source_traceback", None):
                hide_wrapper_frame(task)
        except Exception:
            pass
        return task

    return create_task


def thread_name(loop: Any) -> str:
    """The name of the thread running ``loop``, else of the current thread.

    A collection can run a finalizer in whichever thread happened to allocate (even the
    agent's): the loop's own thread says where the task lived. ``threading._active`` is
    read with a plain dict lookup, because ``threading.enumerate()`` takes a lock.
    """
    try:
        loop_thread = getattr(loop, "_thread_id", None)
        if loop_thread is not None:
            owner = getattr(threading, "_active", {}).get(loop_thread)
            if owner is not None:
                return str(owner.name)
        return threading.current_thread().name
    except Exception:
        return "?"
