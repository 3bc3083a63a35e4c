"""Never hurt the host: finalizer context, floods, long runs and observer effects.

Each test runs a real program that tries to break the agent (nested collections under
logging locks, many threads collecting at once, floods of leaked tasks, a million
tasks) and checks that it finishes, that memory stays bounded, and that every report
CPython logged is accounted for: written, counted as suppressed, or counted as dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from asyncio_agent.sites import MAX_SITES
from conftest import DESTROYED, Run, Runner, line_of

DROPPED = "asyncio.agent.reports_dropped"
SUPPRESSED = "asyncio.agent.reports_suppressed"


# These programs flood or churn their loop on purpose: it really is blocked, and a loop
# block event (or one dropped with the queue full) would add to the counts and bytes
# asserted here, which are the lost tasks' own. Blocking detection has its own tests.
NO_BLOCKS = {"ASYNCIO_AGENT_BLOCK_MS": "0"}


def accounted(result: Run) -> int:
    """Reports written, plus those the agent said it suppressed or dropped."""
    written = len(result.anomalies())
    suppressed = sum(e["count"] for e in result.of_kind(SUPPRESSED))
    dropped = sum(e["count"] for e in result.of_kind(DROPPED))
    return int(written + suppressed + dropped)


def last_json(result: Run) -> dict[str, Any]:
    """The program's own summary: the last line of its stdout, as JSON."""
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return summary


# -- finalizer context ---------------------------------------------------------------

COLLECT_IN_EMIT = """
import asyncio, gc, logging, sys

import asyncio_agent

COUNT = 1000
collections = 0


class CollectingHandler(logging.Handler):
    # Collects while this handler's lock (and logging's module lock) is held: the
    # finalizers of leaked tasks run right here and report through the same handler.
    def emit(self, record):
        global collections
        if record.name == "app":
            collections += 1
            gc.collect()
        sys.stderr.write(record.getMessage().splitlines()[0] + "\\n")


logging.getLogger().addHandler(CollectingHandler())
logging.getLogger().setLevel(logging.INFO)
app_log = logging.getLogger("app")


async def hang(box):
    box.append(asyncio.current_task())  # a cycle: only the collector frees it
    await asyncio.get_running_loop().create_future()


async def main():
    for i in range(COUNT):
        asyncio.create_task(hang([]))
        await asyncio.sleep(0)
        app_log.info("tick %d", i)


gc.disable()
asyncio.run(main())
gc.collect()
print('{"collections": %d, "flushed": %s}' % (collections, str(asyncio_agent.flush(30)).lower()))
"""


def test_collection_inside_a_logging_handler_emit_a_thousand_times_loses_nothing(
    run: Runner,
) -> None:
    result = run(COLLECT_IN_EMIT, env={**NO_BLOCKS, "ASYNCIO_AGENT_RATE_LIMIT": "0"}, timeout=60)
    summary = last_json(result)
    assert summary == {"collections": 1000, "flushed": True}
    pending, _ = result.cpython_counts()
    assert pending == 1000
    assert len(result.of_kind(DESTROYED)) == pending


COLLECT_IN_THREADS = """
import asyncio, gc, logging, sys, threading

import asyncio_agent

THREADS = 6
PER_THREAD = 400
# Collections as often as possible, in whichever thread allocates: the application's
# threads, and the agent's own writer thread while it is inside its queue.
gc.set_threshold(1, 1, 1)
lock = threading.Lock()
reported = 0


def count_report(loop, context):
    global reported
    with lock:  # the application's own lock, held while the finalizer reports
        reported += 1
        gc.collect()


async def hang(box):
    box.append(asyncio.current_task())
    await asyncio.get_running_loop().create_future()


async def leak_many():
    asyncio.get_running_loop().set_exception_handler(count_report)
    for i in range(PER_THREAD):
        asyncio.create_task(hang([]))
        await asyncio.sleep(0)  # automatic collections only: any thread may run them
    gc.collect()


def worker():
    loop = asyncio.new_event_loop()
    loop.run_until_complete(leak_many())
    gc.collect()
    loop.close()


threads = [threading.Thread(target=worker) for _ in range(THREADS)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
# The writer first: a collection running in its thread (it allocates while it writes)
# makes gc.collect() here return at once, leaving the last tasks uncollected.
asyncio_agent.flush(30)
gc.collect()
print('{"reported": %d, "flushed": %s}' % (reported, str(asyncio_agent.flush(30)).lower()))
"""


def test_collections_in_many_threads_at_once_neither_deadlock_nor_lose_reports(
    run: Runner,
) -> None:
    result = run(COLLECT_IN_THREADS, env={**NO_BLOCKS, "ASYNCIO_AGENT_RATE_LIMIT": "0"}, timeout=60)
    summary = last_json(result)
    assert summary == {"reported": 6 * 400, "flushed": True}
    assert len(result.of_kind(DESTROYED)) == 6 * 400


# -- floods --------------------------------------------------------------------------

FLOOD = """
import asyncio, gc, json, resource, sys, time

import asyncio_agent
import asyncio_agent.runtime as runtime

TOTAL = int(sys.argv[1])
PER_SECOND = 100_000
counted = 0
deepest_queue = 0


def count_report(loop, context):
    global counted
    counted += 1


async def hang():
    await asyncio.get_running_loop().create_future()


async def main():
    global deepest_queue
    asyncio.get_running_loop().set_exception_handler(count_report)
    installation = runtime.current()
    queue = installation.reporter._queue if installation else None
    start = time.monotonic()
    for batch in range(TOTAL // 1000):
        for _ in range(1000):
            asyncio.create_task(hang())  # FLOOD SITE
        await asyncio.sleep(0)
        if queue is not None:
            deepest_queue = max(deepest_queue, queue.qsize())
        ahead = (batch + 1) * 1000 / PER_SECOND - (time.monotonic() - start)
        if ahead > 0:
            await asyncio.sleep(ahead)  # at most PER_SECOND leaks a second
    gc.collect()
    return time.monotonic() - start


elapsed = asyncio.run(main())
gc.collect()
flushed = asyncio_agent.flush(60)
print(json.dumps({
    "counted": counted,
    "deepest_queue": deepest_queue,
    "flushed": flushed,
    "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "leaks_per_second": TOTAL / elapsed,
}))
"""


def test_flood_of_leaked_tasks_is_rate_limited_per_site_and_every_report_is_accounted_for(
    run: Runner,
) -> None:
    result = run(
        FLOOD, args=("100000",), env={**NO_BLOCKS, "ASYNCIO_AGENT_RATE_LIMIT": "50"}, timeout=60
    )
    summary = last_json(result)
    assert summary["counted"] == 100_000 and summary["flushed"] is True
    suppressed = result.of_kind(SUPPRESSED)
    assert suppressed, "a flood from one site must be summarised"
    assert {(e["creation_line"], e["suppressed_event"]) for e in suppressed} == {
        (line_of_flood_site(), DESTROYED)
    }
    # Per second at most 50 written, and whatever was held back is counted.
    assert len(result.anomalies()) < 100_000 // 10
    assert accounted(result) == 100_000


def test_flood_beyond_the_queue_size_drops_and_counts_and_the_queue_stays_bounded(
    run: Runner,
) -> None:
    env = {**NO_BLOCKS, "ASYNCIO_AGENT_RATE_LIMIT": "0", "ASYNCIO_AGENT_QUEUE_SIZE": "500"}
    result = run(FLOOD, args=("60000",), env=env, timeout=60)
    summary = last_json(result)
    assert summary["counted"] == 60_000 and summary["flushed"] is True
    assert isinstance(summary["deepest_queue"], int) and summary["deepest_queue"] <= 500 + 2
    assert result.of_kind(DROPPED), "a flood beyond the queue must drop and say so"
    assert accounted(result) == 60_000


@pytest.mark.soak
def test_soak_flood_of_100k_leaks_a_second_for_ten_seconds_stays_bounded(run: Runner) -> None:
    env = {**NO_BLOCKS, "ASYNCIO_AGENT_QUEUE_SIZE": "10000"}
    result = run(FLOOD, args=("1000000",), env=env, timeout=600)
    summary = last_json(result)
    assert summary["counted"] == 1_000_000 and summary["flushed"] is True
    assert isinstance(summary["deepest_queue"], int) and summary["deepest_queue"] <= 10_002
    assert accounted(result) == 1_000_000
    baseline = last_json(run(FLOOD, args=("1000000",), agent=False, timeout=600))
    assert isinstance(summary["max_rss_mb"], float) and isinstance(baseline["max_rss_mb"], float)
    assert summary["max_rss_mb"] < baseline["max_rss_mb"] + 64
    print(
        "leaks per second with / without the agent:",
        summary["leaks_per_second"],
        baseline["leaks_per_second"],
    )


def line_of_flood_site() -> int:
    """The line of FLOOD that creates the leaked tasks."""
    return line_of(FLOOD, "# FLOOD SITE")


# -- long runs -----------------------------------------------------------------------

LONG_RUN = """
import asyncio, gc, json, sys, tracemalloc
from pathlib import Path

import asyncio_agent
import asyncio_agent.records
from asyncio_agent.sites import MAX_SITES

TOTAL = int(sys.argv[1])
AGENT_FILES = str(Path(asyncio_agent.__file__).parent) + "/*"


def agent_bytes():
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, AGENT_FILES)]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def work(i):
    await asyncio.sleep(0)
    return i


peak_table = 0


async def complete(count):
    global peak_table
    for _ in range(count // 1000):
        tasks = [asyncio.create_task(work(i)) for i in range(1000)]
        peak_table = max(peak_table, len(asyncio_agent.records.TABLE))
        await asyncio.gather(*tasks)


def growth(step):
    # Bytes the agent holds after step() twice, minus after once: what each round
    # leaves behind for good (values replaced in place, like a site's current
    # record, count in both).
    # The table of live tasks' records may hold dead tasks' entries until its next
    # sweep (it is bounded, checked below); a sweep first measures what stays for good.
    # Tasks that ended in reference cycles are still registered until a collection
    # frees them (when depends on allocation counts: this was flaky without it).
    tracemalloc.start()
    step()
    gc.collect()
    asyncio_agent.records.sweep()
    once = agent_bytes()
    step()
    gc.collect()
    asyncio_agent.records.sweep()
    twice = agent_bytes()
    tracemalloc.stop()
    return twice - once


# Many distinct creation sites (more than the cap): one small function per site.
SITES = MAX_SITES + 600
lines = [f"def site_{i}(): return asyncio.create_task(work({i}))" for i in range(SITES)]
exec(compile("\\n".join(lines), "generated_sites.py", "exec"))
SITE_FUNCTIONS = [globals()[f"site_{i}"] for i in range(SITES)]


async def many_sites():
    await asyncio.gather(*[make() for make in SITE_FUNCTIONS])


def one_site():
    return asyncio.create_task(work(0))


fresh = iter(range(10**9))


def new_sites_step():
    # 2,000 sites never seen before (one line, called from 2,000 new functions): with
    # the tables full, none of them may be remembered.
    numbers = [next(fresh) for _ in range(2000)]
    source = "\\n".join(f"def caller_{i}(): return one_site()" for i in numbers)
    namespace = {"one_site": one_site}
    exec(compile(source, "generated_callers.py", "exec"), namespace)
    callers = [namespace[f"caller_{i}"] for i in numbers]

    async def call_all():
        await asyncio.gather(*[call() for call in callers])

    asyncio.run(call_all())


asyncio.run(complete(10_000))  # warm up: caches, structures, first sites
tasks_growth = growth(lambda: asyncio.run(complete(TOTAL // 2)))
asyncio.run(many_sites())  # fills the site tables up to their cap
sites_growth = growth(lambda: asyncio.run(many_sites()))
new_sites_growth = growth(new_sites_step)
print(json.dumps({
    "tasks_growth": tasks_growth, "sites_growth": sites_growth,
    "new_sites_growth": new_sites_growth,
    "sites": asyncio_agent.runtime.current().recorder.site_count(),
    "peak_table": peak_table, "table_bound": 3 * 1000 + asyncio_agent.records.SWEEP_SLACK,
}))
"""


def test_many_completed_tasks_and_many_sites_do_not_grow_the_agents_memory(
    run: Runner,
) -> None:
    result = run(LONG_RUN, args=("20000",), env=NO_BLOCKS, timeout=300)
    summary = last_json(result)
    assert summary["sites"] == MAX_SITES
    # 10,000 more tasks, and tasks from sites beyond the cap, may
    # not leave even one byte per task behind (1 KB is a dict resize or two).
    assert summary["tasks_growth"] < 1_000, summary
    assert summary["sites_growth"] < 1_000, summary
    assert summary["new_sites_growth"] < 1_000, summary
    # Dead tasks' records wait for their sweep; with 1,000 live tasks the table stays
    # within one and a half times that, the slack, and one batch between two checks.
    assert summary["peak_table"] <= summary["table_bound"], summary
    assert result.anomalies() == []


@pytest.mark.soak
def test_soak_a_million_completed_tasks_do_not_grow_the_agents_memory(run: Runner) -> None:
    result = run(LONG_RUN, args=("1000000",), env=NO_BLOCKS, timeout=900)
    summary = last_json(result)
    assert summary["tasks_growth"] < 1_000, summary


LOCKED_STDERR = """
import asyncio, gc, logging, sys, threading
gc.disable()
# CPython's own report logs from the finalizer too: keep it off the locked stream.
logging.basicConfig(stream=sys.__stderr__)


class LockedStream:
    # Like a buffered stream: a non-reentrant lock held while writing. The program
    # collects garbage inside write(), so the finalizers of leaked tasks run while the
    # lock is held. An agent that wrote from the finalizer would deadlock right here.
    def __init__(self, inner):
        self.inner = inner
        self.lock = threading.Lock()

    def write(self, text):
        with self.lock:
            gc.collect()
            return self.inner.write(text)

    def flush(self):
        with self.lock:
            self.inner.flush()

    def isatty(self):
        return False


sys.stderr = LockedStream(sys.stderr)


async def hang():
    await asyncio.get_running_loop().create_future()


async def main():
    for i in range(200):
        asyncio.create_task(hang())
        await asyncio.sleep(0)
        sys.stderr.write(f"tick {i}\\n")

asyncio.run(main())
SIMULATE_WRITING_IN_FINALIZER
"""


@pytest.mark.parametrize("in_finalizer", [False, True], ids=["agent", "writing_in_finalizer"])
def test_reports_never_written_from_the_finalizer_so_a_held_stream_lock_cannot_deadlock(
    run: Runner, in_finalizer: bool
) -> None:
    source = LOCKED_STDERR.replace("SIMULATE_WRITING_IN_FINALIZER", "")
    if in_finalizer:
        # The control: make the agent write in place, as if there were no queue.
        source = source.replace(
            "asyncio.run(main())",
            "import asyncio_agent.runtime\n"
            "asyncio_agent.runtime.current().reporter._inline = True\n"
            "asyncio.run(main())",
        )
        with pytest.raises(subprocess.TimeoutExpired):
            run(source, output_to_file=False, timeout=5)
        return
    result = run(source, output_to_file=False, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    pending = [e for e in events if e.get("event") == DESTROYED]
    assert len(pending) == result.stderr.count("Task was destroyed but it is pending!")
    assert len(pending) > 0


# -- a flood of raising tasks: suppression decided first, counts that add up ---------

RAISING_FLOOD = """
import asyncio, gc, json, sys

import asyncio_agent

calls = 0


class Refused(Exception):
    def __str__(self):  # user code: the agent must call it only for reports it writes
        global calls
        calls += 1
        return "refused"


async def boom():
    raise Refused()


async def main():
    # The program's own handler: CPython itself then runs no str() of the exception.
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
    for _ in range(int(sys.argv[1])):
        asyncio.create_task(boom())  # FLOOD-SITE
    await asyncio.sleep(0.01)
    gc.collect()


gc.disable()
asyncio.run(main())
print(json.dumps({"str_calls": calls, "flushed": asyncio_agent.flush(30)}))
"""


def test_a_flood_builds_reports_only_for_what_is_written_and_counts_the_rest(
    run: Runner,
) -> None:
    result = run(RAISING_FLOOD, args=("3000",), env={**NO_BLOCKS, "ASYNCIO_AGENT_RATE_LIMIT": "20"})
    summary = last_json(result)
    written = result.anomalies()
    # A second or so of flood: 20 written per second, the rest counted, nothing built.
    assert 20 <= len(written) <= 60
    assert summary["str_calls"] == len(written)
    assert accounted(result) == 3000
    suppressed = result.of_kind(SUPPRESSED)
    assert {(e["creation_line"], e["suppressed_event"]) for e in suppressed} == {
        (line_of(RAISING_FLOOD, "FLOOD-SITE"), "asyncio.task.exception_unretrieved")
    }


def test_report_command_totals_equal_cpythons_reports(run: Runner) -> None:
    # 3,000 lost tasks, a small queue and a rate limit: the report's total is still
    # 3,000, split into written, counted by the rate limit, and dropped.
    env = {**NO_BLOCKS, "ASYNCIO_AGENT_RATE_LIMIT": "100", "ASYNCIO_AGENT_QUEUE_SIZE": "200"}
    result = run(FLOOD, args=("3000",), env=env, timeout=60)
    assert last_json(result)["counted"] == 3000
    events = Path(result.folder) / "events.jsonl"
    report = subprocess.run(
        [sys.executable, "-m", "asyncio_agent", "report", str(events), "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    data = json.loads(report.stdout)
    assert data["total"] == 3000 == accounted(result)
    [group] = data["groups"]
    assert group["count"] == group["written"] + group["suppressed"]
    assert group["count"] + data["dropped"] == 3000
    table = subprocess.run(
        [sys.executable, "-m", "asyncio_agent", "report", str(events)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert table.splitlines()[1].split()[0] == str(group["count"])
    assert f"3000 lost tasks reported by CPython: {group['written']} written as events" in table
