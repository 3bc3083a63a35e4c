"""Stuck tasks: pending far longer than their siblings from the same creation site.

End to end in subprocesses: a service whose handler tasks come and go while one hangs
on a lost wake-up; the definition checked on real tasks with a real clock; snapshots
that run the check.
"""

from __future__ import annotations

import json
import signal

import pytest
from conftest import Runner, line_of

STUCK = "asyncio.task.stuck"

SERVICE = """
import asyncio

async def accept_loop():
    await asyncio.sleep(3600)  # one long-lived task at its own site: never "stuck"

async def worker():
    await asyncio.sleep(3600)  # a pool whose tasks all live long: never "stuck"

async def handle(n, hangs):
    if n in hangs:
        await asyncio.get_running_loop().create_future()  # a wake-up that never comes
    await asyncio.sleep(0.05)

async def main(hangs):
    server = asyncio.create_task(accept_loop())
    pool = [asyncio.create_task(worker()) for _ in range(4)]  # POOL
    running = set()
    for n in range(60):
        task = asyncio.create_task(handle(n, hangs))  # HANDLER
        running.add(task)
        task.add_done_callback(running.discard)
        await asyncio.sleep(0.02)
    for task in [server, *pool, *running]:
        task.cancel()

import sys
asyncio.run(main({int(n) for n in sys.argv[1:]}))
"""


def test_a_hung_task_is_reported_once_with_its_await_chain(run: Runner) -> None:
    result = run(SERVICE, args=("3",), env={"ASYNCIO_AGENT_STUCK_S": "0.3"})
    assert result.returncode == 0, result.stderr
    stuck = result.of_kind(STUCK)
    assert len(stuck) == 1, result.raw_events  # once per task
    event = stuck[0]
    assert event["level"] == "warning"
    assert event["coroutine"] == "handle"
    assert event["creation_line"] == line_of(SERVICE, "# HANDLER")
    assert event["creation_function"] == "main"
    assert event["task_age_s"] >= 0.3
    assert event["task_age_s"] >= 10 * event["siblings_median_age_s"]
    assert event["siblings"] >= 1
    assert event["also_stuck"] == 0
    assert event["awaiting"][0].endswith(f"app.py:{line_of(SERVICE, 'wake-up')} in handle")
    assert event["awaiting"][-1] == "-> Future"
    assert event["thread"] == "MainThread"


def test_several_hung_tasks_of_one_site_make_one_event_per_check(run: Runner) -> None:
    result = run(SERVICE, args=("3", "4", "5"), env={"ASYNCIO_AGENT_STUCK_S": "0.4"})
    stuck = result.of_kind(STUCK)
    # Each hung task is counted once: named by an event, or in its also_stuck.
    assert sum(1 + event["also_stuck"] for event in stuck) == 3, result.raw_events
    assert len(stuck) <= 3
    assert all(event["creation_line"] == line_of(SERVICE, "# HANDLER") for event in stuck)


def test_without_the_setting_nothing_is_checked(run: Runner) -> None:
    result = run(SERVICE, args=("3",))
    assert result.of_kind(STUCK) == []
    assert result.returncode == 0


DEFINITION = """
import asyncio, json, time
import asyncio_agent
from asyncio_agent import runtime
from asyncio_agent.stuck import StuckDetector

asyncio_agent.install()
found = []

async def wait():
    await asyncio.Event().wait()

async def main():
    recorder = runtime.current().recorder
    detector = StuckDetector(0.4, recorder, found.append, runtime.live_task_list)
    lone, pool, old = [], [], []
    for phase in (0, 1):
        if phase:
            await asyncio.sleep(0.6)
        lone += [asyncio.create_task(wait()) for _ in range(1 - phase)]  # LONE
        pool += [asyncio.create_task(wait()) for _ in range(2 - phase)]  # POOL
        old += [asyncio.create_task(wait()) for _ in range(1 + 2 * phase)]  # OLD
    await asyncio.sleep(0.01)
    first = [(f.coroutine, f.site.lineno, f.siblings, f.also_stuck) for f in detector.find()]
    again = detector.find()  # once per task
    print(json.dumps({"first": first, "again": len(again)}))
    for task in [*lone, *pool, *old]:
        task.cancel()

asyncio.run(main())
"""


def test_definition_siblings_median_and_ratio(run: Runner) -> None:
    result = run(DEFINITION, agent=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    # Only the old task with three young siblings is stuck (0.6 s >= 10 x ~0.01 s). The
    # lone one has no sibling; an old one of the pool has its old twin among its
    # siblings (median 0.3 s).
    assert data["first"] == [["wait", line_of(DEFINITION, "# OLD"), 3, 0]]
    assert data["again"] == 0


def test_median_without_leaves_one_element_out() -> None:
    from asyncio_agent.stuck import check_interval, median_without

    assert median_without([1.0, 2.0, 3.0], 2) == 1.5
    assert median_without([1.0, 2.0, 3.0, 100.0], 3) == 2.0
    assert median_without([1.0, 5.0], 1) == 1.0
    assert check_interval(0.1) == 0.1 and check_interval(30) == 15 and check_interval(600) == 60


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_snapshots_report_stuck_tasks_too(run: Runner) -> None:
    source = """
    import asyncio, os, signal
    from asyncio_agent import runtime

    async def handle(hang):
        if hang:
            await asyncio.get_running_loop().create_future()
        await asyncio.sleep(1)

    async def main():
        runtime.current().pipeline().stuck.stop()  # no periodic check: snapshots check
        tasks = []
        for phase in (0, 1):  # one hung task, then two siblings half a second later
            if phase:
                await asyncio.sleep(0.5)
            tasks += [asyncio.create_task(handle(not phase)) for _ in range(1 + phase)]
        await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0.3)
        for task in tasks:
            task.cancel()

    asyncio.run(main())
    """
    result = run(
        source, env={"ASYNCIO_AGENT_STUCK_S": "0.2", "ASYNCIO_AGENT_DUMP_SIGNAL": "SIGUSR1"}
    )
    names = [e["event"] for e in result.events]
    assert names == ["asyncio.tasks.snapshot", STUCK], result.raw_events
