"""Every way an event loop comes to exist: a task leaked on it is reported with its site.

Each program leaks one task (or a few, each at a marked line) and the test checks the
event kind, the creation file and line, and where it matters the thread and process.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import DESTROYED, SHAPE_314, UNRETRIEVED, Run, Runner, line_of, needs

HAS_UVLOOP = sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not importable here")

# Shared head of most programs: ``leak()`` leaves one task pending on a future nobody
# holds, so the task is only in a reference cycle, and collects it while the loop runs.
# Automatic collection is off so the finalizer runs in the thread that calls collect().
PRELUDE = """\
import asyncio
import gc
import os
import sys
import threading

gc.disable()


async def hang():
    await asyncio.get_running_loop().create_future()


async def leak(name="leaked"):
    asyncio.create_task(hang(), name=name)  # SITE
    await asyncio.sleep(0)
    gc.collect()
    loop = asyncio.get_running_loop()
    print("leaked", name, "on", type(loop).__name__, "in", threading.current_thread().name)
"""


def program(body: str) -> str:
    """``PRELUDE`` followed by ``body`` (dedented), as one unindented program."""
    return PRELUDE + "\n" + textwrap.dedent(body)


def the_event(result: Run, kind: str = DESTROYED) -> dict[str, Any]:
    """The single task event of ``result``, after checking the program ran cleanly."""
    assert result.returncode == 0, result.stderr
    events = result.anomalies()
    assert len(events) == 1, f"events: {result.raw_events}\nstderr: {result.stderr}"
    event = events[0]
    assert event["event"] == kind, event
    return event


def assert_site(
    event: dict[str, Any], source: str, marker: str = "# SITE", file: str = "app.py"
) -> None:
    """``event`` was created at the line of ``source`` holding ``marker``."""
    assert Path(event["creation_file"]).name == file, event
    assert event["creation_line"] == line_of(source, marker), event


def test_task_leaked_under_asyncio_run_is_reported_with_its_site(run: Runner) -> None:
    source = program("asyncio.run(leak())\n")
    result = run(source)
    event = the_event(result)
    assert_site(event, source)
    assert event["task_name"] == "leaked"
    assert event["coroutine"] == "hang"
    assert event["creation_function"] == "leak"
    assert event["thread"] == "MainThread"
    assert event["at_shutdown"] is False
    assert "leaked leaked on _UnixSelectorEventLoop" in result.stdout


@needs((3, 11))
def test_task_leaked_under_asyncio_runner_is_reported_with_its_site(run: Runner) -> None:
    source = program(
        """
        with asyncio.Runner() as runner:
            runner.run(leak())
        """
    )
    assert_site(the_event(run(source)), source)


@needs((3, 12))
def test_task_leaked_under_asyncio_run_with_loop_factory_is_reported_with_its_site(
    run: Runner,
) -> None:
    source = program(
        """
        class MyLoop(asyncio.SelectorEventLoop):
            pass

        asyncio.run(leak(), loop_factory=MyLoop)
        """
    )
    result = run(source)
    assert_site(the_event(result), source)
    assert "on MyLoop" in result.stdout


@needs((3, 12))
def test_task_leaked_under_runner_with_loop_factory_is_reported_with_its_site(
    run: Runner,
) -> None:
    source = program(
        """
        class MyLoop(asyncio.SelectorEventLoop):
            pass

        with asyncio.Runner(loop_factory=MyLoop) as runner:
            runner.run(leak())
        """
    )
    result = run(source)
    assert_site(the_event(result), source)
    assert "on MyLoop" in result.stdout


def test_task_leaked_under_run_until_complete_is_reported_with_its_site(run: Runner) -> None:
    source = program(
        """
        loop = asyncio.new_event_loop()
        loop.run_until_complete(leak())
        loop.close()
        """
    )
    assert_site(the_event(run(source)), source)


def test_task_leaked_under_run_forever_is_reported_with_its_site(run: Runner) -> None:
    source = program(
        """
        loop = asyncio.new_event_loop()


        async def leak_then_stop():
            await leak()
            loop.stop()


        main_task = loop.create_task(leak_then_stop())
        loop.run_forever()
        loop.close()
        print("stopped:", main_task.done())
        """
    )
    result = run(source)
    assert_site(the_event(result), source)
    assert "stopped: True" in result.stdout


def test_task_leaked_in_thread_loop_is_reported_with_its_site(run: Runner) -> None:
    source = program(
        """
        worker = threading.Thread(target=asyncio.run, args=(leak(),), name="loop-thread")
        worker.start()
        worker.join()
        """
    )
    event = the_event(run(source))
    assert_site(event, source)
    assert event["thread"] == "loop-thread"


def test_tasks_leaked_in_loops_of_several_threads_at_once_are_each_reported_with_their_site(
    run: Runner,
) -> None:
    # Three loops run at the same time (a barrier), each holds its leaked task until
    # its turn, then drops and collects it: every report is made in its own thread.
    source = program(
        """
        COUNT = 3
        all_running = threading.Barrier(COUNT)
        turns = [threading.Event() for _ in range(COUNT + 1)]


        async def leak_in_turn(index):
            if index == 0:
                keep = [asyncio.create_task(hang(), name="leak-0")]  # SITE-0
            elif index == 1:
                keep = [asyncio.create_task(hang(), name="leak-1")]  # SITE-1
            else:
                keep = [asyncio.create_task(hang(), name="leak-2")]  # SITE-2
            await asyncio.sleep(0)
            all_running.wait(timeout=10)
            turns[index].wait(timeout=10)
            keep.clear()
            gc.collect()
            turns[index + 1].set()


        workers = [
            threading.Thread(target=asyncio.run, args=(leak_in_turn(i),), name=f"worker-{i}")
            for i in range(COUNT)
        ]
        for worker in workers:
            worker.start()
        turns[0].set()
        for worker in workers:
            worker.join()
        print("all done:", turns[COUNT].is_set())
        """
    )
    result = run(source)
    assert result.returncode == 0, result.stderr
    assert "all done: True" in result.stdout
    events = sorted(result.of_kind(DESTROYED), key=lambda e: str(e["task_name"]))
    assert [e["task_name"] for e in events] == ["leak-0", "leak-1", "leak-2"], result.raw_events
    assert len(result.anomalies()) == 3
    for index, event in enumerate(events):
        assert event["thread"] == f"worker-{index}", event
        assert_site(event, source, f"# SITE-{index}")


def test_task_leaked_on_loop_created_before_programmatic_install_is_reported(
    run: Runner,
) -> None:
    # No ASYNCIO_AGENT: the program switches the agent on itself, inside a loop that
    # already runs, and writes the events where the harness reads them.
    source = """\
        import asyncio
        import gc

        import asyncio_agent


        async def hang():
            await asyncio.get_running_loop().create_future()


        async def main():
            print("installed before:", asyncio_agent.is_installed())
            asyncio_agent.install(output="events.jsonl")
            print("installed after:", asyncio_agent.is_installed())
            asyncio.create_task(hang(), name="late")  # SITE
            await asyncio.sleep(0)
            gc.collect()


        asyncio.run(main())
        """
    result = run(source, agent=False)
    assert "installed before: False\ninstalled after: True" in result.stdout
    event = the_event(result)
    assert_site(event, source)
    assert event["task_name"] == "late"


# A loop that is no BaseEventLoop: a ready queue, futures, tasks and a task factory.
MINI_LOOP = """\
import asyncio
import asyncio.events
import collections
import gc
import sys
import time

import asyncio_agent

gc.disable()


class MiniLoop(asyncio.AbstractEventLoop):
    def __init__(self):
        self._ready = collections.deque()
        self._factory = None
        self._running = False
        self._closed = False

    def get_debug(self):
        return False

    def time(self):
        return time.monotonic()

    def is_running(self):
        return self._running

    def is_closed(self):
        return self._closed

    def close(self):
        self._ready.clear()
        self._closed = True

    def call_soon(self, callback, *args, context=None):
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def create_future(self):
        return asyncio.Future(loop=self)

    def create_task(self, coro, *, name=None, context=None):
        extra = {} if context is None else {"context": context}
        if self._factory is None:
            task = asyncio.Task(coro, loop=self, **extra)
        else:
            task = self._factory(self, coro, **extra)
        if name is not None:
            task.set_name(name)
        return task

    def set_task_factory(self, factory):
        self._factory = factory

    def get_task_factory(self):
        return self._factory

    def call_exception_handler(self, context):
        print("mini handler:", context["message"], file=sys.stderr)

    def run_until_complete(self, coro):
        task = self.create_task(coro)
        asyncio.events._set_running_loop(self)
        self._running = True
        try:
            while not task.done():
                self._ready.popleft()._run()
        finally:
            self._running = False
            asyncio.events._set_running_loop(None)
        return task.result()


async def hang():
    await asyncio.get_running_loop().create_future()


def factory(loop, coro, **kwargs):
    return asyncio.Task(coro, loop=loop, **kwargs)


async def main():
    asyncio.create_task(hang(), name="plain")  # SITE-PLAIN
    await asyncio.sleep(0)
    gc.collect()
    asyncio.get_running_loop().set_task_factory(factory)
    asyncio.create_task(hang(), name="via-factory")  # SITE-FACTORY
    await asyncio.sleep(0)
    gc.collect()


loop = MiniLoop()
print("base event loop:", isinstance(loop, asyncio.BaseEventLoop))
print("instrumented:", asyncio_agent.instrument_loop(loop))
loop.run_until_complete(main())
loop.close()
"""


def test_task_leaked_on_custom_loop_given_to_instrument_loop_is_reported_with_its_site(
    run: Runner,
) -> None:
    result = run(MINI_LOOP)
    assert result.returncode == 0, result.stderr
    assert "base event loop: False\ninstrumented: True" in result.stdout
    assert result.stderr.count("mini handler: Task was destroyed but it is pending!") == 2
    events = {e["task_name"]: e for e in result.of_kind(DESTROYED)}
    assert sorted(events) == ["plain", "via-factory"], result.raw_events
    assert_site(events["plain"], MINI_LOOP, "# SITE-PLAIN")
    assert_site(events["via-factory"], MINI_LOOP, "# SITE-FACTORY")


def uvloop_attribute(name: str) -> bool:
    """Whether the installed uvloop has ``name`` (skips the test without uvloop)."""
    uvloop = pytest.importorskip("uvloop")
    return hasattr(uvloop, name)


@needs_uvloop
def test_task_leaked_under_uvloop_run_is_reported_with_its_site(run: Runner) -> None:
    if not uvloop_attribute("run"):
        pytest.skip("this uvloop has no uvloop.run")
    source = program(
        """
        import uvloop

        uvloop.run(leak())
        """
    )
    result = run(source)
    assert_site(the_event(result), source)
    assert "on Loop" in result.stdout


@needs_uvloop
def test_task_leaked_on_uvloop_new_event_loop_is_reported_with_its_site(run: Runner) -> None:
    source = program(
        """
        import uvloop

        loop = uvloop.new_event_loop()
        loop.run_until_complete(leak())
        loop.close()
        """
    )
    result = run(source)
    assert_site(the_event(result), source)
    assert "on Loop" in result.stdout


@needs_uvloop
def test_task_leaked_after_uvloop_install_is_reported_with_its_site(run: Runner) -> None:
    if not uvloop_attribute("install"):
        pytest.skip("this uvloop has no uvloop.install")
    source = program(
        """
        import warnings

        import uvloop

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            uvloop.install()
        asyncio.run(leak())
        """
    )
    result = run(source)
    assert_site(the_event(result), source)
    assert "on Loop" in result.stdout


EAGER = """\
import asyncio
import gc

gc.disable()


class MyTask(asyncio.Task):
    pass


async def finish_now():
    return 42


async def fail_now():
    raise ValueError("eager boom")


async def hang():
    await asyncio.get_running_loop().create_future()


async def main():
    asyncio.get_running_loop().set_task_factory(FACTORY)
    done = asyncio.create_task(finish_now(), name="finished")
    print("finished before create_task returned:", done.done(), done.result())
    del done
    asyncio.create_task(fail_now(), name="failed")  # SITE-FAILED
    gc.collect()
    asyncio.create_task(hang(), name="pending")  # SITE-PENDING
    gc.collect()
    print("tasks left:", len(asyncio.all_tasks()))


asyncio.run(main())
"""


@needs((3, 12))
@pytest.mark.parametrize(
    "factory",
    ["asyncio.eager_task_factory", "asyncio.create_eager_task_factory(MyTask)"],
)
def test_eager_task_that_fails_at_once_and_is_dropped_is_reported_with_its_site(
    run: Runner, factory: str
) -> None:
    source = EAGER.replace("FACTORY", factory)
    result = run(source)
    assert result.returncode == 0, result.stderr
    assert "finished before create_task returned: True 42" in result.stdout
    assert "tasks left: 1" in result.stdout
    events = {e["task_name"]: e for e in result.anomalies()}
    assert sorted(events) == ["failed", "pending"], result.raw_events
    failed = events["failed"]
    assert failed["event"] == UNRETRIEVED
    assert failed["exception_type"] == "ValueError"
    assert failed["exception_message"] == "eager boom"
    assert_site(failed, source, "# SITE-FAILED")
    assert events["pending"]["event"] == DESTROYED
    assert_site(events["pending"], source, "# SITE-PENDING")


def test_tasks_leaked_after_uninstall_are_not_reported_and_loops_are_plain_again(
    run: Runner,
) -> None:
    source = program(
        """
        import asyncio_agent

        base = asyncio.BaseEventLoop
        registry = getattr(asyncio.tasks, "_scheduled_tasks", None)
        if registry is None:
            registry = asyncio.tasks._all_tasks
        print("wrapped before:", hasattr(base.create_task, "__wrapped__"))
        print("registry hooked before:", "add" in vars(registry))
        asyncio.run(leak("before"))
        asyncio_agent.uninstall()
        print("installed:", asyncio_agent.is_installed())
        print("registry hooked:", "add" in vars(registry))
        for name in ("create_task", "call_exception_handler"):
            function = getattr(base, name)
            print(name, "wrapped:", hasattr(function, "__wrapped__"), function.__module__)
            print(name, "code in:", os.path.basename(function.__code__.co_filename))
        loop = asyncio.new_event_loop()
        print("same function:", type(loop).create_task is base.create_task)
        print("own attribute:", "create_task" in type(loop).__dict__)
        loop.run_until_complete(leak("after"))
        loop.close()
        asyncio.run(leak("after-run"))
        """
    )
    result = run(source)
    assert result.returncode == 0, result.stderr
    for line in (
        "wrapped before: True",
        f"registry hooked before: {not SHAPE_314}",
        "installed: False",
        "registry hooked: False",
        "create_task wrapped: False asyncio.base_events",
        "call_exception_handler wrapped: False asyncio.base_events",
        "create_task code in: base_events.py",
        "call_exception_handler code in: base_events.py",
        "same function: True",
        "own attribute: False",
    ):
        assert line in result.stdout.splitlines(), result.stdout
    # The leak before uninstall was flushed by it; the two after it only reach CPython.
    event = the_event(result)
    assert event["task_name"] == "before"
    assert_site(event, source)
    assert result.cpython_counts() == (3, 0)


@needs_uvloop
def test_uninstall_restores_uvloop_and_its_tasks_are_no_longer_reported(run: Runner) -> None:
    source = program(
        """
        import asyncio_agent, uvloop

        def restored():
            return all(
                getattr(uvloop.Loop, name) is getattr(uvloop.loop.Loop, name)
                and not hasattr(getattr(uvloop.Loop, name), "__wrapped__")
                for name in ("create_task", "call_exception_handler")
            )
        print("patched before:", not restored())
        uvloop.run(leak("before"))
        asyncio_agent.uninstall()
        print("restored:", restored())
        own = [k for k in ("create_task", "call_exception_handler") if k in vars(uvloop.Loop)]
        print("no attributes left:", own == [])
        uvloop.run(leak("after"))
        """
    )
    result = run(source)
    assert result.returncode == 0, result.stderr
    for line in ("patched before: True", "restored: True", "no attributes left: True"):
        assert line in result.stdout.splitlines(), result.stdout
    event = the_event(result)
    assert event["task_name"] == "before"
    assert result.cpython_counts() == (2, 0)


CHILD = PRELUDE + "\nprint('child pid', os.getpid())\nasyncio.run(leak('in-child'))\n"


def test_task_leaked_in_subprocess_child_is_reported_with_its_site(run: Runner) -> None:
    source = """\
        import os
        import subprocess
        import sys

        print("parent pid", os.getpid())
        subprocess.run([sys.executable, "child.py"], check=True)
        """
    result = run(source, files={"child.py": CHILD})
    event = the_event(result)
    assert_site(event, CHILD, file="child.py")
    assert event["task_name"] == "in-child"
    assert f"child pid {event['pid']}" in result.stdout
    assert f"parent pid {event['pid']}" not in result.stdout


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_task_leaked_in_multiprocessing_child_is_reported_with_its_site(
    run: Runner, method: str
) -> None:
    source = program(
        f"""
        import multiprocessing


        def child():
            print("child pid", os.getpid(), flush=True)
            asyncio.run(leak("in-child"))


        if __name__ == "__main__":
            print("parent pid", os.getpid(), flush=True)
            process = multiprocessing.get_context("{method}").Process(target=child)
            process.start()
            process.join()
            print("child exit code", process.exitcode)
        """
    )
    result = run(source)
    assert "child exit code 0" in result.stdout, result.stderr
    event = the_event(result)
    assert_site(event, source)
    assert event["task_name"] == "in-child"
    assert f"child pid {event['pid']}" in result.stdout


def test_task_leaked_in_forked_child_is_reported_once_and_parent_reports_are_not_repeated(
    run: Runner,
) -> None:
    # The parent collects many tasks and forks at once, while most of their reports
    # are still queued: the child must not write them again, only its own one.
    source = program(
        """
        import warnings

        COUNT = 300


        async def make_many(keep):
            for i in range(COUNT):
                keep.append(asyncio.create_task(hang(), name=f"parent-{i}"))  # SITE-MANY
            await asyncio.sleep(0)


        keep = []
        loop = asyncio.new_event_loop()
        loop.run_until_complete(make_many(keep))
        loop.close()
        keep.clear()
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            print("child pid", os.getpid(), flush=True)
            asyncio.run(leak("in-child"))
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("parent pid", os.getpid(), "child status", status)
        """
    )
    result = run(source)
    assert result.returncode == 0, result.stderr
    assert "child status 0" in result.stdout
    assert len(result.raw_events.splitlines()) == 301, result.raw_events[-2000:]
    child = [e for e in result.anomalies() if e["task_name"] == "in-child"]
    assert len(child) == 1
    assert_site(child[0], source)
    assert f"child pid {child[0]['pid']}" in result.stdout
    parent = [e for e in result.anomalies() if e["task_name"] != "in-child"]
    assert sorted(e["task_name"] for e in parent) == sorted(f"parent-{i}" for i in range(300))
    assert {e["pid"] for e in parent} == {int(result.stdout.split("parent pid ")[1].split()[0])}
    assert_site(parent[0], source, "# SITE-MANY")
