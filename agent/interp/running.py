"""What the interpreter can tell about a running event loop, from its thread or another.

Owns every private name the blocking detector needs: ``asyncio._set_running_loop``
(which every loop calls when it starts and stops running in a thread),
``sys._current_frames()``,
``asyncio.events.Handle._run`` (its code object and its ``self``), a handle's
``_callback``, and the fact that ``asyncio.current_task(loop)``
called from another thread answers for that loop (a dict keyed by loop on 3.10-3.13,
a scan of the thread states on 3.14+). Every function answers a question and never
raises; none keeps what it was given alive after it returns. :class:`RunningLoopHook`
is the one patch: it passes every call through to asyncio's own function first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import CodeType, FrameType, ModuleType
from typing import Any, Optional

_HOOK_MARK = "__asyncio_agent_wrapper__"
_SETTER = "_set_running_loop"  # a name, so that setattr (not an attribute) replaces it


def _outer_depth(frame: Optional[FrameType]) -> int:
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


class RunningLoopHook:
    """Tells when a loop starts and stops running in a thread, without a frame of ours
    on the loop's stack while it runs.

    ``asyncio.events._set_running_loop(loop)`` is called by ``BaseEventLoop.run_forever``
    (3.13: its ``_run_forever_setup``) as the loop starts and with None as it stops;
    uvloop calls the ``asyncio._set_running_loop`` it read when it was imported (so a
    uvloop imported before the hook was installed is not seen: see heartbeat's
    ``RunForeverPatch``). ``on_start(loop, outer_depth)`` gets the number of frames of
    the thread outside the loop (its callbacks run inside them); ``on_stop()`` runs in
    the thread whose loop stopped.
    """

    def __init__(self, on_start: Callable[[Any, int], None], on_stop: Callable[[], None]) -> None:
        self._on_start = on_start
        self._on_stop = on_stop
        self._undo: list[tuple[ModuleType, Any]] = []

    def install(self) -> bool:
        """Wrap ``_set_running_loop`` in ``asyncio.events`` and ``asyncio``."""
        if self._undo:
            return True
        events = sys.modules.get("asyncio.events")
        original = getattr(events, _SETTER, None)
        if events is None or original is None or getattr(original, _HOOK_MARK, False):
            return False
        on_start, on_stop = self._on_start, self._on_stop
        getframe = sys._getframe

        def _set_running_loop(loop: Any) -> None:
            original(loop)
            try:
                if loop is None:
                    on_stop()
                else:
                    on_start(loop, _outer_depth(getframe(1)))
            except Exception:
                pass

        setattr(_set_running_loop, _HOOK_MARK, True)
        _set_running_loop.__doc__ = getattr(original, "__doc__", None)
        for module in (events, sys.modules.get("asyncio")):
            if module is not None and getattr(module, _SETTER, None) is original:
                setattr(module, _SETTER, _set_running_loop)
                self._undo.append((module, original))
        return True

    def uninstall(self) -> None:
        """Put asyncio's own function back where it was replaced."""
        for module, original in self._undo:
            current = getattr(module, _SETTER, None)
            if getattr(current, _HOOK_MARK, False):
                setattr(module, _SETTER, original)
        self._undo.clear()


def caller_depth() -> int:
    """How many frames the caller of this function and its callers make."""
    try:
        return _outer_depth(sys._getframe(1))
    except Exception:
        return 0


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
