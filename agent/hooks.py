"""Loop hooks: which loop classes are patched, and how uninstall undoes it.

Owns the patching of two methods per loop class: ``create_task`` (to record the creation
site of each task) and ``call_exception_handler`` (where CPython's task finalizer
reports), and the registry hook's installation (agent.records). The wrappers' knowledge
of loop internals lives in agent.interp.loops (Python) and agent/interp/_speedups.c
(compiled). The task factory slot is left alone, so ``get_task_factory()``,
``set_task_factory()`` and the no-factory fast path behave exactly as without the agent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MethodType, ModuleType
from typing import Any, Optional, Union

from .detect import Admit, Decoder, report_from_context
from .interp.compiled import compiled as compiled_speedups
from .interp.loops import python_create_task
from .interp.shape import Shape
from .interp.tasks import SeenLoops
from .records import RegistryHook, keep_on_task
from .report import Report, Suppressed
from .sites import SPAN_ATTR, SiteRecorder

_WRAPPER_MARK = "__asyncio_agent_wrapper__"
Submit = Callable[[Union[Report, Suppressed]], None]
_MISSING = object()


def _is_ours(function: object) -> bool:
    return bool(getattr(function, _WRAPPER_MARK, False))


def _make_create_task(
    original: Callable[..., Any], recorder: SiteRecorder, seen_loops: Optional[SeenLoops]
) -> Callable[..., Any]:
    # The record is added after the task exists, so an eager task that already
    # finished is still recorded (on the task itself: it never entered asyncio's
    # registry, see agent.records). If such a task has no attribute storage (a
    # factory's own type), the assignment raises and the task simply gets no site.
    create_task: Callable[..., Any]
    compiled = compiled_speedups()
    if recorder.accelerator is not None and compiled is not None and seen_loops is None:
        # The same steps in C, and no Python frame of ours on the creator's stack (so
        # debug mode's _source_traceback has nothing of ours to hide).
        create_task = compiled.CreateTask(original, recorder.accelerator)
    else:
        note_loop = seen_loops.add if seen_loops is not None else None
        create_task = python_create_task(original, recorder, keep_on_task, SPAN_ATTR, note_loop)
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


class LoopPatcher:
    """Patches loop classes (or single loops) and remembers how to undo it."""

    def __init__(self, recorder: SiteRecorder, submit: Submit, admit: Admit) -> None:
        self._recorder = recorder
        self._submit = submit
        self._admit = admit
        # (owner, attribute name) -> what owner.__dict__ held before, or _MISSING.
        self._undo: dict[tuple[Any, str], Any] = {}
        self._registry_hook = RegistryHook(recorder.accelerator)
        self.shape: Optional[Shape] = None
        """What asyncio is made of here (agent.interp.shape), once it is imported."""
        self.seen_loops: Optional[SeenLoops] = None
        """The loops seen creating tasks, where the interpreter cannot list tasks itself."""

    def _wrap(self, owner: Any, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        if name == "create_task":
            return _make_create_task(original, self._recorder, self.seen_loops)
        return _make_call_exception_handler(
            original, self._submit, self._recorder.decode, self._admit
        )

    def patch_class(self, cls: type) -> bool:
        """Wrap ``cls.create_task`` and ``cls.call_exception_handler``; False if not possible."""
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

    def on_asyncio_imported(self, base_events: ModuleType, shape: Shape) -> None:
        """Import-hook callback for ``asyncio``, with what its task registry is like."""
        self.shape = shape
        if not shape.complete and self.seen_loops is None:
            self.seen_loops = SeenLoops()
        self._registry_hook.install(shape)
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
