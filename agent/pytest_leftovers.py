"""Left-over tasks, for the pytest plugin: the tasks a test created and left behind.

Owns per-test attribution. A test's tasks are those alive at its teardown (or at its
loop's shutdown) that were not alive when its setup began, were not made while a
fixture of a wider scope (class, module, package, session) was being set up, and are
not a task a library keeps for the life of its loop (anyio's test runner task, its
process-pool shutdown task). Left behind means still pending when
the test's teardown has finished, or cancelled by its loop's shutdown
(``asyncio.run``, ``asyncio.Runner.close``, pytest-asyncio's and anyio's runners).
So blame stays per test with loops of any scope: a task left by one test is known
(never blamed again) when the next one begins.

Reads tasks only: never cancels, awaits, or keeps one alive beyond one call.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

from .findings import LeftPending
from .importhook import PostImportHook
from .interp.tasks import await_chain, coroutine_name, task_name
from .interp.unfinished import RUNNER_MODULES, ShutdownWatch, is_loop_lifetime_task
from .records import record_of
from .sites import SiteRecorder

RecorderGetter = Callable[[], Optional[SiteRecorder]]


def _weak_set(tasks: list[Any]) -> weakref.WeakSet[Any]:
    found: weakref.WeakSet[Any] = weakref.WeakSet()
    for task in tasks:
        try:
            found.add(task)
        except TypeError:  # a task type without weak references: never ours to judge
            pass
    return found


def _contains(tasks: weakref.WeakSet[Any], task: Any) -> bool:
    try:
        return task in tasks
    except TypeError:
        return True


def describe_task(task: Any, how: str, recorder: Optional[SiteRecorder]) -> LeftPending:
    """A :class:`LeftPending` for ``task`` (read now: call it while the task is pending)."""
    site, created = recorder.decode(record_of(task)) if recorder is not None else (None, None)
    return LeftPending(
        task_name=task_name(task),
        coroutine=coroutine_name(task),
        site=site,
        task_age_s=None if created is None else max(0.0, time.monotonic() - created),
        awaiting=await_chain(task),
        how=how,
    )


class LeftoverTracker:
    """Tells, at each test's end, which tasks it left behind."""

    def __init__(self, recorder: RecorderGetter, list_tasks: Callable[[], list[Any]]) -> None:
        self._recorder = recorder
        self._list_tasks = list_tasks  # the live tasks (agent.interp.tasks, by the runtime)
        self._known: weakref.WeakSet[Any] = weakref.WeakSet()
        """Alive when the current test began, or already judged: never blamed (again)."""
        self._fixture_owned: weakref.WeakSet[Any] = weakref.WeakSet()
        self._in_test = False
        self._found: list[LeftPending] = []
        self.outside: list[LeftPending] = []
        """Left behind outside any test (by fixtures of a wider scope): shown, not failed."""
        self._watch = ShutdownWatch(self._on_shutdown)
        self._imports = PostImportHook({name: self._watch.wrap_module for name in RUNNER_MODULES})

    def start(self) -> None:
        """Watch the runners' shutdown (those imported now, and later ones)."""
        self._watch.wrap_imported()
        self._imports.install()

    def stop(self) -> None:
        """Stop watching."""
        self._imports.remove()
        self._watch.unwrap()

    def begin_test(self) -> None:
        """The test's setup begins: every task alive now is not the test's."""
        tasks = self._list_tasks()
        self._known = _weak_set(tasks)
        del tasks
        self._found = []
        self._in_test = True

    @contextmanager
    def fixture_setup(self, scope: str) -> Iterator[None]:
        """Around a fixture's setup: tasks a wider-scoped fixture makes are its own."""
        if scope == "function" or not self._in_test:
            yield
            return
        tasks = self._list_tasks()
        before = _weak_set(tasks)
        del tasks
        try:
            yield
        finally:
            tasks = self._list_tasks()
            for task in tasks:
                if not _contains(before, task):
                    try:
                        self._fixture_owned.add(task)
                    except TypeError:
                        pass
            del tasks

    def end_test(self) -> list[LeftPending]:
        """The test's teardown is over: what it left behind, oldest judgement first."""
        found, self._found = self._found, []
        self._in_test = False
        recorder = self._recorder()
        tasks = self._list_tasks()
        try:
            for task in tasks:
                try:
                    if task.done():
                        continue
                except Exception:
                    continue
                if self._not_the_tests(task):
                    continue
                found.append(describe_task(task, LeftPending.STILL_PENDING, recorder))
                self._known.add(task)
        finally:
            del tasks
        return found

    def _not_the_tests(self, task: Any) -> bool:
        return (
            _contains(self._known, task)
            or _contains(self._fixture_owned, task)
            or is_loop_lifetime_task(task)
        )

    def _on_shutdown(self, loop: Any, tasks: list[Any], why: Optional[str]) -> None:
        # Inside a runner's _cancel_all_tasks: these tasks are about to be cancelled.
        recorder = self._recorder()
        how = LeftPending.CANCELLED_AT_SHUTDOWN
        if why is not None:
            how += f" (the run was interrupted by {why})"
        for task in tasks:
            if is_loop_lifetime_task(task):
                continue
            if _contains(self._fixture_owned, task):
                self.outside.append(describe_task(task, how, recorder))
                continue
            if _contains(self._known, task):
                continue  # judged at its own test's end, or alive before it began
            finding = describe_task(task, how, recorder)
            if self._in_test:
                self._found.append(finding)
            else:
                self.outside.append(finding)
            try:
                self._known.add(task)
            except TypeError:
                pass
