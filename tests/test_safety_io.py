"""Never hurt the host: broken outputs, bad settings, odd tasks, and privacy.

The application runs on as if nothing happened when the agent's output is deleted,
full, closed or broken, when a setting is nonsense, or when a task's coroutine or name
misbehaves; with ``ASYNCIO_AGENT_REDACT`` no exception text leaves the process, and
with ``ASYNCIO_AGENT_PATH_ROOT`` no absolute path under the root does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from asyncio_agent.config import _ENV_FIELDS, ENV_PREFIX
from conftest import DESTROYED, UNRETRIEVED, Runner

LEAK = """
import asyncio, gc
gc.disable()

async def forever():
    await asyncio.Event().wait()

async def boom():
    raise ValueError("lost")

async def main():
    asyncio.create_task(forever())
    asyncio.create_task(boom())
    await asyncio.sleep(0)
    gc.collect()

asyncio.run(main())
print("done")
"""


def agent_lines(stderr: str) -> list[str]:
    """The agent's own warning lines."""
    return [line for line in stderr.splitlines() if line.startswith("asyncio-agent")]


# -- broken outputs -------------------------------------------------------------------

LEAK_ROUNDS = """
import asyncio, gc, os, sys
import asyncio_agent
gc.disable()

async def forever():
    await asyncio.Event().wait()

async def leak(n):
    for _ in range(n):
        asyncio.create_task(forever())
    await asyncio.sleep(0)
    gc.collect()

asyncio.run(leak(3))
asyncio_agent.flush()
exec(sys.argv[1])  # break the output here
asyncio.run(leak(5))
asyncio_agent.flush()
print("still running")
"""


def test_output_file_deleted_while_running_is_recreated_with_one_warning(run: Runner) -> None:
    result = run(LEAK_ROUNDS, args=("os.remove(os.environ['ASYNCIO_AGENT_OUTPUT'])",))
    assert result.returncode == 0 and result.stdout == "still running\n", result.stderr
    assert len(result.of_kind(DESTROYED)) == 5  # the new file holds the later events
    warnings = agent_lines(result.stderr)
    assert len(warnings) == 1 and "was deleted" in warnings[0]


def test_descriptor_closed_and_reused_by_the_program_is_never_written_to(run: Runner) -> None:
    breaker = (
        "os.closerange(3, 256); mine = open('mine.txt', 'w'); mine.write('app data\\n'); "
        "mine.flush()"
    )
    result = run(LEAK_ROUNDS, args=(breaker,))
    assert result.returncode == 0 and result.stdout == "still running\n", result.stderr
    assert Path(result.folder, "mine.txt").read_text() == "app data\n"
    assert len(result.of_kind(DESTROYED)) == 8
    warnings = agent_lines(result.stderr)
    assert len(warnings) == 1 and "reopened" in warnings[0]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_warns_once_counts_the_lost_events_and_the_program_runs_on(
    run: Runner,
) -> None:
    result = run(LEAK_ROUNDS, args=("pass",), env={"ASYNCIO_AGENT_OUTPUT": "/dev/full"})
    assert result.returncode == 0 and result.stdout == "still running\n", result.stderr
    warnings = agent_lines(result.stderr)
    assert len(warnings) == 2, result.stderr
    assert "cannot write events to /dev/full" in warnings[0]
    assert "No space left on device" in warnings[0]
    assert warnings[1].startswith("asyncio-agent: warning: 8 event(s) could not be written")


def test_stdout_closed_and_replaced_by_the_program_gets_the_later_events_without_a_warning(
    run: Runner,
) -> None:
    # The agent writes to whatever sys.stdout is now, never to a stream it kept.
    breaker = "sys.stdout.close(); sys.stdout = open('later.txt', 'w')"
    source = LEAK_ROUNDS.replace('print("still running")', 'sys.stderr.write("still running\\n")')
    result = run(
        source, args=(breaker,), output_to_file=False, env={"ASYNCIO_AGENT_OUTPUT": "stdout"}
    )
    assert result.returncode == 0, result.stderr
    assert "still running" in result.stderr
    assert "Traceback" not in result.stderr
    assert agent_lines(result.stderr) == []
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 3
    later = Path(result.folder, "later.txt").read_text().splitlines()
    assert [json.loads(line)["event"] for line in later] == [DESTROYED] * 5


def test_stdout_closed_at_the_descriptor_warns_once_and_counts(run: Runner) -> None:
    source = LEAK_ROUNDS.replace('print("still running")', 'sys.stderr.write("still running\\n")')
    result = run(
        source,
        args=("os.close(1)",),
        output_to_file=False,
        env={"ASYNCIO_AGENT_OUTPUT": "stdout"},
    )
    assert result.returncode in (0, 120), result.stderr  # 120: CPython's own flush at exit
    warnings = agent_lines(result.stderr)
    assert any("cannot write events to stdout" in line for line in warnings), result.stderr
    assert any("5 event(s) could not be written to stdout" in line for line in warnings)
    assert "still running" in result.stderr


def test_a_raising_structlog_processor_of_the_application_does_not_touch_agent_events(
    run: Runner,
) -> None:
    source = (
        "import structlog\n"
        "def broken(logger, method, event_dict):\n"
        "    raise RuntimeError('app processor broke')\n"
        "structlog.configure(processors=[broken, structlog.processors.JSONRenderer()])\n" + LEAK
    )
    result = run(source)
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr
    assert {e["event"] for e in result.anomalies()} == {DESTROYED, UNRETRIEVED}
    assert agent_lines(result.stderr) == []


# -- bad settings ---------------------------------------------------------------------

# "huge" is past int()'s digit limit; "too_large" parses, so only a range check catches it.
BAD_VALUES = {
    "empty": "",
    "malformed": "lots!",
    "negative": "-5",
    "huge": "9" * 5000,
    "too_large": "1000000000000",
}
# Which (setting, value kind) are legitimate values and need no warning at all.
VALID = {
    ("OUTPUT", "malformed"),  # a file named "lots!"
    ("OUTPUT", "negative"),  # a file named "-5"
    ("OUTPUT", "too_large"),  # a file named "1000000000000"
    ("SKIP_MODULES", "empty"),
    ("SKIP_MODULES", "malformed"),
    ("SKIP_MODULES", "negative"),
    ("SKIP_MODULES", "huge"),
    ("SKIP_MODULES", "too_large"),
    ("DUMP_SIGNAL", "empty"),  # off
    ("SNAPSHOT_INTERVAL", "empty"),  # off, like DUMP_SIGNAL
    ("STUCK_S", "empty"),  # off, like SNAPSHOT_INTERVAL
}


@pytest.mark.parametrize("kind", list(BAD_VALUES))
@pytest.mark.parametrize("suffix", sorted(_ENV_FIELDS))
def test_every_setting_with_a_bad_value_gives_at_most_one_clear_warning_and_never_a_crash(
    run: Runner, suffix: str, kind: str
) -> None:
    variable = f"{ENV_PREFIX}_{suffix}"
    result = run(LEAK, env={variable: BAD_VALUES[kind]})
    assert result.returncode == 0 and result.stdout == "done\n", result.stderr[-2000:]
    assert f"{os.sep}asyncio_agent{os.sep}" not in result.stderr  # no traceback of ours
    assert "Exception ignored" not in result.stderr
    warnings = agent_lines(result.stderr)
    if (suffix, kind) in VALID:
        assert warnings == []
        return
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"asyncio-agent: warning: {variable}=")
    assert "using" in warnings[0]
    if suffix != "OUTPUT":
        # A tiny queue (QUEUE_SIZE below 1 becomes 1) may drop one: dropped is counted.
        dropped = sum(e["count"] for e in result.of_kind("asyncio.agent.reports_dropped"))
        assert len(result.anomalies()) + dropped == 2


# -- odd tasks ------------------------------------------------------------------------

ODD_TASKS = """
import asyncio, collections.abc, gc
gc.disable()


class Evil(collections.abc.Coroutine):
    # A coroutine whose name and repr both raise.
    def __getattribute__(self, name):
        if name in ("__qualname__", "__name__"):
            raise RuntimeError("no name")
        return object.__getattribute__(self, name)

    def __repr__(self):
        raise RuntimeError("no repr")

    def __await__(self):
        return self

    def send(self, value):
        # Pending for ever, on a future only the task will hold.
        future = asyncio.get_running_loop().create_future()
        future._asyncio_future_blocking = True
        return future

    def throw(self, *args):
        raise StopIteration

    def close(self):
        pass


class OddTask(asyncio.Task):
    def get_name(self):
        return 42  # not a string


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no str")


async def unprintable():
    raise Unprintable()


async def forever():
    await asyncio.Event().wait()


async def main():
    loop = asyncio.get_running_loop()
    asyncio.create_task(Evil(), name="evil")
    asyncio.create_task(unprintable(), name="unprintable")
    loop.set_task_factory(lambda loop, coro, **kw: OddTask(coro, loop=loop, **kw))
    asyncio.create_task(forever())
    loop.set_task_factory(None)
    await asyncio.sleep(0)
    gc.collect()


asyncio.run(main())
print("done")
"""


def test_coroutine_whose_name_and_repr_raise_and_odd_task_subclasses_are_reported(
    run: Runner,
) -> None:
    plain = run(ODD_TASKS, agent=False).observable()
    result = run(ODD_TASKS)
    assert result.observable()[:2] == plain[:2]
    assert "asyncio-agent" not in result.stderr
    events = result.anomalies()
    by_name = {e["task_name"]: e for e in events}
    assert set(by_name) == {"evil", "42", "unprintable"}, events
    assert by_name["evil"]["coroutine"] is None or isinstance(by_name["evil"]["coroutine"], str)
    assert by_name["42"]["coroutine"] == "forever"
    assert by_name["unprintable"]["exception_type"] == "Unprintable"
    assert isinstance(by_name["unprintable"]["exception_message"], str)


# -- privacy --------------------------------------------------------------------------

SECRETS = """
import asyncio, gc
gc.disable()
PASSWORD = "hunter2-password"


async def forever(token):
    api_key = "sk-live-api-key"  # noqa: F841
    await asyncio.Event().wait()


async def login(user, password):
    try:
        raise KeyError(f"no user {user}")
    except KeyError as exc:
        error = ConnectionError(f"login failed for {user} with {password}")
        error.add_note(f"password was {password}") if hasattr(error, "add_note") else None
        raise error from exc


async def main():
    asyncio.create_task(forever("tok-secret-token"))
    asyncio.create_task(login("ada@example.com", PASSWORD))
    await asyncio.sleep(0)
    gc.collect()


asyncio.run(main())
"""


def test_arguments_and_locals_are_never_recorded(run: Runner) -> None:
    result = run(SECRETS)
    assert len(result.anomalies()) == 2
    for secret in ("tok-secret-token", "sk-live-api-key"):
        assert secret not in result.raw_events


def test_redact_replaces_exception_messages_everywhere_by_their_type(run: Runner) -> None:
    result = run(SECRETS, env={"ASYNCIO_AGENT_REDACT": "1"})
    assert len(result.anomalies()) == 2, result.stderr
    for secret in ("hunter2-password", "ada@example.com", "tok-secret-token"):
        assert secret not in result.raw_events
    event = result.of_kind(UNRETRIEVED)[0]
    assert event["exception_type"] == "ConnectionError"
    assert event["exception_message"] == "ConnectionError"
    text = event["traceback"]
    assert text.rstrip().endswith("\nConnectionError"), text
    assert "\nKeyError\n" in text  # the cause is kept, without its message
    assert "raise error from exc" in text  # source lines stay: they are code, not data


def test_without_redact_the_exception_message_is_kept(run: Runner) -> None:
    event = run(SECRETS).of_kind(UNRETRIEVED)[0]
    assert event["exception_message"] == "login failed for ada@example.com with hunter2-password"


def test_path_root_makes_creation_file_stack_and_traceback_relative(run: Runner) -> None:
    probe = run(SECRETS)
    result = run(SECRETS, env={"ASYNCIO_AGENT_PATH_ROOT": probe.folder.rsplit("/", 1)[0]})
    folder = Path(result.folder).name
    event = result.of_kind(UNRETRIEVED)[0]
    assert event["creation_file"] == f"{folder}/app.py"
    assert all(frame.startswith(f"{folder}/app.py:") for frame in event["creation_stack"])
    assert f'File "{folder}/app.py"' in event["traceback"]
    assert result.folder not in result.raw_events
    assert json.loads(result.raw_events.splitlines()[0])["creation_file"].startswith(folder)


def test_redact_also_hides_notes_chained_groups_and_console_output(run: Runner) -> None:
    # Another angle on the same promise: the console format, a note, an exception
    # group (3.11+) and a syntax error's source line carry no secret either.
    source = """
    import asyncio, gc, sys
    gc.disable()

    async def boom():
        # Secrets made at run time: source lines stay in tracebacks (code, not data).
        password, mail, token = ("hunter2", "password"), ("ada", "example.com"), ("tok", "secret")
        code = "password = '%s-%s' +" % password
        try:
            compile(code, "<secret>", "exec")
        except SyntaxError as exc:
            error = exc
        if sys.version_info >= (3, 11):
            error.add_note("note: token %s-%s-token" % token)
            members = [error, KeyError("%s-%s-token" % token)]
            raise ExceptionGroup("group for %s@%s" % mail, members)
        raise RuntimeError("for %s@%s" % mail) from error

    async def main():
        asyncio.create_task(boom())
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    env = {
        "ASYNCIO_AGENT_REDACT": "1",
        "ASYNCIO_AGENT_OUTPUT": "stdout",
        "ASYNCIO_AGENT_FORMAT": "console",
    }
    result = run(source, env=env, output_to_file=False)
    assert "asyncio.task.exception_unretrieved" in result.stdout, result.stderr
    for secret in ("hunter2-password", "ada@example.com", "tok-secret-token"):
        assert secret not in result.stdout
    assert "SyntaxError" in result.stdout  # the types stay
