"""pytest plugin: a test fails when it loses a task (destroyed pending, exception unread).

Owns the ``--asyncio-agent`` options, the ``asyncio_agent_allow`` marker and per-test
attribution. Does nothing unless asked (``--asyncio-agent`` or ini ``asyncio_agent``);
never imports asyncio itself, and never changes how tests or their loops run.
"""

from __future__ import annotations

import fnmatch
import gc
import os
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Optional, Union

import pytest

from .report import DESTROYED_PENDING, EXCEPTION_UNRETRIEVED, Report, Suppressed

MARK = "asyncio_agent_allow"
MODES = ("fail", "error", "warn")
_KINDS = {
    "destroyed_pending": DESTROYED_PENDING,
    "pending": DESTROYED_PENDING,
    DESTROYED_PENDING: DESTROYED_PENDING,
    "exception_unretrieved": EXCEPTION_UNRETRIEVED,
    "unretrieved": EXCEPTION_UNRETRIEVED,
    "exception": EXCEPTION_UNRETRIEVED,
    EXCEPTION_UNRETRIEVED: EXCEPTION_UNRETRIEVED,
}
Lost = Union[Report, Suppressed]
_LEAKS_KEY = pytest.StashKey[list[Lost]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--asyncio-agent``, ``--asyncio-agent-mode`` and their ini options."""
    group = parser.getgroup("asyncio-agent", "asyncio-agent: lost asyncio tasks")
    group.addoption(
        "--asyncio-agent",
        action="store_true",
        default=None,
        dest="asyncio_agent",
        help="fail tests that lose an asyncio task (destroyed pending, exception never "
        "retrieved), naming the line that created it",
    )
    group.addoption(
        "--asyncio-agent-mode",
        choices=MODES,
        default=None,
        dest="asyncio_agent_mode",
        help="what a lost task does to its test: fail (default), error (a teardown error) or warn",
    )
    parser.addini("asyncio_agent", "switch the asyncio-agent plugin on", type="bool", default=False)
    parser.addini(
        "asyncio_agent_mode", "fail, error or warn (see --asyncio-agent-mode)", default="fail"
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker always; switch the plugin on only when asked."""
    config.addinivalue_line(
        "markers",
        f"{MARK}(kind=None, coroutine=None, count=None): this test is expected to lose "
        "tasks; kind is destroyed_pending or exception_unretrieved, coroutine a name or "
        "glob, count the most allowed (default: any number)",
    )
    wanted = config.getoption("asyncio_agent", default=None) or config.getini("asyncio_agent")
    if not wanted:
        return
    mode = (
        config.getoption("asyncio_agent_mode", default=None)
        or str(config.getini("asyncio_agent_mode")).strip().lower()
    )
    if mode not in MODES:
        raise pytest.UsageError(
            f"asyncio_agent_mode = {mode!r}: expected one of {', '.join(MODES)}"
        )
    config.pluginmanager.register(AgentPlugin(mode), "asyncio-agent-plugin")


@dataclass
class _Allowance:
    kind: Optional[str]
    coroutine: Optional[str]
    left: Optional[int]

    def takes(self, report: Lost) -> bool:
        if self.left is not None and self.left <= 0:
            return False
        if self.kind is not None and report.kind != self.kind:
            return False
        if self.coroutine is not None and not fnmatch.fnmatchcase(
            report.coroutine or "", self.coroutine
        ):
            return False
        if self.left is not None:
            self.left -= 1
        return True


def _allowances(item: pytest.Item) -> list[_Allowance]:
    found = []
    for mark in item.iter_markers(MARK):
        raw_kind = mark.args[0] if mark.args else mark.kwargs.get("kind")
        kind = None
        if raw_kind is not None:
            kind = _KINDS.get(str(raw_kind))
            if kind is None:
                raise pytest.UsageError(
                    f"@pytest.mark.{MARK}: kind={raw_kind!r} is not destroyed_pending or "
                    "exception_unretrieved"
                )
        count = mark.kwargs.get("count")
        found.append(
            _Allowance(kind, mark.kwargs.get("coroutine"), None if count is None else int(count))
        )
    return found


def _is_runner(frame: str) -> bool:
    return any(part in frame for part in ("/_pytest/", "/pluggy/", "\\_pytest\\", "\\pluggy\\"))


def describe(lost: list[Lost]) -> str:
    """The failure text: each lost task with its creation site and traceback.

    Tasks the rate limit held back (ASYNCIO_AGENT_RATE_LIMIT) are counted by site.
    """
    reports = [report for report in lost if isinstance(report, Report)]
    held_back: dict[tuple[Any, str], int] = {}
    for item in lost:
        if isinstance(item, Suppressed):
            held_back[(item.site, item.kind)] = held_back.get((item.site, item.kind), 0) + 1
    lines = [f"asyncio-agent: {len(lost)} task(s) lost during this test"]
    for number, report in enumerate(reports, start=1):
        kind = (
            "destroyed while pending"
            if report.kind == DESTROYED_PENDING
            else ("exception never retrieved")
        )
        lines.append("")
        lines.append(
            f"[{number}] {report.kind}: task {report.task_name!r} "
            f"(coroutine {report.coroutine}) {kind}"
            + (" (its loop had stopped: shutdown)" if report.at_shutdown else "")
        )
        site = report.site
        if site is None:
            lines.append("    created at: unknown (not created through loop.create_task)")
        else:
            lines.append(f"    created at {site.filename}:{site.lineno} in {site.function}")
            lines.append("    creation stack (most recent call last):")
            # pytest's and pluggy's own frames say nothing about the test.
            lines.extend(f"      {frame}" for frame in site.stack if not _is_runner(frame))
        if report.kind == EXCEPTION_UNRETRIEVED:
            text = (
                report.traceback_text() or f"{report.exception_type}: {report.exception_message}\n"
            )
            lines.extend(f"    {line}" for line in text.rstrip("\n").splitlines())
    for (site, kind), count in held_back.items():
        where = f"{site.filename}:{site.lineno} in {site.function}" if site else "unknown"
        lines.append("")
        lines.append(f"[+{count}] {kind}: more tasks created at {where} (rate-limited, not shown)")
    first = lost[0]
    short = "destroyed_pending" if first.kind == DESTROYED_PENDING else "exception_unretrieved"
    lines.append("")
    lines.append(
        f"If this is expected: @pytest.mark.{MARK}(kind={short!r}, coroutine={first.coroutine!r})"
    )
    return "\n".join(lines)


class AgentPlugin:
    """The active plugin: installs the agent, listens to its reports, judges each test."""

    def __init__(self, mode: str) -> None:
        from . import runtime

        self.mode = mode
        self._installed_here = False
        if runtime.current() is None:
            # Events go nowhere unless the user asked for a file: the failures say it all.
            options = {} if os.environ.get("ASYNCIO_AGENT_OUTPUT") else {"output": os.devnull}
            runtime.install(**options)
            self._installed_here = True
        installation = runtime.current()
        assert installation is not None
        self._reporter = installation.reporter
        self._reports: list[Lost] = []
        self.outside: list[Lost] = []
        self._reporter.add_listener(self._on_report)

    def _on_report(self, report: Lost) -> None:
        # Reporter thread: one append, nothing else.
        self._reports.append(report)

    def _take(self) -> list[Lost]:
        from . import runtime

        # The writer first: while it writes it allocates, and a collection it triggers
        # would make ours return at once (CPython runs one collection at a time).
        runtime.flush()
        # Two passes: a cycle's finalizer can free the next cycle.
        gc.collect()
        gc.collect()
        runtime.flush()
        taken, self._reports = self._reports, []
        return taken

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """What died before this test (session fixtures, collection) is not its fault."""
        self.outside.extend(self._take())

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, Any, None]:
        """After the test's fixtures are gone (its loop closed): collect and judge."""
        yield
        reports = self._take()
        allowances = _allowances(item)
        unexpected = [r for r in reports if not any(a.takes(r) for a in allowances)]
        if not unexpected:
            return
        if self.mode == "warn":
            item.warn(pytest.PytestWarning(describe(unexpected)))
        else:
            item.stash[_LEAKS_KEY] = unexpected

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: Optional[pytest.Item]) -> bool:
        """pytest's own protocol, with the reports logged only once the test is judged.

        A lost task is often found at teardown (when the test's loop is closed); in
        ``fail`` mode the test's call report carries it, so the test counts as failed
        rather than passed plus a teardown error.
        """
        from _pytest.runner import runtestprotocol

        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        leaks = item.stash.get(_LEAKS_KEY, None)
        if leaks:
            self._blame(reports, describe(leaks))
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _blame(self, reports: list[pytest.TestReport], text: str) -> None:
        by_phase = {report.when: report for report in reports}
        target = by_phase.get("call") if self.mode == "fail" else None
        if target is None or target.skipped:
            target = by_phase.get("teardown")
        if target is None:
            return
        if target.passed:
            target.outcome = "failed"
            target.longrepr = text
        else:
            target.sections.append(("asyncio-agent", text))

    def pytest_sessionfinish(self) -> None:
        self.outside.extend(self._take())

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Tasks lost outside any test (module/session fixtures) are shown, not failed."""
        if self.outside:
            terminalreporter.write_sep("=", "asyncio-agent: tasks lost outside tests")
            terminalreporter.write_line(describe(self.outside))

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._reporter.remove_listener(self._on_report)
        if self._installed_here:
            from . import runtime

            runtime.uninstall()
