"""Never hurt the host: exits of every kind, fork, threads, and no observer effect.

Reports queued when the program ends are written whatever the way out (except
``os._exit``), reports arriving during interpreter teardown print nothing, forked
children and many writers share one file without torn lines, and the agent keeps no
task, coroutine, frame or argument alive a moment longer than without it.
"""

from __future__ import annotations

import json
import sys

import pytest
from conftest import DESTROYED, Runner

LEAK_THEN_EXIT = """
import asyncio, gc, os, signal, sys, threading
gc.disable()
COUNT = 2000


async def hang():
    await asyncio.get_running_loop().create_future()


async def leak():
    for i in range(COUNT):
        asyncio.create_task(hang(), name=f"t{i}")
    await asyncio.sleep(0)
    gc.collect()  # COUNT reports are queued now, most not yet written


WAY = sys.argv[1]
if WAY == "thread_system_exit":
    def in_thread():
        asyncio.run(leak())
        raise SystemExit(5)  # ends only this thread
    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    sys.exit(0)
asyncio.run(leak())
if WAY == "sys_exit":
    sys.exit(3)
if WAY == "exception":
    raise RuntimeError("unhandled")
if WAY == "sigint":
    os.kill(os.getpid(), signal.SIGINT)  # KeyboardInterrupt in the main thread
    signal.pause()
if WAY == "os_exit":
    os._exit(0)
"""

EXIT_CODES = {"normal": 0, "sys_exit": 3, "exception": 1, "thread_system_exit": 0, "sigint": -2}


@pytest.mark.parametrize("way", list(EXIT_CODES))
def test_reports_queued_at_exit_are_all_written_whatever_the_way_out(run: Runner, way: str) -> None:
    result = run(LEAK_THEN_EXIT, args=(way,), env={"ASYNCIO_AGENT_RATE_LIMIT": "0"})
    assert result.returncode == EXIT_CODES[way], result.stderr[-2000:]
    names = sorted(e["task_name"] for e in result.of_kind(DESTROYED))
    assert names == sorted(f"t{i}" for i in range(2000))
    assert "asyncio-agent" not in result.stderr


def test_os_exit_is_the_documented_loss_and_still_prints_nothing(run: Runner) -> None:
    result = run(LEAK_THEN_EXIT, args=("os_exit",), env={"ASYNCIO_AGENT_RATE_LIMIT": "0"})
    assert result.returncode == 0
    assert len(result.of_kind(DESTROYED)) <= 2000  # whatever was written in time
    assert "Traceback" not in result.stderr and "asyncio-agent" not in result.stderr


ALIVE_AT_TEARDOWN = """
import asyncio, gc

async def hang():
    await asyncio.get_running_loop().create_future()

async def boom():
    raise ValueError("late")

loop = asyncio.new_event_loop()
KEEP = [loop.create_task(hang()) for _ in range(50)]
KEEP += [loop.create_task(boom()) for _ in range(50)]
loop.run_until_complete(asyncio.sleep(0.01))
# The tasks stay in this module's globals: they die while the interpreter tears down.
print("bye")
"""


@pytest.mark.xfail(
    sys.version_info >= (3, 13),
    reason="3.13 teardown: CPython's own '--- Logging error ---' traceback shows the "
    "agent's call_exception_handler wrapper frame, and the order of lines differs",
    strict=False,
)
def test_reports_during_interpreter_teardown_print_nothing_more_than_cpython_does(
    run: Runner,
) -> None:
    plain = run(ALIVE_AT_TEARDOWN, agent=False).observable()
    with_agent = run(ALIVE_AT_TEARDOWN)
    code, stdout, stderr = with_agent.observable()
    # The same lines (teardown may destroy the tasks in another order), nothing more.
    assert (code, stdout) == plain[:2]
    assert sorted(stderr.splitlines()) == sorted(plain[2].splitlines())
    pending, unretrieved = with_agent.cpython_counts()
    assert len(with_agent.anomalies()) == pending + unretrieved
    assert all(e["at_shutdown"] for e in with_agent.anomalies())


# -- fork and threads -------------------------------------------------------------------

WRITER = """
import asyncio, sys, threading, warnings
warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine ... was never awaited"
THREADS, PER_THREAD = 4, 500
start = threading.Barrier(THREADS)


async def hang():
    await asyncio.get_running_loop().create_future()


def worker(tag):
    # Tasks that never ran die by reference count when their loop is closed: each
    # thread's finalizers run in that thread, all at the same time.
    loop = asyncio.new_event_loop()
    for i in range(PER_THREAD):
        loop.create_task(hang(), name=f"{tag}-{i}-" + "x" * 300)  # long lines
    start.wait()
    loop.close()


threads = [
    threading.Thread(target=worker, args=(f"{sys.argv[1]}-{n}",)) for n in range(THREADS)
]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""

PROCESSES = """
import subprocess, sys
children = [subprocess.Popen([sys.executable, "writer.py", f"p{n}"]) for n in range(4)]
print([child.wait() for child in children])
"""


def test_many_threads_in_many_processes_append_whole_lines_to_one_file(run: Runner) -> None:
    result = run(PROCESSES, files={"writer.py": WRITER}, env={"ASYNCIO_AGENT_RATE_LIMIT": "0"})
    assert result.stdout == "[0, 0, 0, 0]\n", result.stderr[-2000:]
    events = [json.loads(line) for line in result.raw_events.splitlines()]  # whole lines
    # Each task never ran: CPython warns about its coroutine too (ignored by the
    # program's filter, counted by the agent whatever the filter).
    never_awaited = [e for e in events if e["event"] == "asyncio.coroutine.never_awaited"]
    assert len(never_awaited) == 4 * 4 * 500
    lines = [e for e in events if e["event"] == "asyncio.task.destroyed_pending"]
    assert len(lines) == 4 * 4 * 500
    names = sorted(line["task_name"].rsplit("-", 1)[0] for line in lines)
    expected = sorted(f"p{p}-{t}-{i}" for p in range(4) for t in range(4) for i in range(500))
    assert names == expected


FORK_STORM = """
import asyncio, gc, os, sys, warnings
gc.disable()
warnings.simplefilter("ignore", DeprecationWarning)


async def hang():
    await asyncio.get_running_loop().create_future()


async def leak(prefix, count):
    for i in range(count):
        asyncio.create_task(hang(), name=f"{prefix}-{i}")
    await asyncio.sleep(0)
    gc.collect()


children = []
for round in range(10):
    asyncio.run(leak(f"parent{round}", 200))  # reports still queued when we fork
    pid = os.fork()
    if pid == 0:
        asyncio.run(leak(f"child{round}", 3))
        sys.exit(0)
    children.append(pid)
print([os.waitpid(pid, 0)[1] for pid in children])
"""


def test_repeated_forks_while_reports_are_queued_write_each_report_exactly_once(
    run: Runner,
) -> None:
    # Extends tests/test_loops.py's single fork: ten forks, each while the parent's
    # writer thread is busy, and the children leak too.
    result = run(FORK_STORM, env={"ASYNCIO_AGENT_RATE_LIMIT": "0"})
    assert result.stdout == "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n", result.stderr[-2000:]
    names = sorted(e["task_name"] for e in result.anomalies())
    expected = [f"parent{r}-{i}" for r in range(10) for i in range(200)]
    expected += [f"child{r}-{i}" for r in range(10) for i in range(3)]
    assert names == sorted(expected)


# -- no observer effect ---------------------------------------------------------------

COLLECTED_WHEN = """
import asyncio, gc, sys, weakref
gc.disable()
steps = []


class Secret:
    pass


async def hang(secret):
    local = Secret()  # noqa: F841
    await asyncio.get_running_loop().create_future()


async def boom(secret):
    raise ValueError("x")


async def main():
    secret = Secret()
    task = asyncio.create_task(hang(secret))
    failed = asyncio.create_task(boom(secret))
    await asyncio.sleep(0)
    refs = {
        "task": weakref.ref(task), "coro": weakref.ref(task.get_coro()),
        "failed": weakref.ref(failed), "secret": weakref.ref(secret),
    }
    del task, failed, secret
    for step in range(3):
        steps.append((step, sorted(k for k, ref in refs.items() if ref() is None)))
        gc.collect()
        await asyncio.sleep(0)
    steps.append(("end", sorted(k for k, ref in refs.items() if ref() is None)))


asyncio.run(main())
print(steps)
"""


def test_a_leaked_task_its_coroutine_and_arguments_die_at_the_same_moment_as_without_agent(
    run: Runner,
) -> None:
    plain = run(COLLECTED_WHEN, agent=False)
    with_agent = run(COLLECTED_WHEN)
    assert plain.returncode == 0, plain.stderr
    assert with_agent.stdout == plain.stdout
    assert "'secret'" in plain.stdout.splitlines()[-1]  # all of them die by the end
    assert len(with_agent.anomalies()) == 2


REFERENTS = """
import gc, sys, types

import asyncio_agent
import asyncio_agent.runtime
import asyncio_agent.records
import asyncio_agent.sites

asyncio_agent.install()
installation = asyncio_agent.runtime.current()
captured = []
patcher = installation.pipeline().patcher
submit = patcher._submit
patcher._submit = lambda report: (captured.append(report), submit(report))
import asyncio  # patched now, with the capturing submit


class Secret:
    pass


async def hang(secret):
    local = Secret()  # noqa: F841
    await asyncio.get_running_loop().create_future()


async def boom(secret):
    local = Secret()  # noqa: F841
    raise ValueError("x")


records = []


async def main():
    for coro in (hang(Secret()), boom(Secret())):
        task = asyncio.create_task(coro)
        records.append(asyncio_agent.records.record_of(task))
    await asyncio.sleep(0)
    gc.collect()


gc.disable()
asyncio.run(main())
asyncio_agent.flush()
FORBIDDEN = (types.FrameType, types.CoroutineType, types.TracebackType, asyncio.Future, Secret)
roots = [captured, records, asyncio_agent.records.TABLE, asyncio_agent.sites._SITE_LIST]
roots.append(installation)
seen, todo, bad = set(), roots, []
while todo:
    obj = todo.pop()
    if id(obj) in seen or isinstance(obj, type) or isinstance(obj, types.ModuleType):
        continue
    seen.add(id(obj))
    if isinstance(obj, FORBIDDEN) or isinstance(obj, BaseException):
        bad.append(type(obj).__name__)
        continue
    todo.extend(gc.get_referents(obj))
print(len(captured), sorted(set(bad)), all(type(r) is int for r in records))
"""


def test_nothing_reachable_from_reports_records_or_sites_refers_to_frames_or_arguments(
    run: Runner,
) -> None:
    result = run(REFERENTS, agent=False)
    assert result.stdout == "2 [] True\n", result.stderr[-3000:]
