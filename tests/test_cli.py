"""The ``python -m asyncio_agent`` tools, run as a user would: run, report, doctor.

Every test starts a real ``python -m asyncio_agent ...`` subprocess in a clean environment
(no sitecustomize: ``run`` must switch the agent on by itself).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import DESTROYED, REPO, SHAPE_314, UNRETRIEVED, clean_environment, line_of

LEAKY = """
import asyncio, gc, sys

async def forever():
    await asyncio.Event().wait()

async def boom():
    raise ValueError("lost work")

async def main():
    asyncio.create_task(forever())  # SITE-PENDING
    asyncio.create_task(boom())  # SITE-BOOM
    await asyncio.sleep(0.01)
    gc.collect()

print(sys.argv[1:], __name__, sys.path[0])
asyncio.run(main())
sys.exit(3)
"""


def agent_cli(
    *args: str, cwd: Path, env: Optional[dict[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    """``python -m asyncio_agent <args>`` in ``cwd`` with a clean environment."""
    environment = clean_environment()
    environment["PYTHONPATH"] = str(REPO)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "asyncio_agent", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_script_reports_creation_sites_keeps_argv_and_exit_code(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(LEAKY))
    events = tmp_path / "events.jsonl"
    result = agent_cli("run", "--output", str(events), "app.py", "a", "--output", "b", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert result.stdout == f"['a', '--output', 'b'] __main__ {tmp_path.resolve()}\n"
    by_kind = {e["event"]: e for e in _events(events)}
    assert by_kind[DESTROYED]["creation_line"] == line_of(LEAKY, "SITE-PENDING")
    assert by_kind[UNRETRIEVED]["creation_line"] == line_of(LEAKY, "SITE-BOOM")
    assert by_kind[UNRETRIEVED]["creation_file"] == str(tmp_path / "app.py")
    # The stack starts at the program: no runpy or launcher frames above it.
    assert by_kind[UNRETRIEVED]["creation_stack"][0].startswith(f"{tmp_path / 'app.py'}:")


def test_run_module_runs_it_as_main_with_its_arguments(tmp_path: Path) -> None:
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "worker.py").write_text(textwrap.dedent(LEAKY))
    result = agent_cli("run", "--format", "console", "-m", "shop.worker", "-x", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("['-x'] __main__")
    # Console events on stderr, next to CPython's own log lines.
    assert "asyncio.task.destroyed_pending" in result.stderr
    assert f"worker.py:{line_of(LEAKY, 'SITE-PENDING')} in main" in result.stderr


def test_run_uncaught_exception_looks_like_plain_python(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("def go():\n    raise RuntimeError('nope')\n\ngo()\n")
    result = agent_cli("run", "app.py", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1].startswith('  File "') and "app.py" in lines[1]
    assert "runpy" not in result.stderr and "agent" not in result.stderr
    assert lines[-1] == "RuntimeError: nope"


def test_run_missing_module_or_script_fails_like_python(tmp_path: Path) -> None:
    missing_module = agent_cli("run", "-m", "no_such_module", cwd=tmp_path)
    assert missing_module.returncode == 1
    assert missing_module.stderr.endswith("No module named no_such_module\n")
    missing_script = agent_cli("run", "nothere.py", cwd=tmp_path)
    assert missing_script.returncode == 2
    assert "can't open file" in missing_script.stderr


def _two_processes_of_events(tmp_path: Path) -> list[Path]:
    (tmp_path / "app.py").write_text(textwrap.dedent(LEAKY))
    files = []
    for name in ("one.jsonl", "two.jsonl"):
        agent_cli("run", "--output", str(tmp_path / name), "app.py", cwd=tmp_path)
        files.append(tmp_path / name)
    with files[1].open("a") as stream:
        stream.write('{"event": "some.other.log", "level": "info"}\n')  # foreign
        stream.write("plain text from another program\n")  # not JSON
        stream.write('{"timestamp": "2026-01-01T00:00:00Z", "event": "asyncio.task.de')  # cut
    return files


def test_report_groups_events_of_many_processes_and_counts_bad_lines(tmp_path: Path) -> None:
    files = _two_processes_of_events(tmp_path)
    result = agent_cli("report", *map(str, files), "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["unreadable_lines"] == 2
    assert summary["foreign_lines"] == 1
    groups = {g["kind"]: g for g in summary["groups"]}
    assert set(groups) == {DESTROYED, UNRETRIEVED}
    boom = groups[UNRETRIEVED]
    assert boom["count"] == 2
    assert len(boom["pids"]) == 2
    assert boom["creation_line"] == line_of(LEAKY, "SITE-BOOM")
    assert boom["example_exception"] == "ValueError: lost work"
    assert boom["coroutines"] == {"boom": 2}
    assert boom["first_seen"] <= boom["last_seen"]

    table = agent_cli("report", *map(str, files), cwd=tmp_path)
    assert table.returncode == 0
    header = table.stdout.splitlines()[0]
    assert header.split()[:4] == ["COUNT", "RATE-LIMITED", "KIND", "CREATION"]
    assert f"app.py:{line_of(LEAKY, 'SITE-BOOM')} in main" in table.stdout
    assert "2 line(s) unreadable (truncated or not JSON)" in table.stdout
    assert "1 line(s) not from the agent (ignored)" in table.stdout

    markdown = agent_cli("report", *map(str, files), "--format", "markdown", cwd=tmp_path)
    assert markdown.stdout.startswith("| Count | Rate-Limited | Kind | Creation Site |")
    assert markdown.stdout.count("\n| 2 |") == 2


def test_report_on_missing_file_says_so_and_fails(tmp_path: Path) -> None:
    result = agent_cli("report", "nothere.jsonl", cwd=tmp_path)
    assert result.returncode == 2
    assert "could not read nothere.jsonl" in result.stderr
    assert "Traceback" not in result.stderr


def test_doctor_shows_activation_settings_warnings_and_features(tmp_path: Path) -> None:
    result = agent_cli(
        "doctor",
        "--format",
        "json",
        cwd=tmp_path,
        env={
            "ASYNCIO_AGENT": "1",
            "ASYNCIO_AGENT_STACK_DEPTH": "lots",
            "ASYNCIO_AGENT_DUMP_SIGNAL": "usr1",
            "OTEL_SERVICE_NAME": "shop",
        },
    )
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert facts["activation"]["ASYNCIO_AGENT"] == "1"
    assert facts["activation"]["would_activate"].startswith("not at start-up")
    assert facts["settings"]["stack_depth"] == 8
    assert facts["settings"]["dump_signal"] == "SIGUSR1"
    assert any("ASYNCIO_AGENT_STACK_DEPTH='lots'" in w for w in facts["setting_warnings"])
    assert facts["output"]["otel_environment"] == {"OTEL_SERVICE_NAME": "shop"}
    features = facts["features"]
    assert features["task_group"] is (sys.version_info >= (3, 11))
    assert features["eager_tasks"] is (sys.version_info >= (3, 12))
    capabilities = features["capabilities"]
    if SHAPE_314:
        assert capabilities["live_tasks_complete"] is False
        assert "pending only" in capabilities["live_tasks"]
    else:
        assert capabilities["live_tasks"].startswith("asyncio.tasks.")
    assert features["hot_path"].startswith(("compiled", "Python ("))
    assert features["never_awaited_hook"].startswith(("compiled prelude", "Python twin"))

    text = agent_cli(
        "doctor", cwd=tmp_path, env={"PYTHONPATH": str(REPO / "sitecustomize_example")}
    )
    assert "would activate       no: ASYNCIO_AGENT is not set" in text.stdout
    assert "hot path             " in text.stdout
    assert "never-awaited hook   " in text.stdout
    assert "sitecustomize:" in text.stdout


def test_run_script_sees_argv0_main_module_and_pickles_its_functions(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        textwrap.dedent(
            """
            import pickle, sys

            def handler():
                return "ok"

            main = sys.modules["__main__"]
            print(sys.argv[0], __file__ == main.__file__, __spec__)
            print(pickle.loads(pickle.dumps(handler))())
            """
        )
    )
    ours = agent_cli("run", "app.py", cwd=tmp_path)
    plain = subprocess.run(
        [sys.executable, "app.py"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == plain.stdout == "app.py True None\nok\n"


def test_the_console_script_runs_a_program_like_python_m_asyncio_agent(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "asyncio-agent"
    (tmp_path / "app.py").write_text(textwrap.dedent(LEAKY))
    events = tmp_path / "events.jsonl"
    env = clean_environment()
    result = subprocess.run(
        [str(script), "run", "--output", str(events), "app.py", "x"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    by_kind = {e["event"]: e for e in _events(events)}
    assert by_kind[UNRETRIEVED]["creation_line"] == line_of(LEAKY, "SITE-BOOM")
    # The stack starts at the program: not at the console script.
    assert by_kind[UNRETRIEVED]["creation_stack"][0].startswith(f"{tmp_path / 'app.py'}:")


@pytest.mark.parametrize("route", ["python", "sitecustomize", "run", "console script"])
def test_ctrl_c_ends_the_program_by_sigint_whichever_way_it_runs(
    tmp_path: Path, route: str
) -> None:
    # Plain python exits by SIGINT after an unhandled KeyboardInterrupt (a shell sees an
    # interrupted program); `run` used to turn it into exit status 130.
    (tmp_path / "app.py").write_text(
        "import os, signal\nprint('started', flush=True)\nos.kill(os.getpid(), signal.SIGINT)\n"
    )
    env = clean_environment()
    command = {
        "python": [sys.executable, "app.py"],
        "sitecustomize": [sys.executable, "app.py"],
        "run": [sys.executable, "-m", "asyncio_agent", "run", "app.py"],
        "console script": [str(Path(sys.executable).parent / "asyncio-agent"), "run", "app.py"],
    }[route]
    if route == "sitecustomize":
        env.update(PYTHONPATH=str(REPO / "sitecustomize_example"), ASYNCIO_AGENT="1")
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == -signal.SIGINT, result.stderr
    assert result.stdout == "started\n"
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1] == f'  File "{tmp_path / "app.py"}", line 3, in <module>'
    assert lines[-1] == "KeyboardInterrupt"
