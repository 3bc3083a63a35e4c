"""Shared test harness: run a real program in a subprocess, with or without the agent.

The agent is switched on exactly as a user would: ``sitecustomize_example`` on
PYTHONPATH and ``ASYNCIO_AGENT=1``. Events go to a JSON-lines file so the program's
own stdout and stderr can be compared with a run without the agent.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
SITECUSTOMIZE_DIR = REPO / "sitecustomize_example"

DESTROYED = "asyncio.task.destroyed_pending"
UNRETRIEVED = "asyncio.task.exception_unretrieved"
CPYTHON_PENDING = "Task was destroyed but it is pending!"
CPYTHON_UNRETRIEVED = "exception was never retrieved"

_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


@dataclass
class Run:
    """What one run of a program showed: exit code, output, and the agent's events."""

    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]] = field(default_factory=list)
    raw_events: str = ""
    folder: str = ""

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The events named ``kind``."""
        return [e for e in self.events if e.get("event") == kind]

    def anomalies(self) -> list[dict[str, Any]]:
        """Both task event kinds, in output order."""
        return [e for e in self.events if e.get("event") in (DESTROYED, UNRETRIEVED)]

    def observable(self) -> tuple[int, str, str]:
        """Exit code, stdout and stderr with addresses and the run's folder blanked out."""

        def blank(text: str) -> str:
            text = text.replace(self.folder, "<folder>") if self.folder else text
            return _ADDRESS.sub("0xADDR", text)

        return self.returncode, blank(self.stdout), blank(self.stderr)

    def cpython_counts(self) -> tuple[int, int]:
        """How many task reports CPython itself logged: (pending, never retrieved)."""
        lines = self.stderr.splitlines()
        pending = sum(1 for line in lines if line == CPYTHON_PENDING)
        unretrieved = sum(
            1
            for line in lines
            if line.endswith(CPYTHON_UNRETRIEVED) and not line.startswith("Future ")
        )
        return pending, unretrieved


def line_of(source: str, marker: str) -> int:
    """1-based number of the line of ``source`` (dedented) that contains ``marker``."""
    for number, line in enumerate(textwrap.dedent(source).splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"marker {marker!r} not in source")


SPEEDUPS_VARIABLE = "ASYNCIO_AGENT_SPEEDUPS"
"""Kept from the test process's environment: ``ASYNCIO_AGENT_SPEEDUPS=0 pytest`` runs
the whole suite on the agent's Python hot path (tests/run.sh does, on two Pythons)."""

_OFF = ("0", "false", "no", "off")
PYTHON_PATH_ONLY = os.environ.get(SPEEDUPS_VARIABLE, "1").strip().lower() in _OFF

SHAPE_VARIABLE = "ASYNCIO_AGENT_INTERP_SHAPE"
"""Kept from the test process's environment too: ``ASYNCIO_AGENT_INTERP_SHAPE=3.14 pytest``
runs the whole suite with the agent behaving as on Python 3.14 (no task registry it can
hook or read: live tasks are the pending ones of the loops it has seen; no compiled hot
path). tests/run.sh does, on two Pythons."""
SHAPE_314 = os.environ.get(SHAPE_VARIABLE, "") == "3.14"


def clean_environment() -> dict[str, str]:
    """The test process's environment without any agent or asyncio debug settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("ASYNCIO_AGENT") or k in (SPEEDUPS_VARIABLE, SHAPE_VARIABLE))
        and k not in ("PYTHONASYNCIODEBUG", "PYTHONPATH")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class Runner:
    """Writes a program into a temporary folder and runs it with the current Python."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._count = 0

    def __call__(
        self,
        source: str,
        *,
        agent: bool = True,
        env: Optional[Mapping[str, str]] = None,
        args: tuple[str, ...] = (),
        files: Optional[Mapping[str, str]] = None,
        timeout: float = 60.0,
        output_to_file: bool = True,
        python_path: tuple[str, ...] = (),
    ) -> Run:
        """Run ``source`` as ``app.py``; return its exit code, output and events."""
        self._count += 1
        work = self.folder / f"run{self._count}"
        work.mkdir()
        script = work / "app.py"
        script.write_text(textwrap.dedent(source))
        for name, text in (files or {}).items():
            path = work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        events_file = work / "events.jsonl"
        environment = clean_environment()
        environment["PYTHONPATH"] = os.pathsep.join([str(SITECUSTOMIZE_DIR), *python_path])
        if agent:
            environment["ASYNCIO_AGENT"] = "1"
            if output_to_file:
                environment["ASYNCIO_AGENT_OUTPUT"] = str(events_file)
        environment.update(env or {})
        completed = subprocess.run(
            [sys.executable, str(script), *args],
            cwd=work,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        raw = events_file.read_text() if events_file.exists() else ""
        events = [json.loads(line) for line in raw.splitlines() if line.strip()]
        return Run(completed.returncode, completed.stdout, completed.stderr, events, raw, str(work))


RunProgram = Callable[..., Run]


@pytest.fixture
def run(tmp_path: Path) -> Runner:
    """Run a program in a subprocess: ``run(source, agent=True, env=..., ...)``."""
    return Runner(tmp_path)


def needs(version: tuple[int, int]) -> pytest.MarkDecorator:
    """Skip unless Python is at least ``version``, saying why."""
    return pytest.mark.skipif(
        sys.version_info < version,
        reason=f"needs Python {version[0]}.{version[1]}+",
    )
