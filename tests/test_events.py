"""Detection and events: each anomaly CPython reports becomes one event with its site.

Every test runs a real program in a subprocess with the agent switched on by env var,
and most also run it without the agent to check that the program itself saw nothing.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any

import pytest
from conftest import DESTROYED, UNRETRIEVED, Run, Runner, line_of, needs

LEAKS = """
import asyncio, gc
gc.disable()  # collections happen only where the program says, with or without agent

async def forever():
    await asyncio.Event().wait()

async def boom():
    raise ValueError("lost work")

async def main():
    asyncio.create_task(forever())  # SITE-PENDING
    asyncio.create_task(boom())  # SITE-BOOM
    await asyncio.sleep(0.01)
    gc.collect()
    print("done")

asyncio.run(main())
"""


def _only(run: Run, kind: str) -> dict[str, Any]:
    events = run.of_kind(kind)
    assert len(events) == 1, run.raw_events + run.stderr
    return events[0]


def test_unreferenced_pending_task_is_reported_with_its_creation_line(run: Runner) -> None:
    result = run(LEAKS)
    event = _only(result, DESTROYED)
    assert event["creation_file"].endswith("app.py")
    assert event["creation_line"] == line_of(LEAKS, "# SITE-PENDING")
    assert event["creation_function"] == "main"
    assert event["coroutine"] == "forever"
    assert event["task_name"] == "Task-2"
    assert event["at_shutdown"] is False
    assert event["level"] == "error"
    assert isinstance(event["task_age_s"], float) and event["task_age_s"] >= 0
    assert isinstance(event["pid"], int) and event["thread"] == "MainThread"
    assert event["timestamp"].endswith("Z")
    assert "exception_type" not in event and "traceback" not in event


def test_task_that_raised_unobserved_is_reported_with_exception_and_traceback(
    run: Runner,
) -> None:
    result = run(LEAKS)
    event = _only(result, UNRETRIEVED)
    assert event["creation_line"] == line_of(LEAKS, "# SITE-BOOM")
    assert event["coroutine"] == "boom"
    assert event["exception_type"] == "ValueError"
    assert event["exception_message"] == "lost work"
    text = event["traceback"]
    assert isinstance(text, str)
    assert text.startswith("Traceback (most recent call last):")
    assert 'raise ValueError("lost work")' in text
    assert text.rstrip().endswith("ValueError: lost work")


def test_events_match_cpython_log_lines_one_to_one(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    async def forever():
        await asyncio.Event().wait()

    async def boom(n):
        raise KeyError(n)

    async def fine():
        return 1

    async def main():
        for _ in range(3):
            asyncio.create_task(forever())
        for n in range(4):
            asyncio.create_task(boom(n))
        kept = [asyncio.create_task(fine()) for _ in range(5)]
        await asyncio.sleep(0.01)
        gc.collect()
        await asyncio.gather(*kept)

    asyncio.run(main())
    """
    with_agent = run(source)
    without = run(source, agent=False)
    assert with_agent.cpython_counts() == (3, 4)
    assert without.cpython_counts() == (3, 4)
    assert len(with_agent.of_kind(DESTROYED)) == 3
    assert len(with_agent.of_kind(UNRETRIEVED)) == 4
    assert with_agent.observable() == without.observable()


def test_refcount_death_of_failed_task_is_reported_at_once(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    async def boom():
        raise RuntimeError("nobody listens")

    async def main():
        task = asyncio.ensure_future(boom())  # SITE
        await asyncio.sleep(0)
        del task  # the last reference: no garbage collection involved
        print("after del")

    asyncio.run(main())
    """
    result = run(source)
    event = _only(result, UNRETRIEVED)
    assert event["creation_line"] == line_of(source, "# SITE")
    assert event["exception_type"] == "RuntimeError"


def test_cyclic_gc_death_keeps_the_creation_site(run: Runner) -> None:
    # The pending task and its future form a cycle: only the cyclic collector frees
    # them, and it clears weak references before finalizers run.
    source = """
    import asyncio, gc
    gc.disable()

    async def wait_forever():
        fut = asyncio.get_running_loop().create_future()
        await fut

    async def main():
        asyncio.get_running_loop().create_task(wait_forever())  # SITE
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    event = _only(run(source), DESTROYED)
    assert event["creation_line"] == line_of(source, "# SITE")
    assert event["coroutine"] == "wait_forever"


def test_task_created_two_helper_calls_deep_points_at_the_create_task_line(
    run: Runner,
) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    async def forever():
        await asyncio.Event().wait()

    def spawn_inner():
        asyncio.create_task(forever())  # SITE

    def spawn_outer():
        spawn_inner()  # CALLER

    async def main():
        spawn_outer()  # TOP
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    event = _only(run(source), DESTROYED)
    assert event["creation_line"] == line_of(source, "# SITE")
    assert event["creation_function"] == "spawn_inner"
    stack = event["creation_stack"]
    assert isinstance(stack, list)
    assert stack[-1].endswith(f":{line_of(source, '# SITE')} in spawn_inner")
    assert stack[-2].endswith(f":{line_of(source, '# CALLER')} in spawn_outer")
    assert stack[-3].endswith(f":{line_of(source, '# TOP')} in main")
    assert not any("asyncio" in frame for frame in stack)


def test_one_helper_called_from_two_places_gets_two_stacks(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    async def forever():
        await asyncio.Event().wait()

    def spawn():
        asyncio.create_task(forever())

    async def main():
        spawn()  # FIRST
        spawn()  # SECOND
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    events = run(source).of_kind(DESTROYED)
    assert len(events) == 2
    callers = sorted(event["creation_stack"][-2] for event in events)
    assert callers[0].endswith(f":{line_of(source, '# FIRST')} in main")
    assert callers[1].endswith(f":{line_of(source, '# SECOND')} in main")


def test_task_built_directly_never_shows_the_site_of_a_dead_task_at_its_address(
    run: Runner,
) -> None:
    # asyncio.Task(...) bypasses create_task, so it has no record. The memory of a task
    # that just died is the first to be reused: its record must not be read as this
    # task's (asyncio_agent.records drops it when the new task registers with asyncio).
    source = """
    import asyncio, gc
    gc.disable()

    async def done():
        return 1

    async def forever():
        await asyncio.Event().wait()

    async def main():
        loop = asyncio.get_running_loop()
        for _ in range(50):
            await asyncio.create_task(done())  # RECORDED
            asyncio.Task(forever(), loop=loop)  # DIRECT
            await asyncio.sleep(0)
            gc.collect()

    asyncio.run(main())
    """
    events = run(source).of_kind(DESTROYED)
    assert len(events) == 50
    assert [event.get("creation_line") for event in events] == [None] * 50


@needs((3, 11))
def test_taskgroup_create_task_site_is_the_application_line(run: Runner) -> None:
    # A TaskGroup task is awaited by the group; to leak one, the group itself must be
    # abandoned mid-flight (its parent coroutine destroyed while the group waits).
    source = """
    import asyncio, gc
    gc.disable()

    async def forever():
        await asyncio.Event().wait()

    async def worker():
        async with asyncio.TaskGroup() as group:
            group.create_task(forever())  # SITE

    async def main():
        asyncio.create_task(worker())
        await asyncio.sleep(0.01)
        gc.collect()

    asyncio.run(main())
    """
    result = run(source)
    sites = {event["creation_line"] for event in result.of_kind(DESTROYED)}
    assert line_of(source, "# SITE") in sites
    assert result.cpython_counts()[0] == len(result.of_kind(DESTROYED))


@pytest.mark.parametrize(
    "creation",
    [
        "asyncio.create_task(forever())",
        "asyncio.ensure_future(forever())",
        "asyncio.get_running_loop().create_task(forever())",
        "asyncio.create_task(forever(), name='worker-7')",
    ],
)
def test_every_creation_api_records_the_call_line(run: Runner, creation: str) -> None:
    source = f"""
    import asyncio, gc
    gc.disable()

    async def forever():
        await asyncio.Event().wait()

    async def main():
        {creation}  # SITE
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    event = _only(run(source), DESTROYED)
    assert event["creation_line"] == line_of(source, "# SITE")
    if "worker-7" in creation:
        assert event["task_name"] == "worker-7"


NOT_ANOMALIES = {
    "kept_in_a_set": """
        background = set()
        for _ in range(3):
            task = asyncio.create_task(forever())
            background.add(task)
            task.add_done_callback(background.discard)
        await asyncio.sleep(0)
        gc.collect()
        for task in list(background):
            task.cancel()
        await asyncio.sleep(0)
    """,
    "awaited": """
        await asyncio.create_task(quick())
        try:
            await asyncio.create_task(boom())
        except ValueError:
            pass
    """,
    "cancelled": """
        task = asyncio.create_task(forever())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        del task
        gc.collect()
    """,
    "gather": """
        await asyncio.gather(quick(), quick())
        try:
            await asyncio.gather(boom(), quick())
        except ValueError:
            pass
    """,
    "gather_return_exceptions": """
        results = await asyncio.gather(boom(), boom(), return_exceptions=True)
        print([type(r).__name__ for r in results])
    """,
    "exception_read": """
        task = asyncio.create_task(boom())
        await asyncio.sleep(0)
        print(type(task.exception()).__name__)
        del task
        gc.collect()
    """,
    "result_read": """
        task = asyncio.create_task(boom())
        await asyncio.sleep(0)
        try:
            task.result()
        except ValueError:
            print("result raised")
        del task
        gc.collect()
    """,
    "wait_for": """
        await asyncio.wait_for(quick(), 1)
        try:
            await asyncio.wait_for(forever(), 0.01)
        except asyncio.TimeoutError:
            print("timed out")
    """,
    "pending_at_asyncio_run_exit": """
        still_running.append(asyncio.create_task(forever()))  # run() cancels it at exit
        await asyncio.sleep(0)
    """,
}


@pytest.mark.parametrize("body", sorted(NOT_ANOMALIES))
def test_task_handled_properly_is_never_reported(run: Runner, body: str) -> None:
    main_body = textwrap.indent(textwrap.dedent(NOT_ANOMALIES[body]), "    ")
    source = (
        "import asyncio, gc\n"
        "gc.disable()\n"
        "still_running = []\n\n"
        "async def forever():\n    await asyncio.Event().wait()\n\n"
        "async def quick():\n    return 1\n\n"
        "async def boom():\n    raise ValueError('x')\n\n"
        "async def main():\n" + main_body + "\n    gc.collect()\n\n"
        "asyncio.run(main())\ngc.collect()\n"
    )
    with_agent = run(source)
    without = run(source, agent=False)
    assert with_agent.returncode == 0, with_agent.stderr
    assert with_agent.anomalies() == [], with_agent.raw_events
    assert with_agent.cpython_counts() == (0, 0)
    assert with_agent.observable() == without.observable()


@needs((3, 11))
def test_taskgroup_tasks_are_never_reported(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    async def boom():
        raise ValueError("in group")

    async def quick():
        return 1

    async def main():
        async with asyncio.TaskGroup() as group:
            group.create_task(quick())
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(boom())
                group.create_task(quick())
        except* ValueError:
            print("group failed")
        gc.collect()

    asyncio.run(main())
    """
    result = run(source)
    assert result.anomalies() == []
    assert result.cpython_counts() == (0, 0)


def test_plain_futures_are_left_to_cpython(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    async def main():
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(OSError("future, not a task"))
        del fut
        gc.collect()

    asyncio.run(main())
    """
    result = run(source)
    assert "Future exception was never retrieved" in result.stderr
    assert result.anomalies() == []


def test_gathers_own_future_is_left_to_cpython(run: Runner) -> None:
    # gather() retrieves its child's exception and sets it on its own future (a
    # _GatheringFuture, not a task): CPython reports that future, and the agent, which
    # reports tasks only, writes nothing.
    source = """
    import asyncio, gc
    gc.disable()

    async def boom():
        raise ValueError("into gather")

    async def main():
        gathering = asyncio.gather(boom())
        await asyncio.sleep(0.01)
        del gathering
        gc.collect()

    asyncio.run(main())
    """
    result = run(source)
    assert "_GatheringFuture exception was never retrieved" in result.stderr
    assert result.events == []


def test_a_plain_future_collected_in_a_cycle_is_left_to_cpython(run: Runner) -> None:
    # The other angle: a plain future that dies in a reference cycle (weakrefs cleared,
    # finalizer during a collection) and one with a subclass of Future.
    source = """
    import asyncio, gc
    gc.disable()

    class MyFuture(asyncio.Future):
        pass

    async def main():
        loop = asyncio.get_running_loop()
        for future in (loop.create_future(), MyFuture(loop=loop)):
            future.set_exception(OSError("not a task"))
            future.cycle = future
        del future
        gc.collect()

    asyncio.run(main())
    """
    result = run(source)
    assert result.stderr.count("exception was never retrieved") == 2
    assert result.events == []


def test_task_subclass_from_a_factory_is_reported_like_cpython_does(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    class TracedTask(asyncio.Task):
        pass

    async def boom():
        raise LookupError("from subclass")

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_task_factory(lambda loop, coro, **kw: TracedTask(coro, loop=loop, **kw))
        asyncio.create_task(boom())  # SITE
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    result = run(source)
    assert "TracedTask exception was never retrieved" in result.stderr
    event = _only(result, UNRETRIEVED)
    assert event["creation_line"] == line_of(source, "# SITE")
    assert event["exception_type"] == "LookupError"


def test_tasks_left_pending_when_the_loop_closes_are_marked_at_shutdown(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    async def forever():
        await asyncio.Event().wait()

    async def leak_now():
        asyncio.create_task(forever())  # SITE-LEAK
        await asyncio.sleep(0)
        gc.collect()

    async def start_and_return():
        asyncio.create_task(forever())  # SITE-SHUTDOWN
        await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(leak_now())
    loop.run_until_complete(start_and_return())
    loop.close()  # no cancellation: the second task is still pending
    gc.collect()
    """
    result = run(source)
    by_line = {event["creation_line"]: event for event in result.of_kind(DESTROYED)}
    assert by_line[line_of(source, "# SITE-LEAK")]["at_shutdown"] is False
    assert by_line[line_of(source, "# SITE-SHUTDOWN")]["at_shutdown"] is True
    assert result.cpython_counts() == (2, 0)


def test_never_started_task_destroyed_by_loop_close_is_reported(run: Runner) -> None:
    source = """
    import asyncio

    async def never_runs():
        pass

    loop = asyncio.new_event_loop()
    loop.create_task(never_runs())  # SITE
    loop.close()  # drops the scheduled step: the task dies by reference count
    """
    result = run(source)
    event = _only(result, DESTROYED)
    assert event["creation_line"] == line_of(source, "# SITE")
    assert event["creation_function"] == "<module>"
    assert event["at_shutdown"] is True


def test_user_exception_handler_still_receives_the_same_context(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    async def boom():
        raise ValueError("handled by app")

    def handler(loop, context):
        print("handler:", context["message"], sorted(context),
              type(context["exception"]).__name__)

    async def main():
        asyncio.get_running_loop().set_exception_handler(handler)
        asyncio.create_task(boom())
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    with_agent = run(source)
    without = run(source, agent=False)
    assert "handler: Task exception was never retrieved" in with_agent.stdout
    assert with_agent.observable() == without.observable()
    assert len(with_agent.of_kind(UNRETRIEVED)) == 1


def test_exception_whose_str_raises_is_reported(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    class Nasty(Exception):
        def __str__(self):
            raise RuntimeError("no str for you")

    async def boom():
        raise Nasty()

    async def main():
        asyncio.create_task(boom())
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    event = _only(run(source), UNRETRIEVED)
    assert event["exception_type"] == "Nasty"
    assert isinstance(event["exception_message"], str)


def test_exception_type_is_module_qualified_like_tracebacks(run: Runner) -> None:
    source = """
    import asyncio, gc, json
    gc.disable()

    async def boom():
        json.loads("{")

    async def main():
        asyncio.create_task(boom())
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    event = _only(run(source), UNRETRIEVED)
    assert event["exception_type"] == "json.decoder.JSONDecodeError"


def test_output_is_valid_json_lines_even_for_odd_names(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    async def forever():
        await asyncio.Event().wait()

    async def main():
        asyncio.create_task(forever(), name='quote " newline \\n unicode é')
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    event = _only(run(source), DESTROYED)
    assert event["task_name"] == 'quote " newline \n unicode é'


def test_interpreter_exit_flushes_queued_events(run: Runner) -> None:
    source = """
    import asyncio, gc, sys
    gc.disable()

    async def forever():
        await asyncio.Event().wait()

    async def main():
        for _ in range(200):
            asyncio.create_task(forever())
        await asyncio.sleep(0)
        gc.collect()
        sys.exit(3)  # straight out, with 200 reports just queued

    asyncio.run(main())
    """
    result = run(source)
    assert result.returncode == 3
    assert len(result.of_kind(DESTROYED)) == 200


def test_program_that_never_fails_produces_no_events(run: Runner) -> None:
    source = """
    import asyncio

    async def main():
        await asyncio.gather(*(asyncio.sleep(0) for _ in range(100)))
        print("ok")

    asyncio.run(main())
    """
    result = run(source)
    assert result.stdout == "ok\n"
    assert result.raw_events == ""
    assert result.stderr == ""


def test_python_version_is_one_we_support() -> None:
    assert sys.version_info >= (3, 10)
