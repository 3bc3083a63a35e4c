"""Event-loop blocking: the task or callback that froze the loop, its blocking line, its creator.

Each program runs in a subprocess with the agent switched on by env var, on asyncio's
loop and on uvloop (the loop kind is the program's first argument). Thresholds are
generous next to the blocks (a 0.6 s block against a 200 ms threshold) wherever exact
timing does not matter: these tests never assert on time, only on what was reported.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Run, Runner, line_of

HAS_UVLOOP = sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None
LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not importable")
    ),
]
BLOCKED = "asyncio.loop.blocked"

# ``run(main())`` on the loop named by the program's first argument.
PRELUDE = """\
import asyncio
import gc
import sys
import threading
import time

LOOP = sys.argv[1]


def run(coro):
    if LOOP == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    return asyncio.run(coro)
"""


def blocked(result: Run) -> list[dict[str, Any]]:
    """The blocked-loop events of a run that otherwise went as without the agent."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]
    return result.of_kind(BLOCKED)


def blamed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events that blame a task or a callback.

    On a loaded machine a loop may also not run because its process gets no CPU: those
    events (``not_scheduled``, ``outside_callbacks``, ``not_sampled``) blame nobody, and
    the tests leave them out.
    """
    return [e for e in events if e["blocked_in"] in ("task", "callback")]


def at(source: str, marker: str, function: str) -> str:
    """The ``blocking_stack`` entry of the line holding ``marker``."""
    return f"app.py:{line_of(source, marker)} in {function}"


def ends_with(stack: list[str], entry: str) -> bool:
    return bool(stack) and stack[-1].endswith(entry)


TASK_BLOCKS = (
    PRELUDE
    + """

async def short_block():
    time.sleep(0.05)  # SHORT


async def blocker():
    time.sleep(0.15)  # BLOCK


async def main():
    await asyncio.create_task(short_block(), name="short")
    await asyncio.sleep(0.1)
    await asyncio.create_task(blocker(), name="blocker-task")  # SITE
    await asyncio.sleep(0.1)
    print("done")


run(main())
"""
)


@pytest.mark.parametrize("loop", LOOPS)
def test_task_blocking_150ms_is_reported_once_with_blocking_line_and_creation_site(
    run: Runner, loop: str
) -> None:
    # The default threshold (100 ms): the 150 ms block is reported, the 50 ms one is not.
    result = run(TASK_BLOCKS, args=(loop,))
    events = blamed(blocked(result))
    assert result.stdout == "done\n"
    assert len(events) == 1, result.raw_events
    event = events[0]
    assert event["blocked_in"] == "task"
    assert event["task_name"] == "blocker-task"
    assert event["coroutine"] == "blocker"
    assert ends_with(event["blocking_stack"], at(TASK_BLOCKS, "# BLOCK", "blocker"))
    assert Path(event["creation_file"]).name == "app.py"
    assert event["creation_line"] == line_of(TASK_BLOCKS, "# SITE")
    assert event["creation_function"] == "main"
    assert event["creation_stack"][-1].endswith(f"app.py:{event['creation_line']} in main")
    assert 0.1 < event["duration_s"] < 60
    assert event["threshold_s"] == 0.1
    assert event["loop_thread"] == "MainThread"
    assert event["level"] == "warning"
    assert "callback" not in event
    assert isinstance(event["pid"], int) and event["timestamp"].endswith("Z")


CALLBACK_BLOCKS = (
    PRELUDE
    + """
gc.disable()


def slow():
    time.sleep(0.6)  # SLOW


def make_garbage():
    for _ in range(800_000):
        first = []
        first.append([first])


def collect():
    gc.collect()  # COLLECT


async def main():
    loop = asyncio.get_running_loop()
    loop.call_soon(slow)
    await asyncio.sleep(0.3)  # over once slow() returns
    # A pause: the first stall's event is written before the collection holds the GIL
    # (a thread of ours waiting for the GIL then could run before the watchdog).
    await asyncio.sleep(0.3)
    loop.call_soon(collect)
    await asyncio.sleep(0.3)
    print("done")


make_garbage()  # before the loop runs: only the collection is in a callback
run(main())
"""
)


@pytest.mark.parametrize("loop", LOOPS)
def test_blocking_callback_and_long_collection_are_blamed_on_their_callbacks(
    run: Runner, loop: str
) -> None:
    # The collection holds the GIL throughout: the watchdog looks once it returns to
    # the callback, which is still running. Its threshold is low enough for a
    # collection of 1.6 million lists on a slow machine.
    result = run(CALLBACK_BLOCKS, args=(loop,), env={"ASYNCIO_AGENT_BLOCK_MS": "40"})
    events = blamed(blocked(result))
    by_callback = {str(e.get("callback")): e for e in events}
    assert sorted(by_callback) == ["collect", "slow"], result.raw_events
    assert len(events) == 2, result.raw_events
    assert ends_with(by_callback["slow"]["blocking_stack"], at(CALLBACK_BLOCKS, "# SLOW", "slow"))
    assert ends_with(
        by_callback["collect"]["blocking_stack"], at(CALLBACK_BLOCKS, "# COLLECT", "collect")
    )
    for event in events:
        assert event["blocked_in"] == "callback"
        assert "task_name" not in event and "creation_file" not in event


GIL_ELSEWHERE = (
    PRELUDE
    + """
gc.disable()


def make_garbage():
    for _ in range(800_000):
        first = []
        first.append([first])


def collect_soon():
    time.sleep(0.1)  # by then the loop waits for its next timer
    gc.collect()


async def main():
    collector = threading.Thread(target=collect_soon)
    collector.start()
    await asyncio.sleep(0.6)
    collector.join()
    print("done")


make_garbage()
run(main())
"""
)


@pytest.mark.parametrize("loop", LOOPS)
def test_collection_in_another_thread_is_not_blamed_on_a_task_or_callback(
    run: Runner, loop: str
) -> None:
    result = run(GIL_ELSEWHERE, args=(loop,), env={"ASYNCIO_AGENT_BLOCK_MS": "40"})
    events = blocked(result)
    assert result.stdout == "done\n"
    # The loop could not run while the other thread held the GIL: reported, not blamed.
    assert events, result.raw_events
    for event in events:
        assert event["blocked_in"] in ("outside_callbacks", "not_sampled", "not_scheduled"), event
        assert "task_name" not in event and "callback" not in event


TWO_LOOPS = (
    PRELUDE
    + """

async def blocker():
    time.sleep(0.6)  # BLOCK


async def blocked_loop():
    await asyncio.sleep(0.2)
    await asyncio.create_task(blocker())  # SITE
    await asyncio.sleep(0.2)


async def busy_loop():
    for _ in range(100):
        await asyncio.sleep(0.01)


threads = [
    threading.Thread(target=run, args=(blocked_loop(),), name="blocked-loop"),
    threading.Thread(target=run, args=(busy_loop(),), name="free-loop"),
]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("done")
"""
)


@pytest.mark.parametrize("loop", LOOPS)
def test_two_loops_in_two_threads_only_the_blocked_one_is_reported(run: Runner, loop: str) -> None:
    result = run(TWO_LOOPS, args=(loop,), env={"ASYNCIO_AGENT_BLOCK_MS": "200"})
    events = blamed(blocked(result))
    assert len(events) == 1, result.raw_events
    event = events[0]
    assert event["loop_thread"] == "blocked-loop"
    assert event["coroutine"] == "blocker"
    assert event["creation_line"] == line_of(TWO_LOOPS, "# SITE")
    assert ends_with(event["blocking_stack"], at(TWO_LOOPS, "# BLOCK", "blocker"))


ECHO = (
    PRELUDE
    + """

async def echo(reader, writer):
    while data := await reader.read(64):
        writer.write(data)
        await writer.drain()
    writer.close()


async def client(port, deadline, counts):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < deadline:
        writer.write(b"ping")
        await writer.drain()
        await reader.readexactly(4)
        counts[0] += 1
    writer.close()
    await writer.wait_closed()


async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    deadline = time.monotonic() + 2.0
    counts = [0]
    await asyncio.gather(*[asyncio.create_task(client(port, deadline, counts)) for _ in range(20)])
    server.close()
    await server.wait_closed()
    print("round trips:", counts[0] > 100)


run(main())
"""
)


@pytest.mark.parametrize("loop", LOOPS)
def test_two_seconds_of_echo_server_traffic_without_blocking_gives_no_event(
    run: Runner, loop: str
) -> None:
    result = run(ECHO, args=(loop,))
    # Zero events on a quiet machine; on a loaded one (CI) the process may get no CPU
    # for a while, which is said as such and blames no task or callback.
    assert blamed(blocked(result)) == [], result.raw_events
    assert result.stdout == "round trips: True\n"


EVERY_PATH = """\
import asyncio
import sys
import threading
import time


async def blocker():
    time.sleep(0.6)  # BLOCK


async def main(name):
    await asyncio.create_task(blocker(), name=name)  # SITE


asyncio.run(main("asyncio.run"))
loop = asyncio.new_event_loop()
loop.run_until_complete(main("run_until_complete"))
loop.create_task(main("run_forever")).add_done_callback(lambda _: loop.stop())
loop.run_forever()
loop.close()
worker = threading.Thread(target=asyncio.run, args=(main("thread"),), name="worker")
worker.start()
worker.join()
if sys.version_info >= (3, 11):
    with asyncio.Runner() as runner:
        runner.run(main("Runner"))
if sys.version_info >= (3, 12):

    class MyLoop(asyncio.SelectorEventLoop):
        pass

    asyncio.run(main("loop_factory"), loop_factory=MyLoop)
print("done")
"""


def test_every_loop_path_is_watched(run: Runner) -> None:
    result = run(EVERY_PATH, env={"ASYNCIO_AGENT_BLOCK_MS": "200"})
    events = blamed(blocked(result))
    names = [e["task_name"] for e in events]
    expected = ["asyncio.run", "run_until_complete", "run_forever", "thread"]
    expected += ["Runner"] if sys.version_info >= (3, 11) else []
    expected += ["loop_factory"] if sys.version_info >= (3, 12) else []
    assert names == expected, result.raw_events
    for event in events:
        assert event["creation_line"] == line_of(EVERY_PATH, "# SITE")
        assert ends_with(event["blocking_stack"], at(EVERY_PATH, "# BLOCK", "blocker"))
        assert event["loop_thread"] == (
            "worker" if event["task_name"] == "thread" else "MainThread"
        )


BEFORE_INSTALL = """\
import asyncio
import sys
import time

import asyncio_agent

LOOP = sys.argv[1]


async def blocker():
    time.sleep(0.6)  # BLOCK


async def inside():
    asyncio_agent.install(output="events.jsonl", block_ms=200)  # the loop runs already
    await asyncio.create_task(blocker(), name="joined")
    await asyncio.sleep(0.1)


async def later():
    await asyncio.create_task(blocker(), name="made-before")


if LOOP == "uvloop":
    import uvloop

    first, second = uvloop.new_event_loop(), uvloop.new_event_loop()
else:
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
first.run_until_complete(inside())
first.close()
second.run_until_complete(later())  # created before install, run after it
second.close()
print("done")
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_loops_created_before_install_are_watched(run: Runner, loop: str) -> None:
    result = run(BEFORE_INSTALL, agent=False, args=(loop,))
    events = blamed(blocked(result))
    assert [e["task_name"] for e in events] == ["joined", "made-before"], result.raw_events
    for event in events:
        assert ends_with(event["blocking_stack"], at(BEFORE_INSTALL, "# BLOCK", "blocker"))


SETTINGS = (
    PRELUDE
    + """

async def main():
    time.sleep(0.6)
    print("watchdog:", any(t.name == "asyncio-agent-watchdog" for t in threading.enumerate()))


run(main())
"""
)


def test_block_ms_zero_turns_it_off_and_bad_values_warn_once(run: Runner) -> None:
    off = run(SETTINGS, args=("asyncio",), env={"ASYNCIO_AGENT_BLOCK_MS": "0"})
    assert blocked(off) == []
    assert off.stdout == "watchdog: False\n"

    bad = run(SETTINGS, args=("asyncio",), env={"ASYNCIO_AGENT_BLOCK_MS": "lots"})
    assert bad.stderr == (
        "asyncio-agent: warning: ASYNCIO_AGENT_BLOCK_MS='lots' is not a whole number; using 100\n"
    )
    assert [e["coroutine"] for e in blamed(bad.of_kind(BLOCKED))] == ["main"]
    assert bad.stdout == "watchdog: True\n"

    low = run(SETTINGS, args=("asyncio",), env={"ASYNCIO_AGENT_BLOCK_MS": "3"})
    assert (
        low.stderr == "asyncio-agent: warning: ASYNCIO_AGENT_BLOCK_MS='3' is below 10; using 10\n"
    )
    assert {e["threshold_s"] for e in blamed(low.of_kind(BLOCKED))} == {0.01}


SNAPSHOT = """\
import asyncio
import json
import threading
import time

import asyncio_agent


async def stuck():
    started.set()
    time.sleep(1.0)


started = threading.Event()
worker = threading.Thread(target=asyncio.run, args=(stuck(),), name="stuck-loop")
worker.start()
started.wait()
time.sleep(0.6)
print(json.dumps(asyncio_agent.snapshot().to_dict()["loops"]))
worker.join()
"""


def test_snapshot_tells_how_long_each_loop_has_been_blocked(run: Runner) -> None:
    result = run(SNAPSHOT, env={"ASYNCIO_AGENT_BLOCK_MS": "200"})
    assert result.returncode == 0, result.stderr
    loops = json.loads(result.stdout)
    assert [entry["loop_thread"] for entry in loops] == ["stuck-loop"]
    assert loops[0]["blocked_s"] > 0.2  # blocked for 0.6 s by then, minus one heartbeat
    assert len(blamed(result.of_kind(BLOCKED))) == 1


REPEATS = (
    PRELUDE
    + """

def slow():
    time.sleep(0.4)  # CALLBACK


async def fetch(seconds):
    time.sleep(seconds)  # FETCH


async def main():
    for _ in range(2):
        await asyncio.create_task(fetch(0.4))  # SITE
    asyncio.get_running_loop().call_soon(slow)
    await asyncio.sleep(0.5)


run(main())
"""
)


def test_report_command_groups_blocks_by_blocking_line_and_creation_site(run: Runner) -> None:
    result = run(REPEATS, args=("asyncio",), env={"ASYNCIO_AGENT_BLOCK_MS": "200"})
    assert len(blamed(blocked(result))) == 3, result.raw_events
    events = Path(result.folder) / "events.jsonl"
    command = [sys.executable, "-m", "asyncio_agent", "report", str(events), "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    groups = [
        group
        for group in json.loads(done.stdout)["blocked"]
        if group["blocked_by"].startswith(("task", "callback"))
    ]
    assert len(groups) == 2, groups
    fetch, slow = groups
    assert fetch["count"] == 2
    assert fetch["blocking_line"].endswith(at(REPEATS, "# FETCH", "fetch"))
    assert fetch["blocked_by"].endswith(f"app.py:{line_of(REPEATS, '# SITE')} in main")
    assert fetch["coroutines"] == {"fetch": 2}
    assert fetch["max_s"] > 0.2
    assert slow["count"] == 1
    assert slow["blocked_by"] == "callback slow"
    table = subprocess.run(
        [sys.executable, "-m", "asyncio_agent", "report", str(events)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "event loop blocks:" in table.stdout
    assert "event loop block(s)" in table.stdout


CONSOLE = (
    PRELUDE
    + """

async def main():
    time.sleep(0.6)  # BLOCK


run(main())
"""
)


def test_console_format_prints_the_blocking_stack_below_the_line(run: Runner) -> None:
    result = run(
        CONSOLE,
        args=("asyncio",),
        env={"ASYNCIO_AGENT_BLOCK_MS": "200", "ASYNCIO_AGENT_FORMAT": "console"},
        output_to_file=False,
    )
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert "asyncio.loop.blocked" in lines[0] and "blocked_in=task" in lines[0]
    assert lines[1] == "Loop blocked at (most recent call last):"
    assert any(line.endswith(at(CONSOLE, "# BLOCK", "main")) for line in lines[2:])
