"""The agent changes nothing a program can see: same exit code, stdout and stderr.

Each test runs one program twice, with and without the agent, and compares what it
showed. ``Run.observable`` blanks memory addresses and the run's folder (the two runs live in
two folders, and tracebacks and task reprs name the file).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest
from asyncio_agent.interp.compiled import compiled as compiled_speedups
from conftest import DESTROYED, PYTHON_PATH_ONLY, UNRETRIEVED, Run, Runner, line_of, needs

HAS_UVLOOP = sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not importable here")


def run_both(run: Runner, source: str) -> Run:
    """Run ``source`` with and without the agent, assert they look the same to a user.

    Returns the run with the agent, for assertions on its events.
    """
    with_agent = run(source, agent=True)
    without = run(source, agent=False)
    assert with_agent.observable() == without.observable()
    assert without.events == []
    return with_agent


def events_by_name(result: Run) -> dict[str, dict[str, Any]]:
    """The task events of ``result``, by task name (each name at most once)."""
    events = result.anomalies()
    by_name = {str(e["task_name"]): e for e in events}
    assert len(by_name) == len(events), result.raw_events
    return by_name


# Prints everything a program can see of tasks and loops. The driver appended to it
# decides how the loop comes to exist.
PROBE = """\
import asyncio
import contextvars
import gc
import inspect
import sys
import threading

gc.disable()
request_id = contextvars.ContextVar("request_id", default="unset")


def show(*parts):
    print(*parts, flush=True)


def describe_signature(function):
    try:
        return str(inspect.signature(function))
    except (TypeError, ValueError) as exc:
        return f"no signature ({type(exc).__name__})"


def user_handler(loop, context):
    exception = context.get("exception")
    show("handler:", context.get("message"), sorted(context), type(exception).__name__, exception)
    loop.default_exception_handler(context)


def my_factory(loop, coro, *args, **kwargs):
    show(
        "factory called:",
        loop is asyncio.get_running_loop(),
        coro.__qualname__,
        args,
        sorted(kwargs.items()),
    )
    return asyncio.Task(coro, *args, loop=loop, **kwargs)


async def child(label):
    show("in", label, "name:", asyncio.current_task().get_name(), "var:", request_id.get())
    request_id.set("set-by-" + label)
    await asyncio.sleep(0)
    return label.upper()


async def eager_child(label):
    task = asyncio.current_task()
    show("eager", label, "current:", task is not None and task.get_name(), request_id.get())
    return label


async def fail(message):
    await asyncio.sleep(0)
    raise LookupError(message)


async def hang():
    await asyncio.get_running_loop().create_future()


def bad_callback():
    raise RuntimeError("callback failed")


async def probe():
    loop = asyncio.get_running_loop()
    show("loop:", type(loop).__name__, "thread:", threading.current_thread().name)
    show("create_task signature:", describe_signature(loop.create_task))
    show("handler signature:", describe_signature(loop.call_exception_handler))
    show("create_task names:", loop.create_task.__name__, loop.create_task.__qualname__)
    show("create_task doc:", loop.create_task.__doc__)
    show("tasks at start:", len(asyncio.all_tasks()))
    show("factory at start is None:", loop.get_task_factory() is None)
    loop.set_exception_handler(user_handler)
    show("handler set:", loop.get_exception_handler() is user_handler)

    request_id.set("outer")
    first = asyncio.create_task(child("first"))
    second = loop.create_task(child("second"), name="explicit")
    show("names:", first.get_name(), second.get_name(), "tasks:", len(asyncio.all_tasks()))
    show("results:", await first, await second, "outer var:", request_id.get())
    if sys.version_info >= (3, 11):
        context = contextvars.copy_context()
        context.run(request_id.set, "in-context")
        third = asyncio.create_task(child("third"), context=context)
        show("context task:", await third, context[request_id], request_id.get())

    sleeper = asyncio.create_task(asyncio.sleep(10), name="sleeper")
    await asyncio.sleep(0)
    sleeper.cancel("stop now")
    try:
        await sleeper
    except asyncio.CancelledError as exc:
        show("cancelled:", exc.args, sleeper.cancelled())

    failing = asyncio.create_task(fail("nope"))
    try:
        await failing
    except LookupError as exc:
        show("raised:", type(exc).__name__, exc, repr(failing.exception()))
    show("gather:", await asyncio.gather(child("g1"), fail("g2"), return_exceptions=True))

    loop.set_task_factory(my_factory)
    show("factory set:", loop.get_task_factory() is my_factory)
    via = asyncio.create_task(child("via-factory"), name="named")
    show("factory task:", via.get_name(), await via)
    direct = loop.create_task(child("direct"))
    show("factory direct:", direct.get_name(), await direct)
    if sys.version_info >= (3, 11):
        copied = contextvars.copy_context()
        with_context = loop.create_task(child("with-context"), name="ctx", context=copied)
        show("factory context:", with_context.get_name(), await with_context)
    asyncio.create_task(hang(), name="leaked-via-factory")  # SITE-FACTORY
    await asyncio.sleep(0)
    gc.collect()
    loop.set_task_factory(None)
    show("factory reset is None:", loop.get_task_factory() is None)

    # uvloop 0.2x passes eager_start= to a task factory on 3.13, which
    # eager_task_factory refuses (with or without the agent): eager on asyncio only.
    if sys.version_info >= (3, 12) and isinstance(loop, asyncio.BaseEventLoop):
        loop.set_task_factory(asyncio.eager_task_factory)
        eager = asyncio.create_task(eager_child("e1"), name="eager-one")
        show("eager done at once:", eager.done(), eager.result(), eager.get_name())
        pending = asyncio.create_task(child("e2"))
        show("eager pending:", pending.done(), await pending)
        loop.set_task_factory(None)
        show("factory reset again:", loop.get_task_factory() is None)

    loop.call_soon(bad_callback)
    await asyncio.sleep(0)
    lost = asyncio.create_task(fail("lost"), name="lost")  # SITE-LOST
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    del lost
    gc.collect()
    asyncio.create_task(hang(), name="leaked")  # SITE-LEAKED
    await asyncio.sleep(0)
    gc.collect()
    show("tasks at end:", len(asyncio.all_tasks()))
    loop.set_exception_handler(None)
    return "probe done"


"""

RUN_FOREVER = """\
loop = asyncio.new_event_loop()
results = []


async def probe_then_stop():
    results.append(await probe())
    loop.stop()


main_task = loop.create_task(probe_then_stop())
loop.run_forever()
loop.close()
show(results, main_task.done())
"""

THREAD = """\
results = []
worker = threading.Thread(
    target=lambda: results.append(asyncio.run(probe())), name="loop-thread"
)
worker.start()
worker.join()
show(results)
"""

DRIVERS = [
    pytest.param("show(asyncio.run(probe()))\n", id="asyncio.run"),
    pytest.param(
        "with asyncio.Runner() as runner:\n    show(runner.run(probe()))\n",
        id="asyncio.Runner",
        marks=needs((3, 11)),
    ),
    pytest.param(
        "show(asyncio.run(probe(), loop_factory=asyncio.SelectorEventLoop))\n",
        id="asyncio.run-loop_factory",
        marks=needs((3, 12)),
    ),
    pytest.param(
        "with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:\n"
        "    show(runner.run(probe()))\n",
        id="asyncio.Runner-loop_factory",
        marks=needs((3, 12)),
    ),
    pytest.param(
        "loop = asyncio.new_event_loop()\nshow(loop.run_until_complete(probe()))\nloop.close()\n",
        id="run_until_complete",
    ),
    pytest.param(RUN_FOREVER, id="run_forever"),
    pytest.param(THREAD, id="thread"),
    pytest.param(
        "loop = asyncio.new_event_loop()\n"
        "loop.set_task_factory(asyncio.eager_task_factory)\n"
        "show(loop.run_until_complete(probe()))\n"
        "loop.close()\n",
        id="eager_task_factory",
        marks=needs((3, 12)),
    ),
    pytest.param(
        "import uvloop\n\nshow(uvloop.run(probe()))\n", id="uvloop.run", marks=needs_uvloop
    ),
    pytest.param(
        "import uvloop\n\n"
        "loop = uvloop.new_event_loop()\n"
        "show(loop.run_until_complete(probe()))\n"
        "loop.close()\n",
        id="uvloop.new_event_loop",
        marks=needs_uvloop,
    ),
]


@pytest.mark.parametrize("driver", DRIVERS)
def test_program_sees_the_same_tasks_factories_and_handlers_with_and_without_agent(
    run: Runner, driver: str
) -> None:
    source = PROBE + driver
    if "uvloop.run" in driver and not hasattr(pytest.importorskip("uvloop"), "run"):
        pytest.skip("this uvloop has no uvloop.run")
    result = run_both(run, source)
    assert result.returncode == 0, result.stderr
    assert "probe done" in result.stdout
    assert result.stdout.count("factory called:") >= 3
    # The agent was really on: every lost task is reported with its site, also the
    # ones made by the user's factory and the one after set_task_factory(None).
    events = events_by_name(result)
    assert sorted(events) == ["leaked", "leaked-via-factory", "lost"], result.raw_events
    thread = "loop-thread" if driver == THREAD else "MainThread"
    for name, kind, marker in (
        ("leaked-via-factory", DESTROYED, "# SITE-FACTORY"),
        ("lost", UNRETRIEVED, "# SITE-LOST"),
        ("leaked", DESTROYED, "# SITE-LEAKED"),
    ):
        event = events[name]
        assert event["event"] == kind, event
        assert event["creation_line"] == line_of(source, marker), event
        assert event["creation_function"] == "probe", event
        assert event["thread"] == thread, event


@needs((3, 12))
def test_dropped_eager_task_that_failed_at_once_looks_the_same_with_and_without_agent(
    run: Runner,
) -> None:
    source = """\
        import asyncio
        import gc


        async def fail_now():
            raise KeyError("eager-lost")


        async def main():
            loop = asyncio.get_running_loop()
            loop.set_task_factory(asyncio.eager_task_factory)
            asyncio.create_task(fail_now(), name="eager-lost")  # SITE
            gc.collect()
            print("after the drop", flush=True)


        asyncio.run(main())
        """
    result = run_both(run, source)
    assert result.returncode == 0, result.stderr
    assert result.cpython_counts() == (0, 1)
    (event,) = result.of_kind(UNRETRIEVED)
    assert event["creation_line"] == line_of(source, "# SITE")


LOST_TASKS = """\
    import asyncio
    import gc
    import sys

    gc.disable()


    async def hang():
        await asyncio.get_running_loop().create_future()


    async def fail():
        await asyncio.sleep(0)
        raise ValueError("never read")


    async def main():
        asyncio.create_task(hang(), name="pending")  # SITE-PENDING
        lost = asyncio.create_task(fail(), name="failed")  # SITE-FAILED
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        del lost
        gc.collect()
        print("collected", flush=True)


    if sys.argv[1:] == ["uvloop"]:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
    """


@pytest.mark.parametrize(
    "loop", ["asyncio", pytest.param("uvloop", marks=needs_uvloop)], ids=["asyncio", "uvloop"]
)
def test_cpython_task_destroyed_and_never_retrieved_lines_are_identical_with_agent(
    run: Runner, loop: str
) -> None:
    with_agent = run(LOST_TASKS, agent=True, args=(loop,))
    without = run(LOST_TASKS, agent=False, args=(loop,))
    assert with_agent.observable() == without.observable()
    assert with_agent.cpython_counts() == without.cpython_counts() == (1, 1)
    assert "Task was destroyed but it is pending!\ntask: <Task pending name='pending'" in (
        with_agent.stderr
    )
    assert "Task exception was never retrieved\nfuture: <Task finished name='failed'" in (
        with_agent.stderr
    )
    events = events_by_name(with_agent)
    assert events["pending"]["event"] == DESTROYED
    assert events["pending"]["creation_line"] == line_of(LOST_TASKS, "# SITE-PENDING")
    assert events["failed"]["event"] == UNRETRIEVED
    assert events["failed"]["creation_line"] == line_of(LOST_TASKS, "# SITE-FAILED")


@pytest.mark.parametrize(
    "loop", ["asyncio", pytest.param("uvloop", marks=needs_uvloop)], ids=["asyncio", "uvloop"]
)
def test_debug_mode_task_creation_traceback_is_identical_with_agent(run: Runner, loop: str) -> None:
    # In debug mode asyncio records where each task was created and prints it in the
    # "Task was destroyed" report and in the task's repr; the agent's wrapper must not
    # show up there.
    source = """\
        import asyncio
        import gc
        import sys

        # Only the explicit collection below runs: which of the task and its coroutine
        # is finalized first (shown as "running at" / "done" in the report) depends on
        # when automatic collections happened, with or without the agent.
        gc.disable()


        async def hang():
            await asyncio.get_running_loop().create_future()


        async def main():
            task = asyncio.create_task(hang(), name="pending")
            print("created at:", task._source_traceback[-1], flush=True)
            del task
            await asyncio.sleep(0)
            gc.collect()


        if sys.argv[1:] == ["uvloop"]:
            import uvloop

            uvloop.run(main(), debug=True)
        else:
            asyncio.run(main(), debug=True)
        """
    with_agent = run(source, agent=True, args=(loop,))
    without = run(source, agent=False, args=(loop,))
    assert with_agent.cpython_counts() == (1, 0)
    assert "agent" not in with_agent.stdout
    assert with_agent.observable() == without.observable()


@pytest.mark.xfail(
    PYTHON_PATH_ONLY or compiled_speedups() is None,
    strict=True,
    reason="known limitation of the Python hot path: its wrapper adds its own frame to any "
    "traceback that passes through loop.create_task (the compiled one adds none)",
)
def test_error_raised_by_create_task_shows_the_same_traceback_with_agent(run: Runner) -> None:
    source = """\
        import asyncio


        async def main():
            asyncio.get_running_loop().create_task("not a coroutine")


        asyncio.run(main())
        """
    result = run_both(run, source)
    assert result.returncode == 1


@pytest.mark.parametrize("leak", [False, True], ids=["no_leak", "leaks_queued"])
def test_exit_status_of_an_unhandled_keyboard_interrupt_is_unchanged(
    run: Runner, leak: bool
) -> None:
    # CPython exits with -SIGINT after an unhandled KeyboardInterrupt, unless any
    # exec()/eval() (dataclasses, namedtuple, platform...) runs during exit: the agent
    # must not import or compile anything while the program exits.
    source = f"""\
        import asyncio, gc, os, signal
        gc.disable()

        async def hang():
            await asyncio.get_running_loop().create_future()

        async def main():
            for _ in range({200 if leak else 0}):
                asyncio.create_task(hang())
            await asyncio.sleep(0)
            gc.collect()

        asyncio.run(main())
        os.kill(os.getpid(), signal.SIGINT)
        signal.pause()
        """
    with_agent = run(source, agent=True)
    without = run(source, agent=False)
    assert without.returncode == -2
    assert with_agent.observable()[0] == without.observable()[0]


def test_first_report_does_not_make_another_lost_task_die_sooner(run: Runner) -> None:
    # The first report (a failed task, freed by reference count) used to import
    # structlog; that burst of allocations ran an automatic collection which freed the
    # other lost task long before the program's own gc.collect(). Automatic GC is on.
    source = """\
        import asyncio, gc, weakref

        async def forever():
            await asyncio.Event().wait()

        async def boom():
            raise ValueError("first report")

        async def main():
            # Every run starts the program's part with an empty youngest generation:
            # what happens at start-up (which sitecustomize, which .pth files) does
            # not decide whether the baseline collects before the program does.
            gc.collect()
            lost = asyncio.create_task(forever())
            weakref.finalize(lost, print, "pending task freed", flush=True)
            del lost
            asyncio.create_task(boom())
            await asyncio.sleep(0.1)
            print("before the program's collection", flush=True)
            gc.collect()
            print("after", flush=True)

        asyncio.run(main())
        """
    with_agent = run(source, agent=True)
    without = run(source, agent=False)
    assert without.stdout.splitlines()[0] == "before the program's collection"
    assert with_agent.stdout == without.stdout
    assert len(with_agent.anomalies()) == 2
