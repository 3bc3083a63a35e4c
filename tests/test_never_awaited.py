"""Never-awaited coroutines: one event per coroutine CPython warns about, its own warning
unchanged, whatever the warnings filter; the origin when origin tracking is on.

Each program runs in a subprocess, with and without the agent, and the two runs'
output is compared.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import PYTHON_PATH_ONLY, Run, Runner, line_of

NEVER_AWAITED = "asyncio.coroutine.never_awaited"

PROGRAM = """
import asyncio, gc

async def fetch(n):
    await asyncio.sleep(0)

class Holder:
    pass

async def main():
    for n in range(3):
        fetch(n)  # LOOP
    pending = fetch(9)  # KEPT
    del pending  # DROPPED
    holder = Holder()
    holder.me, holder.coro = holder, fetch(1)  # CYCLE
    del holder
    gc.collect()  # COLLECTED
    await fetch(2)  # AWAITED: not reported
    fetch(3).close()  # CLOSED: not reported either

asyncio.run(main())
"""

WARNING = "RuntimeWarning: coroutine 'fetch' was never awaited"
_PYTHON_HOOK_FRAME = re.compile(
    r'  File "[^"]*asyncio_agent[/\\]interp[/\\]unfinished\.py", line \d+, in hook\n'
    r"    return twin\(coro\)\n"
)


def _without_python_hook_frame(text: str) -> str:
    # On the Python path (no compiled prelude), a warning turned into an exception by
    # -W error shows the agent's hook as one more frame of its traceback (documented).
    return _PYTHON_HOOK_FRAME.sub("", text)


@pytest.mark.parametrize("flags", [(), ("-W", "error"), ("-W", "ignore"), ("-W", "always")])
def test_one_event_per_coroutine_cpython_warns_about_whatever_the_filter(
    run: Runner, flags: tuple[str, ...]
) -> None:
    env = {"PYTHONWARNINGS": ",".join(flags[1:])}
    plain = run(PROGRAM, agent=False, env=env)
    agent = run(PROGRAM, env=env)
    code, out, err = agent.observable()
    if PYTHON_PATH_ONLY:
        err = _without_python_hook_frame(err)
    assert (code, out, err) == plain.observable()
    events = agent.of_kind(NEVER_AWAITED)
    # 3 in the loop, the kept one, the one in a cycle: the count -W always prints.
    assert len(events) == 5, agent.raw_events
    warnings_printed = plain.stderr.count(WARNING)
    if flags == ("-W", "always"):
        assert warnings_printed == 5
    elif flags == ("-W", "ignore"):
        assert warnings_printed == 0
    elif flags == ("-W", "error"):
        assert plain.stderr.count("Exception ignored") == 5
    else:
        assert warnings_printed == 3  # the default filter: once per line
    collected = [(e["collected_line"], e["garbage_collected"]) for e in events]
    assert collected == [
        (line_of(PROGRAM, "# LOOP"), False),
        (line_of(PROGRAM, "# LOOP"), False),
        (line_of(PROGRAM, "# LOOP"), False),
        (line_of(PROGRAM, "# DROPPED"), False),
        (line_of(PROGRAM, "# COLLECTED"), True),
    ]
    first = events[0]
    assert first["coroutine"] == "fetch"
    assert first["level"] == "error"
    assert first["collected_file"].endswith("app.py")
    assert first["collected_function"] == "main"
    # Origin tracking is off by default: where it was created is not known.
    assert first["creation_file"] is None and first["creation_stack"] == []
    assert first["thread"] == "MainThread" and first["at_shutdown"] is False
    assert isinstance(first["pid"], int)


ORIGIN_PROGRAM = """
import asyncio, sys, threading

async def fetch():
    pass

def request():
    fetch()  # CREATED

async def handler():
    request()  # CALLER

def in_a_thread():
    asyncio.run(handler())

thread = threading.Thread(target=in_a_thread, name="worker")
thread.start()
thread.join()
asyncio.run(handler())
print("depth", sys.get_coroutine_origin_tracking_depth())
"""


def test_origin_tracking_names_the_creation_line_in_every_loop_thread(run: Runner) -> None:
    result = run(ORIGIN_PROGRAM, env={"ASYNCIO_AGENT_COROUTINE_ORIGIN": "4"})
    assert result.returncode == 0, result.stderr
    events = result.of_kind(NEVER_AWAITED)
    assert [e["thread"] for e in events] == ["worker", "MainThread"]
    created = line_of(ORIGIN_PROGRAM, "# CREATED")
    for event in events:
        assert event["creation_line"] == created
        assert event["creation_function"] == "request"
        assert event["creation_file"].endswith("app.py")
        # Outermost first; asyncio's own frames left out.
        assert [frame.rsplit(" in ", 1)[1] for frame in event["creation_stack"]] == [
            "handler",
            "request",
        ]
        assert event["collected_line"] == created
    # CPython's origin tracking is on: its own warning says where, as it always does
    # with a depth set (the one visible change this setting makes).
    assert "Coroutine created at (most recent call last)" in result.stderr
    assert "depth 4" in result.stdout


def test_rate_limit_counts_what_it_holds_back(run: Runner) -> None:
    source = """
    import asyncio

    async def fetch():
        pass

    async def main():
        for _ in range(10):
            fetch()

    asyncio.run(main())
    """
    result = run(
        source, env={"ASYNCIO_AGENT_RATE_LIMIT": "2", "ASYNCIO_AGENT_COROUTINE_ORIGIN": "1"}
    )
    assert len(result.of_kind(NEVER_AWAITED)) == 2
    held = result.of_kind("asyncio.agent.reports_suppressed")
    assert [(e["suppressed_event"], e["count"]) for e in held] == [(NEVER_AWAITED, 8)]


def test_uninstall_puts_cpythons_function_back(run: Runner) -> None:
    source = """
    import warnings
    original = warnings._warn_unawaited_coroutine
    import asyncio_agent
    asyncio_agent.install()
    import asyncio  # the agent is built, and hooks the warning, when asyncio arrives
    hooked = warnings._warn_unawaited_coroutine is not original
    asyncio_agent.uninstall()
    print(hooked, warnings._warn_unawaited_coroutine is original)
    """
    result = run(source, agent=False)
    assert result.stdout.split() == ["True", "True"], result.stderr


def test_report_command_and_snapshot_know_the_kind(run: Runner) -> None:
    source = """
    import asyncio, json
    import asyncio_agent

    async def fetch():
        pass

    async def main():
        fetch()  # ONE
        fetch()  # TWO

    asyncio.run(main())
    asyncio_agent.flush()
    print(json.dumps(asyncio_agent.snapshot().to_dict()["never_awaited"]))
    """
    result = run(source, env={"ASYNCIO_AGENT_COROUTINE_ORIGIN": "2"})
    tally = json.loads(result.stdout)
    assert {(e["coroutine"], e["creation_site"].split(":")[1], e["count"]) for e in tally} == {
        ("fetch", f"{line_of(source, '# ONE')} in main", 1),
        ("fetch", f"{line_of(source, '# TWO')} in main", 1),
    }
    report = run(
        f"""
        import sys
        from asyncio_agent.cli import main
        sys.argv = ["asyncio-agent", "report", {result.folder + "/events.jsonl"!r}]
        main()
        """,
        agent=False,
    )
    table = report.stdout
    assert table.count("never awaited") == 2, table
    assert "2 anomalies" in table


def test_a_collection_in_another_thread_is_reported_in_that_thread(run: Runner) -> None:
    # The finalizer runs in whichever thread collects: the hook takes no lock and
    # imports nothing there.
    source = """
    import asyncio, gc, threading

    async def fetch():
        pass

    class Holder:
        pass

    holder = Holder()
    holder.me, holder.coro = holder, fetch()
    del holder
    collector = threading.Thread(target=gc.collect, name="collector")
    collector.start()
    collector.join()
    """
    result: Run = run(source)
    assert [e["thread"] for e in result.of_kind(NEVER_AWAITED)] == ["collector"]
    assert result.of_kind(NEVER_AWAITED)[0]["garbage_collected"] is True
