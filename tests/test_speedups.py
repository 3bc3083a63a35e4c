"""The compiled hot path (agent/interp/_speedups.c) and the Python one it mirrors.

Every other test runs on whichever path is in use (tests/run.sh runs the suite on both);
these check that the compiled one is really built and used here, that both record the
same sites for the same program, and that the setting switching it off behaves.
"""

from __future__ import annotations

import platform
import random
import sys
from typing import Any

import pytest
from asyncio_agent.interp.compiled import compiled as compiled_speedups
from conftest import DESTROYED, PYTHON_PATH_ONLY, SHAPE_314, UNRETRIEVED, Runner, line_of

CPYTHON = platform.python_implementation() == "CPython"
# The compiled path runs where it was built, unless the 3.14 shape is simulated (it
# does not know 3.14's frames, so the agent runs its Python path there).
COMPILED_RUNS = CPYTHON and not SHAPE_314

WHICH_PATH = """\
    import asyncio, asyncio_agent.runtime

    async def main():
        recorder = asyncio_agent.runtime.current().recorder
        print(type(asyncio.get_running_loop().create_task.__func__).__name__)
        print("compiled" if recorder.accelerator is not None else "python")

    asyncio.run(main())
    """


@pytest.mark.skipif(not CPYTHON, reason="the compiled path is built for CPython only")
def test_the_compiled_hot_path_is_built_for_this_python() -> None:
    # pip builds it as an optional extension: a failed build would only be a warning
    # in pip's output, and every other test would quietly run the Python path.
    import importlib

    assert importlib.import_module("asyncio_agent.interp._speedups") is not None
    # ...and it is used, except where the simulated 3.14 shape turns it off.
    assert (compiled_speedups() is not None) is COMPILED_RUNS


def test_the_agent_uses_the_compiled_path_unless_told_not_to(run: Runner) -> None:
    default = run(WHICH_PATH).stdout.split()
    off = run(WHICH_PATH, env={"ASYNCIO_AGENT_SPEEDUPS": "0"}).stdout.split()
    if COMPILED_RUNS and not PYTHON_PATH_ONLY:
        assert default == ["CreateTask", "compiled"]
    assert off == ["function", "python"]


def test_a_bad_speedups_value_warns_once_and_keeps_the_compiled_path(run: Runner) -> None:
    result = run(WHICH_PATH, env={"ASYNCIO_AGENT_SPEEDUPS": "fast"})
    warnings = [line for line in result.stderr.splitlines() if "asyncio-agent" in line]
    assert len(warnings) == 1, result.stderr
    assert "ASYNCIO_AGENT_SPEEDUPS='fast' is not one of 1/true/yes/on" in warnings[0]
    assert result.stdout.split()[-1] == ("compiled" if COMPILED_RUNS else "python")


# Sites of every shape the hot path handles: a direct call, a helper called from two
# lines (the caller is part of the site), loop.create_task, ensure_future, a callback,
# a task created inside a task, and many tasks from one line within one millisecond
# (the cache). Each leaks one task and one unretrieved exception per site.
SITES = """\
    import asyncio, gc, sys
    # No automatic collection: one could run in the agent's writer thread, and the
    # program's own gc.collect() below would then return at once without collecting
    # (CPython runs one collection at a time), leaving the tasks to asyncio.run's
    # cleanup. The README's known limits say so.
    gc.disable()

    async def hang():
        await asyncio.get_running_loop().create_future()

    async def boom():
        raise KeyError("boom")

    def spawn(coro):
        return asyncio.create_task(coro)  # site: helper

    def from_callback():
        asyncio.get_running_loop().create_task(hang())  # site: callback

    async def parent():
        asyncio.create_task(boom())  # site: inner
        await asyncio.sleep(0)

    async def main():
        loop = asyncio.get_running_loop()
        asyncio.create_task(hang())  # site: direct
        spawn(hang())  # site: first caller
        spawn(boom())  # site: second caller
        loop.create_task(boom())  # site: loop method
        asyncio.ensure_future(hang())  # site: ensure_future
        loop.call_soon(from_callback)
        asyncio.create_task(parent())  # site: parent
        for _ in range(50):
            asyncio.create_task(hang())  # site: many
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    gc.collect()
    """


Site = tuple[str, str, str, str, tuple[str, ...]]


def _sites(events: list[dict[str, Any]]) -> list[Site]:
    """(kind, file, line, function, stack) of each report, file names without folders."""
    return sorted(
        (
            str(event["event"]),
            str(event.get("creation_file", "")).rsplit("/", 1)[-1],
            str(event.get("creation_line")),
            str(event.get("creation_function")),
            tuple(str(frame).rsplit("/", 1)[-1] for frame in event.get("creation_stack") or ()),
        )
        for event in events
        if event["event"] in (DESTROYED, UNRETRIEVED)
    )


def test_both_hot_paths_record_the_same_site_for_every_task(run: Runner) -> None:
    compiled = run(SITES)
    python = run(SITES, env={"ASYNCIO_AGENT_SPEEDUPS": "0"})
    assert compiled.returncode == python.returncode == 0, compiled.stderr + python.stderr
    assert _sites(compiled.events) == _sites(python.events)
    lines = {str(line_of(SITES, f"# site: {name}")) for name in ("direct", "many", "inner")}
    assert lines <= {site[2] for site in _sites(compiled.events)}
    # The helper's two callers are two sites with the same line and their own stacks.
    helper = [s for s in _sites(compiled.events) if s[2] == str(line_of(SITES, "site: helper"))]
    callers = {s[4][-2] for s in helper}
    assert {f"app.py:{line_of(SITES, 'site: first caller')} in main"} <= callers
    assert {f"app.py:{line_of(SITES, 'site: second caller')} in main"} <= callers
    assert len(_sites(compiled.events)) == 57, compiled.stderr  # parent() itself ends well


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need Python 3.12+")
def test_an_eager_task_that_finished_at_once_keeps_its_site_on_both_paths(run: Runner) -> None:
    source = """\
        import asyncio, gc

        async def boom():
            raise KeyError("at once")

        async def main():
            asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
            asyncio.create_task(boom())  # site
            gc.collect()

        asyncio.run(main())
        """
    for env in ({}, {"ASYNCIO_AGENT_SPEEDUPS": "0"}):
        events = run(source, env=env).of_kind(UNRETRIEVED)
        assert [event["creation_line"] for event in events] == [line_of(source, "# site")]


# Tasks from create_task and tasks built directly, interleaved, many at addresses that
# dead tasks of either kind just left, some kept alive and some not: every live task's
# record must be its own (a directly built task has none). On the compiled path the
# table's writes are queued and applied a few tasks later; every read applies them.
ID_REUSE = """\
    import asyncio, gc, random
    import asyncio_agent.records as records

    async def forever():
        await asyncio.Event().wait()

    async def main():
        loop = asyncio.get_running_loop()
        rng = random.Random(17)
        kept, wrong = [], 0
        for round in range(40):
            batch = []
            for _ in range(rng.randrange(1, 300)):
                if rng.random() < 0.5:
                    batch.append((asyncio.create_task(forever()), True))  # recorded
                else:
                    batch.append((asyncio.Task(forever(), loop=loop), False))  # direct
            rng.shuffle(batch)
            kept += batch[: len(batch) // 10]
            for task, recorded in batch:
                if (records.record_of(task) is not None) != recorded:
                    wrong += 1
                if not recorded or rng.random() < 0.5:
                    task.cancel()
            del batch
            await asyncio.sleep(0)
            gc.collect()
            for task, recorded in kept:
                if (records.record_of(task) is not None) != recorded:
                    wrong += 1
        print(wrong, len(kept))
        for task, _ in kept:
            task.cancel()
        await asyncio.sleep(0)

    asyncio.run(main())
    """


def test_every_live_task_reads_its_own_record_while_ids_are_reused(run: Runner) -> None:
    for env in ({}, {"ASYNCIO_AGENT_SPEEDUPS": "0"}):
        result = run(ID_REUSE, env=env)
        wrong, kept = result.stdout.split()
        assert (wrong, int(kept) > 100) == ("0", True), result.stderr[-2000:]


@pytest.mark.skipif(not COMPILED_RUNS, reason="the compiled module is not used here")
def test_the_compiled_table_behaves_as_a_dict_of_ids() -> None:
    compiled = compiled_speedups()
    assert compiled is not None
    table, expected = compiled.Table(), {}
    rng = random.Random(17)
    for _ in range(50_000):
        key, draw = rng.randrange(1, 3_000) * 16, rng.random()
        if draw < 0.5:
            record = rng.getrandbits(56)
            table[key] = expected[key] = record
        elif draw < 0.8:
            assert table.pop(key, None) == expected.pop(key, None)
        else:
            assert table.get(key) == expected.get(key)
            assert (key in table) == (key in expected)
        assert len(table) == len(expected)
    assert all(table[key] == record for key, record in expected.items())
    assert table.get("not an id") is None and "not an id" not in table
    table.clear()
    assert len(table) == 0 and table.get(16) is None


@pytest.mark.skipif(SHAPE_314, reason="no registry to hook: records are never in the table")
def test_both_sweeps_drop_dead_tasks_entries_and_keep_live_ones(run: Runner) -> None:
    source = """\
        import asyncio, gc, asyncio_agent.records as records

        async def leaf():
            return 1

        async def main():
            dead = [asyncio.create_task(leaf()) for _ in range(3000)]
            live = [asyncio.create_task(asyncio.sleep(10)) for _ in range(200)]
            await asyncio.sleep(0)
            del dead
            gc.collect()
            path = "python" if type(records.TABLE) is dict else "compiled"
            dropped = records.sweep()
            kept = all(id(task) in records.TABLE for task in live)
            print(path, dropped, kept)
            for task in live:
                task.cancel()

        asyncio.run(main())
        """
    compiled = run(source).stdout.split()
    python = run(source, env={"ASYNCIO_AGENT_SPEEDUPS": "0"}).stdout.split()
    assert python == ["python", "3000", "True"]
    assert compiled[1:] == ["3000", "True"]
    if CPYTHON and not PYTHON_PATH_ONLY:
        assert compiled[0] == "compiled"


@pytest.mark.skipif(not COMPILED_RUNS, reason="the compiled module is not used here")
def test_a_compiled_walk_that_disagrees_with_the_interpreter_is_not_used(run: Runner) -> None:
    # The module reads CPython's private frame records. Its walk is checked against
    # sys._getframe at import; here it is made to disagree (as a layout it does not
    # know would): the Python path runs, with one notice, and sites stay exact.
    source = """
    import asyncio_agent.interp._speedups as speedups

    speedups.frame_chain = lambda depth: []
    import asyncio, gc
    gc.disable()
    import asyncio_agent.runtime

    async def forever():
        await asyncio.Event().wait()

    async def main():
        recorder = asyncio_agent.runtime.current().recorder
        print("compiled" if recorder.accelerator is not None else "python")
        asyncio.create_task(forever())  # SITE
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    result = run(source)
    assert result.stdout == "python\n", result.stderr
    notices = [line for line in result.stderr.splitlines() if "asyncio-agent" in line]
    assert notices == [
        "asyncio-agent: warning: the compiled hot path is not used: its frame walk does not "
        "match this interpreter (0 frames, not 4)"
    ]
    [event] = result.anomalies()
    assert event["creation_line"] == line_of(source, "# SITE")
