"""Interpreter internals about unfinished work: never-awaited coroutines and pending tasks.

Owns every private name that the never-awaited, left-over and stuck-task features need,
and nothing else:

- ``warnings._warn_unawaited_coroutine``: CPython looks it up by name on the
  ``warnings`` module each time a coroutine that never started is finalized, and calls
  it with the coroutine (3.10 to 3.15; on 3.14+ it is defined in ``_py_warnings`` but
  still looked up on ``warnings``);
- ``sys._getframe`` (where a coroutine died) and ``threading._active`` (thread names
  without taking threading's lock);
- ``loop._thread_id`` (owners; a task's coroutine and await chain come from
  agent.interp.tasks);
- ``asyncio.events._set_running_loop`` (coroutine origin tracking in every loop thread);
- ``_cancel_all_tasks`` of ``asyncio.runners``, ``backports.asyncio.runner`` and anyio's
  asyncio backend (what a loop's shutdown is about to cancel);
- anyio's ``TestRunner._run_tests_and_fixtures`` (the task its pytest plugin keeps) and
  ``_shutdown_process_pool_on_exit`` (a task it keeps for the life of a loop).

Functions here answer questions and never raise. The hook's prelude runs inside a
coroutine's finalizer (any thread, during a collection, at interpreter teardown): it
reads one frame, builds one tuple and calls back; it never imports.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Callable
from typing import Any, Optional

from .tasks import coro_of as coroutine_of

Location = tuple[str, int, str]
"""(file, line, function) of a frame."""
UnawaitedCallback = Callable[[Any, Optional[Location]], None]
"""Called with the coroutine and where it died (the frame running when it was finalized)."""

_getframe = sys._getframe
_get_ident = threading.get_ident
_active: dict[int, threading.Thread] = getattr(threading, "_active", {})

HOOK_NAME = "_warn_unawaited_coroutine"
_OURS = "__asyncio_agent_hook__"

# -- where and in which thread ---------------------------------------------------------


def _location(frame: Any) -> Location:
    code = frame.f_code
    return (code.co_filename, frame.f_lineno, getattr(code, "co_qualname", code.co_name))


def current_thread_name() -> str:
    """The calling thread's name, read without threading's lock (finalizer-safe)."""
    try:
        thread = _active.get(_get_ident())
        if thread is not None:
            return str(thread.name)
        return f"Thread-{_get_ident()}"
    except Exception:
        return "?"


def loop_thread_name(task: Any) -> Optional[str]:
    """The name of the thread running ``task``'s loop, if it runs."""
    try:
        ident = getattr(task.get_loop(), "_thread_id", None)
        thread = _active.get(ident) if ident is not None else None
        return None if thread is None else str(thread.name)
    except Exception:
        return None


# -- never-awaited coroutines ----------------------------------------------------------


def _python_twin(function: Any) -> Any:
    """``function`` again, with its one ``stacklevel=2`` constant made ``3``, or None.

    Where the compiled prelude is not available, a Python wrapper must call CPython's
    function, and that adds a frame: the copy warns one frame further up, so its warning
    still names the line where the coroutine died. None if the code is not the one
    expected (an int constant 2 exactly once, as in CPython 3.10-3.13).
    """
    code = getattr(function, "__code__", None)
    if code is None:
        return None
    consts = code.co_consts
    hits = [i for i, value in enumerate(consts) if type(value) is int and value == 2]
    if len(hits) != 1:
        return None
    index = hits[0]
    try:
        twin = types.FunctionType(
            code.replace(co_consts=(*consts[:index], 3, *consts[index + 1 :])),
            function.__globals__,
            function.__name__,
            function.__defaults__,
            function.__closure__,
        )
        twin.__kwdefaults__ = function.__kwdefaults__
        twin.__qualname__ = function.__qualname__
        twin.__module__ = function.__module__
    except Exception:
        return None
    return twin


class UnawaitedHook:
    """Puts a prelude in front of ``warnings._warn_unawaited_coroutine`` and removes it.

    The prelude calls ``callback(coro, where_it_died)`` and then CPython's own function,
    so the warning (its text, its line, the filter's once-per-line, ``-W error``'s
    unraisable exception) is exactly what it is without the agent. With ``compiled``,
    the prelude is ``asyncio_agent.interp._prelude.Prelude`` (no frame at all); otherwise a
    Python function calls a twin of CPython's that warns one frame further up.
    """

    def __init__(self, callback: UnawaitedCallback, prelude_type: Any) -> None:
        self._callback = callback
        self._prelude_type = prelude_type
        self._module: Any = None
        self._original: Any = None
        self._installed: Any = None
        self.how = "off"
        """``compiled``, ``python``, or ``off`` (not installed, see ``why_not``)."""
        self.why_not = ""

    def install(self) -> bool:
        """Install the prelude; False (with ``why_not``) when that is not possible."""
        if self._installed is not None:
            return True
        warnings = sys.modules.get("warnings")
        if warnings is None:
            import warnings  # at install, never on the finalizer path
        original = getattr(warnings, HOOK_NAME, None)
        if original is None or not callable(original):
            self.why_not = f"warnings.{HOOK_NAME} is missing on this Python"
            return False
        if getattr(original, _OURS, False):
            self.why_not = "another installation of the agent hooks it already"
            return False
        callback = self._callback
        getframe = _getframe
        location = _location
        hook: Any
        if self._prelude_type is not None:

            def before(coro: Any) -> None:
                # Called by the compiled prelude, which has no frame: one frame up is
                # the code that was running when the coroutine died.
                try:
                    where: Optional[Location] = location(getframe(1))
                except Exception:
                    where = None  # no Python frame (interpreter teardown)
                callback(coro, where)

            hook = self._prelude_type(before, original)
            self.how = "compiled"
        else:
            twin = _python_twin(original)
            if twin is None:
                self.why_not = (
                    f"warnings.{HOOK_NAME} is not the function expected and the compiled "
                    "prelude (asyncio_agent.interp._prelude) is not available"
                )
                return False

            def hook(coro: Any) -> Any:
                try:
                    where: Optional[Location] = location(getframe(1))
                except Exception:
                    where = None
                try:
                    callback(coro, where)
                except Exception:
                    pass
                return twin(coro)

            setattr(hook, _OURS, True)
            self.how = "python"
        try:
            setattr(warnings, HOOK_NAME, hook)
        except Exception as exc:
            self.how, self.why_not = "off", f"cannot set warnings.{HOOK_NAME} ({exc})"
            return False
        self._module, self._original, self._installed = warnings, original, hook
        return True

    def uninstall(self) -> None:
        """Put CPython's function back, if the prelude is still the one in place."""
        module, hook = self._module, self._installed
        if module is not None and getattr(module, HOOK_NAME, None) is hook:
            setattr(module, HOOK_NAME, self._original)
        self._module = self._original = self._installed = None
        self.how = "off"


# -- coroutine origin tracking in every loop thread ------------------------------------


class OriginTracking:
    """``sys.set_coroutine_origin_tracking_depth(depth)`` in every thread that runs a loop.

    The depth is per thread and new threads start at 0, so it is raised (never
    lowered) at install in the installing thread and, through a wrapper on
    ``asyncio.events._set_running_loop``, in each thread when a loop starts running
    there. Asyncio's debug mode saves and restores the depth around its own, as ever.
    """

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._wrapped: list[tuple[Any, Any]] = []  # (module, original)

    def install(self) -> None:
        """Raise the depth in the calling thread."""
        self._raise_here()

    def _raise_here(self) -> None:
        if sys.get_coroutine_origin_tracking_depth() < self.depth:
            sys.set_coroutine_origin_tracking_depth(self.depth)

    def on_asyncio_imported(self, asyncio: Any) -> None:
        """Wrap ``_set_running_loop`` where base_events and uvloop look it up."""
        raise_here = self._raise_here
        events: Any = sys.modules.get("asyncio.events")
        module: Any
        for module in (events, asyncio):
            original = getattr(module, "_set_running_loop", None)
            if original is None or getattr(original, _OURS, False):
                continue

            def set_running_loop(loop: Any, _original: Any = original) -> None:
                if loop is not None:
                    try:
                        raise_here()
                    except Exception:
                        pass
                _original(loop)

            setattr(set_running_loop, _OURS, True)
            module._set_running_loop = set_running_loop
            self._wrapped.append((module, original))

    def uninstall(self) -> None:
        """Unwrap; the depth of threads already raised stays (coroutines keep origins)."""
        for module, original in reversed(self._wrapped):
            if getattr(getattr(module, "_set_running_loop", None), _OURS, False):
                module._set_running_loop = original
        self._wrapped.clear()
        if sys.get_coroutine_origin_tracking_depth() == self.depth:
            sys.set_coroutine_origin_tracking_depth(0)


# -- pending tasks: their coroutine, what they await, who keeps them ---------------------

# (file suffix, function name) of coroutines that libraries run for the life of a loop,
# not for a test: each is created once per loop and cancelled when the loop shuts down.
_LOOP_LIFETIME = (
    # anyio's pytest plugin runs every test and fixture of a loop inside this task,
    # created by the first test that needs it.
    ("anyio/_backends/_asyncio.py", "_run_tests_and_fixtures"),
    # anyio.to_process: shuts the worker processes down when asyncio.run() or
    # anyio.run() cancels it at the loop's shutdown ("this only works when the event
    # loop was started using asyncio.run() or anyio.run()", says its docstring).
    ("anyio/_backends/_asyncio.py", "_shutdown_process_pool_on_exit"),
)


def is_loop_lifetime_task(task: Any) -> bool:
    """Whether ``task`` is one a library keeps for the life of its loop (a test
    runner's own task, a service that expects the loop's shutdown to cancel it)."""
    try:
        code = getattr(coroutine_of(task), "cr_code", None)
        if code is None:
            return False
        filename = str(code.co_filename).replace("\\", "/")
        return any(
            code.co_name == name and filename.endswith(suffix) for suffix, name in _LOOP_LIFETIME
        )
    except Exception:
        return False


# -- loop shutdown: the tasks asyncio.run / Runner.close is about to cancel ----------------

RUNNER_MODULES = ("asyncio.runners", "backports.asyncio.runner.runner", "anyio._backends._asyncio")
"""Modules whose ``_cancel_all_tasks(loop)`` cancels the tasks left when a loop shuts
down: asyncio's own (``asyncio.run``, ``asyncio.Runner``), the backport of ``Runner``
that pytest-asyncio uses on 3.10, and anyio's copy of it (3.10)."""

ShutdownCallback = Callable[[Any, list[Any], Optional[str]], None]


class ShutdownWatch:
    """Calls ``callback(loop, pending_tasks, why)`` right before a runner cancels them;
    ``why`` is the name of the exception the runner is being left by (the loop was
    interrupted: ``KeyboardInterrupt``, ``SystemExit``...), or None.

    Wraps ``_cancel_all_tasks`` in each of :data:`RUNNER_MODULES` (those already
    imported at :meth:`wrap_module` time; the caller watches for the others). The
    tasks are still pending then: their await chains can be read.
    """

    def __init__(self, callback: ShutdownCallback) -> None:
        self._callback = callback
        self._wrapped: list[tuple[Any, Any]] = []

    def wrap_module(self, module: Any) -> None:
        """Wrap ``module._cancel_all_tasks`` (no-op if absent or already wrapped)."""
        original = getattr(module, "_cancel_all_tasks", None)
        if original is None or getattr(original, _OURS, False):
            return
        callback = self._callback

        def cancel_all_tasks(loop: Any) -> Any:
            try:
                asyncio = sys.modules["asyncio"]
                # Runner.close() runs in __exit__ while an exception leaves the block.
                leaving = sys.exc_info()[1]
                why = None if leaving is None else type(leaving).__name__
                callback(loop, list(asyncio.all_tasks(loop)), why)
            except Exception:
                pass
            return original(loop)

        setattr(cancel_all_tasks, _OURS, True)
        module._cancel_all_tasks = cancel_all_tasks
        self._wrapped.append((module, original))

    def wrap_imported(self) -> None:
        """Wrap the runner modules that are already imported."""
        for name in RUNNER_MODULES:
            module = sys.modules.get(name)
            if module is not None:
                self.wrap_module(module)

    def unwrap(self) -> None:
        """Put every original back."""
        for module, original in reversed(self._wrapped):
            if getattr(getattr(module, "_cancel_all_tasks", None), _OURS, False):
                module._cancel_all_tasks = original
        self._wrapped.clear()
