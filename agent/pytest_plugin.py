"""pytest plugin: a test fails when it loses a task (destroyed pending, exception unread),
and, when asked, when it blocks its event loop for longer than a limit.

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
from .stall import BLOCKED, IN_CALLBACK, IN_TASK, Stall

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
    "blocked": BLOCKED,
    BLOCKED: BLOCKED,
}
Lost = Union[Report, Suppressed]
Heard = Union[Report, Suppressed, Stall]
_FAILURE_KEY = pytest.StashKey[str]()


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
    group.addoption(
        "--asyncio-agent-block-ms",
        type=int,
        default=None,
        dest="asyncio_agent_block_ms",
        help="also fail a test that blocks its event loop for longer than this many "
        "milliseconds (0: off, the default), naming the blocking line and the task",
    )
    parser.addini("asyncio_agent", "switch the asyncio-agent plugin on", type="bool", default=False)
    parser.addini(
        "asyncio_agent_block_ms",
        "fail tests that block their event loop longer than this (ms; 0: off)",
        default="0",
    )
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
    block_ms = config.getoption("asyncio_agent_block_ms", default=None)
    if block_ms is None:
        raw = str(config.getini("asyncio_agent_block_ms")).strip() or "0"
        try:
            block_ms = int(raw)
        except ValueError:
            raise pytest.UsageError(
                f"asyncio_agent_block_ms = {raw!r}: expected a whole number of milliseconds"
            ) from None
    if block_ms < 0:
        raise pytest.UsageError(f"asyncio_agent_block_ms = {block_ms}: expected 0 or more")
    config.pluginmanager.register(AgentPlugin(mode, block_ms), "asyncio-agent-plugin")


@dataclass
class _Allowance:
    kind: Optional[str]
    coroutine: Optional[str]
    left: Optional[int]

    def takes(self, report: Heard) -> bool:
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
                    f"@pytest.mark.{MARK}: kind={raw_kind!r} is not destroyed_pending, "
                    "exception_unretrieved or blocked"
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


def _is_stall(heard: Heard) -> bool:
    return heard.kind == BLOCKED


def describe_stalls(stalls: list[Stall], limit_ms: int) -> str:
    """The failure text for stalls: how long, what ran, the blocking line, its creator."""
    lines = [
        f"asyncio-agent: the event loop was blocked {len(stalls)} time(s) for longer than "
        f"{limit_ms} ms during this test"
    ]
    for number, stall in enumerate(stalls, start=1):
        if stall.blocked_in == IN_TASK:
            who = f"in task {stall.task_name!r} (coroutine {stall.coroutine})"
        elif stall.blocked_in == IN_CALLBACK:
            who = f"in callback {stall.callback}"
        else:
            who = f"({stall.blocked_in.replace('_', ' ')}: no task or callback to blame)"
        lines.append("")
        lines.append(f"[{number}] blocked for {stall.duration_s:.3f} s {who}")
        frames = [frame for frame in stall.blocking_stack if not _is_runner(frame)]
        if frames:
            lines.append("    loop blocked at (most recent call last):")
            lines.extend(f"      {frame}" for frame in frames)
        site = stall.site
        if stall.blocked_in == IN_TASK and site is not None:
            lines.append(f"    task created at {site.filename}:{site.lineno} in {site.function}")
    lines.append("")
    lines.append(f"If this is expected: @pytest.mark.{MARK}(kind='blocked')")
    return "\n".join(lines)


class AgentPlugin:
    """The active plugin: installs the agent, listens to its reports, judges each test."""

    def __init__(self, mode: str, block_ms: int = 0) -> None:
        from . import runtime

        self.mode = mode
        self.block_ms = block_ms
        self._installed_here = False
        if runtime.current() is None:
            # Events go nowhere unless the user asked for a file: the failures say it all.
            options: dict[str, Any] = (
                {} if os.environ.get("ASYNCIO_AGENT_OUTPUT") else {"output": os.devnull}
            )
            if block_ms:
                options["block_ms"] = block_ms
            runtime.install(**options)
            self._installed_here = True
        installation = runtime.current()
        assert installation is not None
        self._reporter = installation.reporter
        self._reports: list[Heard] = []
        self.outside: list[Lost] = []
        self._reporter.add_listener(self._on_report)

    def _on_report(self, report: Heard) -> None:
        # Reporter thread: one append, nothing else.
        self._reports.append(report)

    def _take_all(self) -> list[Heard]:
        from . import runtime

        # The writer first: while it writes it allocates, and a collection it triggers
        # would make ours return at once (CPython runs one collection at a time).
        runtime.flush()
        # Two passes: a cycle's finalizer can free the next cycle.
        gc.collect()
        gc.collect()
        runtime.flush()  # also queues the loop stalls that have ended
        taken, self._reports = self._reports, []
        return taken

    def _take(self) -> list[Lost]:
        return [r for r in self._take_all() if not _is_stall(r)]  # type: ignore[misc]

    def _judge_stalls(self, heard: list[Heard], item: pytest.Item) -> Optional[str]:
        if not self.block_ms:
            return None
        allowances = [a for a in _allowances(item) if a.kind == BLOCKED]
        stalls = [
            r
            for r in heard
            if isinstance(r, Stall)
            and r.duration_s * 1000 > self.block_ms
            and not any(a.takes(r) for a in allowances)
        ]
        return describe_stalls(stalls, self.block_ms) if stalls else None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """What died before this test (session fixtures, collection) is not its fault."""
        self.outside.extend(self._take())

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, Any, None]:
        """After the test's fixtures are gone (its loop closed): collect and judge."""
        yield
        heard = self._take_all()
        reports: list[Lost] = [r for r in heard if not _is_stall(r)]  # type: ignore[misc]
        allowances = [a for a in _allowances(item) if a.kind != BLOCKED]
        unexpected = [r for r in reports if not any(a.takes(r) for a in allowances)]
        texts = [describe(unexpected)] if unexpected else []
        stalls = self._judge_stalls(heard, item)
        if stalls is not None:
            texts.append(stalls)
        if not texts:
            return
        text = "\n\n".join(texts)
        if self.mode == "warn":
            item.warn(pytest.PytestWarning(text))
        else:
            item.stash[_FAILURE_KEY] = text

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
        failure = item.stash.get(_FAILURE_KEY, None)
        if failure:
            self._blame(reports, failure)
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
