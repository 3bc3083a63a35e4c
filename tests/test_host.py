"""Never disturb the host: the modules it imports, its start-up code, its exit.

Each test runs a real program as a user would (``sitecustomize_example`` on
``PYTHONPATH`` and ``ASYNCIO_AGENT=1``) and compares what the program shows with and
without the agent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DESTROYED, SITECUSTOMIZE_DIR, UNRETRIEVED, Runner, clean_environment, line_of

# An application that has its own package called ``agent`` (a common name for
# services), with a module that creates tasks and loses two of them.
APP_AGENT_TASKS = """
import asyncio


async def forever():
    await asyncio.Event().wait()


async def boom():
    raise ValueError("lost in the app's own agent package")


def start_background():
    asyncio.create_task(forever())  # SITE-PENDING
    asyncio.create_task(boom())  # SITE-BOOM
"""

APP_MAIN = """
import asyncio, gc
gc.disable()
import agent
from agent.tasks import start_background

print("agent is the app's:", agent.MARK)


async def main():
    start_background()
    await asyncio.sleep(0)
    gc.collect()

asyncio.run(main())
print("done")
"""


def test_an_application_package_named_agent_stays_the_applications(run: Runner) -> None:
    files = {
        "agent/__init__.py": "MARK = 'the application package'\n",
        "agent/tasks.py": APP_AGENT_TASKS,
    }
    with_agent = run(APP_MAIN, files=files)
    without = run(APP_MAIN, files=files, agent=False)
    assert with_agent.stdout == "agent is the app's: the application package\ndone\n"
    assert with_agent.observable() == without.observable()
    # Its lost tasks are reported with their own creation lines, in its own files:
    # the agent's frame filter does not take a module called agent for its own.
    sites = {e["event"]: (e["creation_file"], e["creation_line"]) for e in with_agent.anomalies()}
    tasks_file = str(Path(with_agent.folder) / "agent" / "tasks.py")
    assert sites == {
        DESTROYED: (tasks_file, line_of(APP_AGENT_TASKS, "SITE-PENDING")),
        UNRETRIEVED: (tasks_file, line_of(APP_AGENT_TASKS, "SITE-BOOM")),
    }


def test_an_application_module_agent_py_stays_the_applications(run: Runner) -> None:
    files = {"agent.py": "MARK = 'the application module'\n" + APP_AGENT_TASKS}
    source = APP_MAIN.replace("from agent.tasks import", "from agent import")
    with_agent = run(source, files=files)
    without = run(source, files=files, agent=False)
    assert with_agent.stdout == "agent is the app's: the application module\ndone\n"
    assert with_agent.observable() == without.observable()
    lines = {e["creation_line"] for e in with_agent.anomalies()}
    offset = 1  # the MARK line above the tasks module's text
    assert lines == {
        line_of(APP_AGENT_TASKS, "SITE-PENDING") + offset,
        line_of(APP_AGENT_TASKS, "SITE-BOOM") + offset,
    }
    assert {e["creation_file"] for e in with_agent.anomalies()} == {
        str(Path(with_agent.folder) / "agent.py")
    }


def test_an_application_module_named_like_agent_internals_is_application_code(
    run: Runner,
) -> None:
    # agentlib and agent_tools: prefixes of nothing of ours, by file or by name.
    files = {
        "agentlib.py": APP_AGENT_TASKS,
        "agent_tools/__init__.py": "from agentlib import start_background\n",
    }
    source = APP_MAIN.replace("import agent\n", "import agent_tools as agent\n").replace(
        "from agent.tasks import start_background", "from agent_tools import start_background"
    )
    source = source.replace('print("agent is the app\'s:", agent.MARK)\n', "")
    result = run(source, files=files)
    assert {(e["creation_function"], e["creation_line"]) for e in result.anomalies()} == {
        ("start_background", line_of(APP_AGENT_TASKS, "SITE-PENDING")),
        ("start_background", line_of(APP_AGENT_TASKS, "SITE-BOOM")),
    }


# -- start-up code: a user's own sitecustomize always runs ---------------------------


def _python_without_the_agent() -> str:
    """An interpreter (this venv's base Python) where asyncio_agent is not installed."""
    base = getattr(sys, "_base_executable", None) or ""
    if not base or sys.prefix == sys.base_prefix:
        pytest.skip("needs a virtualenv: its base Python is the one without the agent")
    check = subprocess.run(
        [base, "-c", "import importlib.util as u; print(u.find_spec('asyncio_agent') is None)"],
        capture_output=True,
        text=True,
        env=clean_environment(),
        check=False,
    )
    if check.stdout.strip() != "True":
        pytest.skip(f"asyncio_agent is importable by {base}")
    return base


USER_SITECUSTOMIZE = "import sys\nsys._user_site_ran = True\n"
SHOW_USER_SITE = (
    "import sys\n"
    "print('user sitecustomize ran:', getattr(sys, '_user_site_ran', False))\n"
    "print('agent imported:', 'asyncio_agent' in sys.modules)\n"
)


def _run_with(
    python: str, folder: Path, agent_value: str | None
) -> subprocess.CompletedProcess[str]:
    user_site = folder / "user_site"
    user_site.mkdir(exist_ok=True)
    (user_site / "sitecustomize.py").write_text(USER_SITECUSTOMIZE)
    (folder / "app.py").write_text(SHOW_USER_SITE)
    env = clean_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(SITECUSTOMIZE_DIR), str(user_site)])
    if agent_value is not None:
        env["ASYNCIO_AGENT"] = agent_value
    return subprocess.run(
        [python, str(folder / "app.py")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("agent_value", [None, "0", "1"])
def test_user_sitecustomize_runs_where_the_agent_is_not_installed(
    tmp_path: Path, agent_value: str | None
) -> None:
    python = _python_without_the_agent()
    result = _run_with(python, tmp_path, agent_value)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "user sitecustomize ran: True\nagent imported: False\n"
    if agent_value == "1":
        # Asked for but missing: said once, naming the interpreter, and the program runs.
        assert result.stderr == (
            "asyncio-agent: warning: ASYNCIO_AGENT=1 but the asyncio_agent package is not "
            f"installed for {python}; running without it\n"
        )
    else:
        assert result.stderr == ""


@pytest.mark.parametrize("agent_value", [None, "0", "1"])
def test_user_sitecustomize_runs_where_the_agent_is_installed(
    tmp_path: Path, agent_value: str | None
) -> None:
    result = _run_with(sys.executable, tmp_path, agent_value)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == (
        f"user sitecustomize ran: True\nagent imported: {agent_value == '1'}\n"
    )


def test_user_sitecustomize_runs_when_the_agent_fails_to_start(run: Runner) -> None:
    # A broken installation (here: a start-up module that raises on import) must not
    # cost the user their own start-up code; it is said once, and the program runs.
    source = "import sys\nprint('user sitecustomize ran:', getattr(sys, '_user_site_ran', False))\n"
    broken = {
        "shadow/asyncio_agent/__init__.py": "",
        "shadow/asyncio_agent/startup.py": "raise RuntimeError('broken install')\n",
        "user_site/sitecustomize.py": USER_SITECUSTOMIZE,
    }
    path = os.pathsep.join(["shadow", str(SITECUSTOMIZE_DIR), "user_site"])
    result = run(source, files=broken, env={"PYTHONPATH": path})
    assert result.returncode == 0
    assert result.stdout == "user sitecustomize ran: True\n"
    assert result.stderr == (
        "asyncio-agent: warning: ASYNCIO_AGENT=1 but the asyncio_agent package could not be "
        f"imported (RuntimeError: broken install) for {sys.executable}; running without it\n"
    )


# -- exit: never hang, never re-enter itself -------------------------------------------

NO_ASYNCIO = """
import time
time.sleep(0.5)
print("done")
"""


@pytest.mark.parametrize("through", ["sitecustomize", "run"])
def test_a_program_without_asyncio_exits_with_snapshots_on(run: Runner, through: str) -> None:
    # Used to hang for ever: at exit the flush wrote the queued snapshot in the main
    # thread, which imported structlog, which imported asyncio, whose import hook
    # waited for the lock the flush held.
    env = {"ASYNCIO_AGENT_SNAPSHOT_INTERVAL": "0.1", "ASYNCIO_AGENT_DUMP_SIGNAL": "SIGUSR1"}
    if through == "run":
        runner_source = (
            "import runpy, sys\n"
            "sys.argv = ['asyncio_agent', 'run', 'program.py']\n"
            "runpy.run_module('asyncio_agent', run_name='__main__')\n"
        )
        result = run(runner_source, agent=False, env=env, files={"program.py": NO_ASYNCIO})
    else:
        result = run(NO_ASYNCIO, env=env, timeout=30)
    assert (result.returncode, result.stdout) == (0, "done\n"), result.stderr
    # No asyncio, no snapshots: a helper script that inherits the settings stays quiet.
    assert result.stderr == ""
    assert result.events == []


def test_a_snapshot_asked_for_by_signal_without_asyncio_is_written_plainly(run: Runner) -> None:
    source = """
    import os, signal, sys, time
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.2)
    print("asyncio imported:", "asyncio" in sys.modules, "structlog:", "structlog" in sys.modules)
    """
    result = run(source, env={"ASYNCIO_AGENT_DUMP_SIGNAL": "SIGUSR1"}, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "asyncio imported: False structlog: False\n"
    [snapshot] = result.events
    assert (snapshot["event"], snapshot["total"], snapshot["sites"]) == (
        "asyncio.tasks.snapshot",
        0,
        [],
    )


# Records every module import with the importing thread, and whether the program had
# ended; written line by line with os.write (no import, no buffering), so imports made
# by the agent's exit handlers are in the file too.
IMPORT_AUDIT = """
import os, sys, threading
_audit = os.open("imports.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
_ended = [False]

def _audit_hook(event, args):
    if event == "import":
        line = f"{threading.current_thread().name}\\t{args[0]}\\t{_ended[0]}\\n"
        os.write(_audit, line.encode())

sys.addaudithook(_audit_hook)
threading._register_atexit(lambda: _ended.__setitem__(0, True))  # before any exit flush
"""

EVERY_OUTPUT = """
import asyncio, gc, os, signal, time
gc.disable()

async def forever():
    await asyncio.Event().wait()

async def boom(n):
    raise ValueError(f"lost {n}")

async def main():
    for n in range(20):  # over the rate limit: suppressed counts are written too
        asyncio.create_task(boom(n))
        asyncio.create_task(forever())
    await asyncio.sleep(0.01)
    gc.collect()
    os.kill(os.getpid(), signal.SIGUSR1)  # a snapshot on demand
    await asyncio.sleep(0.3)  # and some by the timer
    for n in range(20):  # still queued when the program ends
        asyncio.create_task(boom(n))
    await asyncio.sleep(0)

asyncio.run(main())
gc.collect()
print("done")
"""


@pytest.mark.parametrize("output_format", ["json", "console"])
def test_the_agent_never_imports_while_writing_or_exiting(run: Runner, output_format: str) -> None:
    env = {
        "ASYNCIO_AGENT_SNAPSHOT_INTERVAL": "0.1",
        "ASYNCIO_AGENT_DUMP_SIGNAL": "SIGUSR1",
        "ASYNCIO_AGENT_RATE_LIMIT": "3",
        "ASYNCIO_AGENT_FORMAT": output_format,
        "ASYNCIO_AGENT_OUTPUT": "stderr",
    }
    result = run(IMPORT_AUDIT + EVERY_OUTPUT, env=env, output_to_file=False, timeout=60)
    assert (result.returncode, result.stdout) == (0, "done\n"), result.stderr[-3000:]
    assert "asyncio.task.exception_unretrieved" in result.stderr
    assert "asyncio.agent.reports_suppressed" in result.stderr
    assert "asyncio.tasks.snapshot" in result.stderr
    rows = [
        line.split("\t") for line in Path(result.folder, "imports.txt").read_text().splitlines()
    ]
    in_agent_threads = [row for row in rows if row[0].startswith("asyncio-agent")]
    after_the_end = [row for row in rows if row[2] == "True"]
    assert in_agent_threads == []
    assert after_the_end == []


# -- process-wide hooks belong to the installation -----------------------------------

LIFECYCLE = """
import atexit, os, sys

import asyncio_agent
import asyncio_agent.reporter, asyncio_agent.runtime, asyncio_agent.snapshot_dump
import asyncio_agent.sinks.events, asyncio_agent.sinks.otel

AGENT_DIR = os.path.dirname(asyncio_agent.__file__)
MODE = sys.argv[1]


def agent_code_run_by(action):
    # Which of the agent's functions run during action(), by a profile hook.
    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(AGENT_DIR):
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return calls


if MODE == "installed":
    asyncio_agent.install()
elif MODE == "uninstalled":
    asyncio_agent.install()
    asyncio_agent.uninstall()
print("at exit:", sorted(set(agent_code_run_by(atexit._run_exitfuncs))))
"""


@pytest.mark.parametrize("mode", ["imported", "installed", "uninstalled"])
def test_process_wide_hooks_are_registered_by_install_and_undone_by_uninstall(
    run: Runner, mode: str
) -> None:
    result = run(LIFECYCLE, agent=False, args=(mode,), env={"ASYNCIO_AGENT_OUTPUT": "stderr"})
    assert result.returncode == 0, result.stderr
    if mode == "installed":
        expected = "at exit: ['_at_exit', 'at_exit', 'keep_keyboard_interrupt_exit_status']"
    else:  # importing the modules registers nothing; uninstall unregisters
        expected = "at exit: []"
    assert result.stdout == expected + "\n"
    assert result.stderr == ""
