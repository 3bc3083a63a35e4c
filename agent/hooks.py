"""Loop hooks: which loop classes are patched, how, and how uninstall undoes it.

With asyncio_agent.records, the only module that knows asyncio's and uvloop's internals. It
wraps two methods per loop class: ``create_task`` (to record the creation site of each
task) and ``call_exception_handler`` (where CPython's task finalizer reports), and has
asyncio_agent.records wrap ``add`` on asyncio's task registry. The task
factory slot is left alone, so ``get_task_factory()``, ``set_task_factory()`` and the
no-factory fast path behave exactly as without the agent.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable, Mapping
from types import MethodType, ModuleType
from typing import Any, Union

from .detect import Admit, Decoder, report_from_context
from .records import RegistryHook, keep_on_task
from .report import Report, Suppressed
from .sites import SPAN_ATTR, SiteRecorder
from .speedups import compiled as compiled_speedups

_WRAPPER_MARK = "__asyncio_agent_wrapper__"
Submit = Callable[[Union[Report, Suppressed]], None]
_THIS_FILE = sys._getframe().f_code.co_filename
_MISSING = object()


def _is_ours(function: object) -> bool:
    return bool(getattr(function, _WRAPPER_MARK, False))


def _hide_wrapper_frame(task: Any) -> None:
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


def _keyword_only_signature(function: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword-only names of ``(self, coro, *, <names>=None)``, else ``()``."""
    code = getattr(function, "__code__", None)
    if code is None or code.co_argcount != 2 or code.co_flags & 0x0C:  # *args, **kwargs
        return ()
    names = code.co_varnames[2 : 2 + code.co_kwonlyargcount]
    defaults = getattr(function, "__kwdefaults__", None) or {}
    if all(name in defaults and defaults[name] is None for name in names):
        return tuple(names)
    return ()


def _make_create_task(original: Callable[..., Any], recorder: SiteRecorder) -> Callable[..., Any]:
    # The record is added after the task exists, so an eager task that already
    # finished is still recorded (on the task itself: it never entered asyncio's
    # registry, see asyncio_agent.records). If such a task has no attribute storage (a
    # factory's own type), the assignment raises and the task simply gets no site.
    create_task: Callable[..., Any]
    compiled = compiled_speedups()
    if recorder.accelerator is not None and compiled is not None:
        # The same steps in C, and no Python frame of ours on the creator's stack (so
        # debug mode's _source_traceback has nothing of ours to hide).
        create_task = compiled.CreateTask(original, recorder.accelerator)
        create_task = functools.wraps(original)(create_task)
        setattr(create_task, _WRAPPER_MARK, True)
        return create_task

    record_task = recorder.record_task
    if _keyword_only_signature(original) == ("name", "context"):
        # asyncio's own create_task on 3.11+: explicit keywords are cheaper than
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
                    _hide_wrapper_frame(task)
            except Exception:
                pass
            return task

    else:
        # Any other signature (3.10, uvloop, custom loops): forward untouched.
        def create_task(self: Any, coro: Any, *args: Any, **kwargs: Any) -> Any:
            task = original(self, coro, *args, **kwargs)
            try:
                record_task(task)
                if task.done():
                    keep_on_task(task)
                probe = recorder.span_probe
                if probe is not None:
                    span = probe()
                    if span is not None:
                        task._asyncio_agent_span = span
                if task._source_traceback:
                    _hide_wrapper_frame(task)
            except Exception:
                pass
            return task

    create_task = functools.wraps(original)(create_task)
    setattr(create_task, _WRAPPER_MARK, True)
    return create_task


def _make_call_exception_handler(
    original: Callable[..., Any], submit: Submit, decode: Decoder, admit: Admit
) -> Callable[..., Any]:
    @functools.wraps(original)
    def call_exception_handler(self: Any, context: Mapping[str, Any]) -> Any:
        # Runs inside the task finalizer: build the report, queue it, and let the
        # loop's own handling (the user's handler, CPython's log line) go on as ever.
        try:
            report = report_from_context(self, context, decode, admit)
            if report is not None:
                submit(report)
        except Exception:
            pass
        return original(self, context)

    setattr(call_exception_handler, _WRAPPER_MARK, True)
    return call_exception_handler


# The literal in the wrappers above, spelled out for speed.
assert SPAN_ATTR == "_asyncio_agent_span"


class LoopPatcher:
    """Patches loop classes (or single loops) and remembers how to undo it."""

    def __init__(self, recorder: SiteRecorder, submit: Submit, admit: Admit) -> None:
        self._recorder = recorder
        self._submit = submit
        self._admit = admit
        # (owner, attribute name) -> what owner.__dict__ held before, or _MISSING.
        self._undo: dict[tuple[Any, str], Any] = {}
        self._registry_hook = RegistryHook(compiled=recorder.accelerator is not None)
        self.patched: list[str] = []
        """Names of what was patched, for people (``doctor``, docs, tests)."""

    def _wrap(self, owner: Any, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        if name == "create_task":
            return _make_create_task(original, self._recorder)
        return _make_call_exception_handler(
            original, self._submit, self._recorder.decode, self._admit
        )

    def patch_class(self, cls: type) -> bool:
        """Wrap ``cls.create_task`` and ``cls.call_exception_handler``; False if not possible."""
        done = False
        for name in ("create_task", "call_exception_handler"):
            original = getattr(cls, name, None)
            if original is None or _is_ours(original):
                continue
            before = cls.__dict__.get(name, _MISSING)
            try:
                setattr(cls, name, self._wrap(cls, name, original))
            except (TypeError, AttributeError):
                return False
            self._undo.setdefault((cls, name), before)
            done = True
        if done:
            self.patched.append(f"{cls.__module__}.{cls.__qualname__}")
        return True

    def patch_loop(self, loop: Any) -> bool:
        """Instrument one loop: its class if possible, else the instance itself."""
        if self.patch_class(type(loop)):
            return True
        for name in ("create_task", "call_exception_handler"):
            bound = getattr(loop, name, None)
            if bound is None or _is_ours(getattr(bound, "__func__", bound)):
                continue
            function = getattr(bound, "__func__", None)
            if function is None:
                return False
            try:
                setattr(loop, name, MethodType(self._wrap(loop, name, function), loop))
            except (TypeError, AttributeError):
                return False
            self._undo.setdefault((loop, name), _MISSING)
        return True

    def on_asyncio_imported(self, base_events: ModuleType) -> None:
        """Import-hook callback for ``asyncio.base_events``."""
        self._registry_hook.install()
        self.patch_class(base_events.BaseEventLoop)

    def on_uvloop_imported(self, uvloop: ModuleType) -> None:
        """Import-hook callback for ``uvloop``: its ``Loop`` is no ``BaseEventLoop``."""
        loop_class = getattr(uvloop, "Loop", None)
        if isinstance(loop_class, type):
            self.patch_class(loop_class)

    def unpatch_all(self) -> None:
        """Restore every attribute this patcher replaced."""
        self._registry_hook.uninstall()
        for (owner, name), before in reversed(list(self._undo.items())):
            try:
                if before is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, before)
            except (TypeError, AttributeError):
                pass
        self._undo.clear()
        self.patched.clear()
