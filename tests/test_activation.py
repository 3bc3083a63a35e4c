"""Switching the agent on and off, its settings, and where its events go."""

from __future__ import annotations

import json

import pytest
from conftest import DESTROYED, UNRETRIEVED, Runner, line_of

LEAK = """
import asyncio, gc
gc.disable()

async def forever():
    await asyncio.Event().wait()

async def boom():
    raise ValueError("lost")

async def main():
    asyncio.create_task(forever())  # SITE
    asyncio.create_task(boom())
    await asyncio.sleep(0)
    gc.collect()

asyncio.run(main())
"""

SHOW_MODULES = """
import sys
print("asyncio" in sys.modules, "structlog" in sys.modules, "asyncio_agent.runtime" in sys.modules)
"""


@pytest.mark.parametrize("value", [None, "", "0", "false", "off"])
def test_agent_off_imports_nothing_heavy(run: Runner, value: str | None) -> None:
    env = {} if value is None else {"ASYNCIO_AGENT": value}
    result = run(SHOW_MODULES, agent=False, env=env)
    assert result.stdout == "False False False\n"
    assert result.stderr == ""


def test_agent_on_does_not_import_asyncio_until_the_program_does(run: Runner) -> None:
    result = run(SHOW_MODULES)
    assert result.stdout == "False False True\n"
    assert result.stderr == ""


def test_structlog_is_loaded_only_once_asyncio_is_imported(run: Runner) -> None:
    # Loaded by the reporter thread when asyncio arrives, not at start-up and not at
    # the first report (see Reporter._run for why).
    source = """
    import sys
    before = "structlog" in sys.modules
    import asyncio
    asyncio.run(asyncio.sleep(0))
    import asyncio_agent
    asyncio_agent.flush()
    print(before, "structlog" in sys.modules)
    """
    assert run(source).stdout == "False True\n"


def test_events_go_to_stderr_by_default(run: Runner) -> None:
    result = run(LEAK, output_to_file=False)
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {line["event"] for line in lines} == {DESTROYED, UNRETRIEVED}


def test_events_can_go_to_stdout(run: Runner) -> None:
    result = run(LEAK, output_to_file=False, env={"ASYNCIO_AGENT_OUTPUT": "stdout"})
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(line["event"] for line in lines) == sorted([DESTROYED, UNRETRIEVED])
    assert "{" not in result.stderr


def test_console_format_is_readable_and_shows_site_and_traceback(run: Runner) -> None:
    result = run(
        LEAK,
        output_to_file=False,
        env={"ASYNCIO_AGENT_OUTPUT": "stdout", "ASYNCIO_AGENT_FORMAT": "console"},
    )
    out = result.stdout
    assert "[error    ] asyncio.task.destroyed_pending" in out
    assert "creation_line=" + str(line_of(LEAK, "# SITE")) in out
    assert "Task created at (most recent call last):" in out
    assert "ValueError: lost" in out
    assert not out.lstrip().startswith("{")


def test_a_file_output_is_always_json_lines_appended(run: Runner, tmp_path: object) -> None:
    first = run(LEAK, env={"ASYNCIO_AGENT_FORMAT": "console"})
    assert len(first.anomalies()) == 2  # parsed as JSON by the harness


def test_stack_depth_limits_the_creation_stack(run: Runner) -> None:
    source = """
    import asyncio, gc
    gc.disable()

    async def forever():
        await asyncio.Event().wait()

    def a(): asyncio.create_task(forever())
    def b(): a()
    def c(): b()
    def d(): c()

    async def main():
        d()
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    deep = run(source).of_kind(DESTROYED)[0]
    short = run(source, env={"ASYNCIO_AGENT_STACK_DEPTH": "2"}).of_kind(DESTROYED)[0]
    assert [frame.rsplit(" in ", 1)[1] for frame in deep["creation_stack"]] == [
        "<module>",
        "main",
        "d",
        "c",
        "b",
        "a",
    ]
    assert [frame.rsplit(" in ", 1)[1] for frame in short["creation_stack"]] == ["b", "a"]
    assert short["creation_function"] == "a"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ASYNCIO_AGENT_STACK_DEPTH", "lots", "ASYNCIO_AGENT_STACK_DEPTH='lots' is not a whole"),
        ("ASYNCIO_AGENT_STACK_DEPTH", "-3", "ASYNCIO_AGENT_STACK_DEPTH='-3' is below 0; using 0"),
        ("ASYNCIO_AGENT_STACK_DEPTH", "99999999", "is above 256; using 256"),
        ("ASYNCIO_AGENT_QUEUE_SIZE", "", "ASYNCIO_AGENT_QUEUE_SIZE='' is not a whole number"),
        ("ASYNCIO_AGENT_FORMAT", "xml", "ASYNCIO_AGENT_FORMAT='xml' is not 'json' or 'console'"),
        ("ASYNCIO_AGENT_OUTPT", "x.log", "ASYNCIO_AGENT_OUTPT is not a setting of the agent"),
        ("ASYNCIO_AGENT_SPEEDUPS", "", "ASYNCIO_AGENT_SPEEDUPS='' is not one of 1/true/yes/on"),
    ],
)
def test_bad_setting_gives_one_warning_and_the_program_runs_on(
    run: Runner, variable: str, value: str, expected: str
) -> None:
    result = run(LEAK, env={variable: value})
    warnings = [line for line in result.stderr.splitlines() if "asyncio-agent" in line]
    assert len(warnings) == 1, result.stderr
    assert expected in warnings[0]
    assert warnings[0].startswith("asyncio-agent: warning: ")
    assert result.returncode == 0
    assert len(result.anomalies()) == 2


def test_unknown_activation_value_warns_and_turns_the_agent_on(run: Runner) -> None:
    result = run(LEAK, env={"ASYNCIO_AGENT": "maybe"})
    assert "ASYNCIO_AGENT='maybe' is not one of" in result.stderr
    assert len(result.anomalies()) == 2


def test_unwritable_output_path_warns_once_and_falls_back_to_stderr(run: Runner) -> None:
    result = run(
        LEAK, output_to_file=False, env={"ASYNCIO_AGENT_OUTPUT": "/proc/no/such/dir/x.jsonl"}
    )
    warnings = [line for line in result.stderr.splitlines() if "asyncio-agent" in line]
    assert len(warnings) == 1
    assert "cannot be opened for writing" in warnings[0] and "using 'stderr'" in warnings[0]
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert len(events) == 2
    assert result.returncode == 0


def test_existing_sitecustomize_of_the_user_still_runs(run: Runner) -> None:
    source = """
    import sys
    print("user sitecustomize ran:", getattr(sys, "_user_site_ran", False))
    print("agent on:", "asyncio_agent.runtime" in sys.modules)
    """
    result = run(
        source,
        files={"user_site/sitecustomize.py": "import sys\nsys._user_site_ran = True\n"},
        python_path=("user_site",),
    )
    assert result.stdout == "user sitecustomize ran: True\nagent on: True\n"


def test_dot_pth_style_activation_through_autoinstall(run: Runner) -> None:
    source = (
        "import asyncio_agent.autoinstall  # as a .pth line or your sitecustomize would\n" + LEAK
    )
    result = run(source, env={"PYTHONPATH": ""})
    assert len(result.anomalies()) == 2


def test_application_structlog_configuration_is_left_alone(run: Runner) -> None:
    before = (
        "import structlog\n"
        "structlog.configure(processors=[structlog.processors.KeyValueRenderer()])\n"
        "before = structlog.get_config()\n"
    )
    after = (
        "import asyncio_agent\n"
        "asyncio_agent.flush()\n"
        "after = structlog.get_config()\n"
        "print(before == after, [type(p).__name__ for p in after['processors']])\n"
        "structlog.get_logger().info('app_event', n=1)\n"
    )
    source = before + LEAK + after
    result = run(source)
    assert result.stdout.splitlines()[0] == "True ['KeyValueRenderer']"
    assert "event='app_event'" in result.stdout
    assert len(result.anomalies()) == 2


def test_programmatic_install_uninstall_and_flush(run: Runner, tmp_path: object) -> None:
    source = """
    import asyncio, gc, json, os, sys
    gc.disable()
    import asyncio_agent

    async def forever():
        await asyncio.Event().wait()

    async def leak():
        asyncio.create_task(forever())
        await asyncio.sleep(0)
        gc.collect()

    out = os.path.join(os.getcwd(), "mine.jsonl")
    asyncio_agent.install(output=out, stack_depth=3)
    asyncio_agent.install(output="ignored")  # idempotent
    print("installed", asyncio_agent.is_installed())
    asyncio.run(leak())
    print("flushed", asyncio_agent.flush(timeout=5))
    print("events", len(open(out).read().splitlines()))
    asyncio_agent.uninstall()
    print("installed", asyncio_agent.is_installed())
    print("plain again", not hasattr(asyncio.BaseEventLoop.create_task, "__wrapped__"))
    asyncio.run(leak())
    asyncio_agent.flush()
    print("events", len(open(out).read().splitlines()))
    """
    result = run(source, agent=False)
    assert result.stdout.splitlines() == [
        "installed True",
        "flushed True",
        "events 1",
        "installed False",
        "plain again True",
        "events 1",
    ], result.stderr


def test_unknown_install_option_is_a_type_error(run: Runner) -> None:
    source = """
    import asyncio_agent
    try:
        asyncio_agent.install(outptu="x")
    except TypeError as exc:
        print("TypeError", exc)
    print(asyncio_agent.is_installed())
    """
    result = run(source, agent=False)
    assert result.stdout.startswith("TypeError install() got unexpected keyword argument(s)")
    assert result.stdout.endswith("False\n")
