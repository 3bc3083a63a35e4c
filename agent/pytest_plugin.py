"""pytest plugin: a test fails when it loses a task (destroyed pending, exception unread)
or a coroutine (never awaited), and, when asked, when it leaves tasks behind or blocks
its event loop for longer than a limit.

Owns the ``--asyncio-agent`` options, the ``asyncio_agent_allow`` marker and per-test
attribution (left-over tasks: asyncio_agent.pytest_leftovers). Does nothing unless
asked (``--asyncio-agent``, ``--asyncio-agent-pending`` or their ini options); never
imports asyncio itself, and never changes how tests or their loops run.
"""

from __future__ import annotations

import fnmatch
import gc
import os
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Optional, Union

import pytest

from .findings import (
    LEFT_PENDING,
    NEVER_AWAITED,
    Finding,
    LeftPending,
    NeverAwaited,
    origin_site,
)
from .report import DESTROYED_PENDING, EXCEPTION_UNRETRIEVED, Report, Suppressed
from .stall import BLOCKED, IN_CALLBACK, IN_TASK, Stall

MARK = "asyncio_agent_allow"
MODES = ("fail", "error", "warn")
PENDING_MODES = ("fail", "warn", "off")
_KINDS = {
    "blocked": BLOCKED,
    BLOCKED: BLOCKED,
    "never_awaited": NEVER_AWAITED,
    NEVER_AWAITED: NEVER_AWAITED,
    "left_pending": LEFT_PENDING,
    "leftover": LEFT_PENDING,
    LEFT_PENDING: LEFT_PENDING,
    "destroyed_pending": DESTROYED_PENDING,
    "pending": DESTROYED_PENDING,
    DESTROYED_PENDING: DESTROYED_PENDING,
    "exception_unretrieved": EXCEPTION_UNRETRIEVED,
    "unretrieved": EXCEPTION_UNRETRIEVED,
    "exception": EXCEPTION_UNRETRIEVED,
    EXCEPTION_UNRETRIEVED: EXCEPTION_UNRETRIEVED,
}
Lost = Union[Report, Suppressed, NeverAwaited]
Judged = Union[Report, Suppressed, Finding]
_LEAKS_KEY = pytest.StashKey[dict[str, str]]()


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
        "--asyncio-agent-pending",
        choices=PENDING_MODES,
        default=None,
        dest="asyncio_agent_pending",
        help="fail or warn a test that leaves tasks behind: still pending when its "
        "teardown is over, or cancelled only by its loop's shutdown (asyncio.run, "
        "Runner.close); off by default",
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
        "asyncio_agent_mode", "fail, error or warn (see --asyncio-agent-mode)", default="fail"
    )
    parser.addini(
        "asyncio_agent_pending",
        "fail, warn or off: tests that leave tasks behind (see --asyncio-agent-pending)",
        default="off",
    )
    parser.addini(
        "asyncio_agent_block_ms",
        "fail tests that block their event loop longer than this (ms; 0: off)",
        default="0",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker always; switch the plugin on only when asked."""
    config.addinivalue_line(
        "markers",
        f"{MARK}(kind=None, coroutine=None, count=None): this test is expected to lose "
        "tasks or coroutines or leave tasks behind; kind is destroyed_pending, "
        "exception_unretrieved, never_awaited, left_pending or blocked, coroutine a name or "
        "glob, count the most allowed (default: any number)",
    )
    pending = (
        config.getoption("asyncio_agent_pending", default=None)
        or str(config.getini("asyncio_agent_pending")).strip().lower()
    )
    if pending not in PENDING_MODES:
        raise pytest.UsageError(
            f"asyncio_agent_pending = {pending!r}: expected one of {', '.join(PENDING_MODES)}"
        )
    wanted = config.getoption("asyncio_agent", default=None) or config.getini("asyncio_agent")
    if not wanted and pending == "off":
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
    plugin = AgentPlugin(mode if wanted else None, None if pending == "off" else pending, block_ms)
    config.pluginmanager.register(plugin, "asyncio-agent-plugin")


@dataclass
class _Allowance:
    kind: Optional[str]
    coroutine: Optional[str]
    left: Optional[int]

    def takes(self, report: Judged) -> bool:
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
                    "exception_unretrieved, never_awaited, left_pending or blocked"
                )
        count = mark.kwargs.get("count")
        found.append(
            _Allowance(kind, mark.kwargs.get("coroutine"), None if count is None else int(count))
        )
    return found


def _is_runner(frame: str) -> bool:
    return any(part in frame for part in ("/_pytest/", "/pluggy/", "\\_pytest\\", "\\pluggy\\"))


_SHORT = {
    DESTROYED_PENDING: "destroyed_pending",
    EXCEPTION_UNRETRIEVED: "exception_unretrieved",
    NEVER_AWAITED: "never_awaited",
    LEFT_PENDING: "left_pending",
}


def _site_lines(site: Any, unknown: str) -> list[str]:
    if site is None:
        return [f"    created at: {unknown}"]
    lines = [f"    created at {site.filename}:{site.lineno} in {site.function}"]
    stack = [frame for frame in site.stack if not _is_runner(frame)]
    if stack:
        lines.append("    creation stack (most recent call last):")
        # pytest's and pluggy's own frames say nothing about the test.
        lines.extend(f"      {frame}" for frame in stack)
    return lines


def _never_awaited_lines(number: int, finding: NeverAwaited) -> list[str]:
    lines = ["", f"[{number}] {finding.kind}: coroutine {finding.coroutine!r} was never awaited"]
    site = origin_site(finding.origin)
    if site is None:
        lines.append("    created at: unknown (set ASYNCIO_AGENT_COROUTINE_ORIGIN=8 to record it)")
    else:
        lines.append(f"    created at {site[0]}:{site[1]} in {site[2]}")
        lines.append("    creation stack (most recent call last):")
        lines.extend(f"      {frame}" for frame in site[3] if not _is_runner(frame))
    where = finding.collected
    if where is not None:
        how = " by the garbage collector" if finding.garbage_collected else ""
        lines.append(f"    collected{how} at {where[0]}:{where[1]} in {where[2]}")
    return lines


def _header(lost: list[Lost]) -> str:
    coroutines = sum(1 for item in lost if item.kind == NEVER_AWAITED)
    tasks = len(lost) - coroutines
    parts = []
    if tasks:
        parts.append(f"{tasks} task(s) lost")
    if coroutines:
        parts.append(f"{coroutines} coroutine(s) never awaited")
    return f"asyncio-agent: {' and '.join(parts)} during this test"


def _hint(first: Judged) -> str:
    return (
        f"If this is expected: @pytest.mark.{MARK}(kind={_SHORT.get(first.kind, first.kind)!r}, "
        f"coroutine={first.coroutine!r})"
    )


def describe(lost: list[Lost]) -> str:
    """The failure text: each lost task with its creation site and traceback, each
    never-awaited coroutine with where it was created and collected.

    Reports the rate limit held back (ASYNCIO_AGENT_RATE_LIMIT) are counted by site.
    """
    held_back: dict[tuple[Any, str], int] = {}
    for item in lost:
        if isinstance(item, Suppressed):
            held_back[(item.site, item.kind)] = held_back.get((item.site, item.kind), 0) + 1
    lines = [_header(lost)]
    number = 0
    for report in lost:
        if isinstance(report, NeverAwaited):
            number += 1
            lines.extend(_never_awaited_lines(number, report))
            continue
        if not isinstance(report, Report):
            continue
        number += 1
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
        lines.extend(_site_lines(report.site, "unknown (not created through loop.create_task)"))
        if report.kind == EXCEPTION_UNRETRIEVED:
            text = (
                report.traceback_text() or f"{report.exception_type}: {report.exception_message}\n"
            )
            lines.extend(f"    {line}" for line in text.rstrip("\n").splitlines())
    for (site, kind), count in held_back.items():
        where = f"{site.filename}:{site.lineno} in {site.function}" if site else "unknown"
        what = "coroutines" if kind == NEVER_AWAITED else "tasks"
        lines.append("")
        lines.append(f"[+{count}] {kind}: more {what} created at {where} (rate-limited, not shown)")
    lines.append("")
    lines.append(_hint(lost[0]))
    return "\n".join(lines)


def describe_leftovers(left: list[LeftPending], outside: bool = False) -> str:
    """The failure text for tasks a test left behind: creation site, age, await chain."""
    where = "outside tests (by fixtures of a wider scope)" if outside else "by this test"
    lines = [f"asyncio-agent: {len(left)} task(s) left behind {where}"]
    for number, finding in enumerate(left, start=1):
        age = "" if finding.task_age_s is None else f", {finding.task_age_s:.3f} s old"
        lines.append("")
        lines.append(
            f"[{number}] {finding.kind}: task {finding.task_name!r} "
            f"(coroutine {finding.coroutine}) {finding.how}{age}"
        )
        lines.extend(_site_lines(finding.site, "unknown (not created through loop.create_task)"))
        if finding.awaiting:
            lines.append("    awaiting (outermost first):")
            lines.extend(f"      {frame}" for frame in finding.awaiting)
    if not outside:
        lines.append("")
        lines.append(_hint(left[0]))
    return "\n".join(lines)


def _destroyed_as_left(report: Report) -> LeftPending:
    return LeftPending(
        task_name=report.task_name,
        coroutine=report.coroutine,
        site=report.site,
        task_age_s=report.task_age_s,
        awaiting=(),
        how="destroyed while pending (CPython: Task was destroyed but it is pending!)",
    )


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

    def __init__(
        self, mode: Optional[str], pending_mode: Optional[str] = None, block_ms: int = 0
    ) -> None:
        from . import runtime

        self.mode = mode
        """fail, error or warn for lost tasks and never-awaited coroutines; None: off."""
        self.pending_mode = pending_mode
        """fail or warn for tasks left behind; None: off."""
        self.block_ms = block_ms
        """Fail a test that blocks its loop longer than this (ms); 0: off."""
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
        self._reports: list[Judged] = []
        self.outside: list[Judged] = []
        # True from a test's teardown (which collected) to the next test's setup: what
        # runs in between is pytest logging the test, which loses no task.
        self._collected = False
        self._reporter.add_listener(self._on_report)
        self.leftovers: Any = None  # a LeftoverTracker when pending_mode is set
        if pending_mode is not None:
            from .pytest_leftovers import LeftoverTracker

            self.leftovers = LeftoverTracker(_current_recorder, runtime.live_task_list)
            self.leftovers.start()

    def _on_report(self, report: Judged) -> None:
        # Reporter thread: one append, nothing else.
        if isinstance(report, (Report, Suppressed, NeverAwaited, Stall)):
            self._reports.append(report)

    def _take(self, collect: bool = True) -> list[Judged]:
        from . import runtime

        if self.mode is not None and collect:
            # The writer first: while it writes it allocates, and a collection it
            # triggers would make ours return at once (CPython runs one at a time).
            runtime.flush()
            # Lost tasks and coroutines: collect what the test left as garbage. Two
            # passes: a cycle's finalizer can free the next cycle. (The left-over mode
            # alone does not collect: a task that is garbage but still pending is a
            # task left behind, and a full collection per test costs.)
            gc.collect()
            gc.collect()
        runtime.flush()  # also queues the loop stalls that have ended
        taken, self._reports = self._reports, []
        return taken

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """What died before this test (session fixtures, collection) is not its fault."""
        # Collect only if the last test's teardown did not (the first test, or after
        # something else ran in between): two full collections per test, not four.
        self.outside.extend(self._take(collect=not self._collected))
        self._collected = False
        if self.leftovers is not None:
            self.leftovers.begin_test()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef: Any) -> Generator[None, Any, None]:
        """Tasks a fixture of a wider scope than the test makes are not the test's."""
        if self.leftovers is None:
            yield
            return
        with self.leftovers.fixture_setup(str(getattr(fixturedef, "scope", "function"))):
            yield

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, Any, None]:
        """After the test's fixtures are gone (its loop closed): collect and judge."""
        yield
        reports = self._take()
        self._collected = True
        allowances = _allowances(item)
        texts: dict[str, list[str]] = {}
        if self.mode is not None:
            lost = [r for r in reports if isinstance(r, (Report, Suppressed, NeverAwaited))]
            unexpected = [r for r in lost if not any(a.takes(r) for a in allowances)]
            if unexpected:
                texts.setdefault(self.mode, []).append(describe(unexpected))
        if self.leftovers is not None and self.pending_mode is not None:
            left = self.leftovers.end_test()
            if self.mode is None:  # without the lost-task mode, these are left behind too
                left += [
                    _destroyed_as_left(r)
                    for r in reports
                    if isinstance(r, Report) and r.kind == DESTROYED_PENDING
                ]
            unexpected_left = [r for r in left if not any(a.takes(r) for a in allowances)]
            if unexpected_left:
                texts.setdefault(self.pending_mode, []).append(describe_leftovers(unexpected_left))
        if self.block_ms:
            stalls = [
                r
                for r in reports
                if isinstance(r, Stall)
                and r.duration_s * 1000 > self.block_ms
                and not any(a.takes(r) for a in allowances if a.kind == BLOCKED)
            ]
            if stalls:
                texts.setdefault(self.mode or "fail", []).append(
                    describe_stalls(stalls, self.block_ms)
                )
        for mode, parts in texts.items():
            text = "\n\n".join(parts)
            if mode == "warn":
                item.warn(pytest.PytestWarning(text))
            else:
                item.stash.setdefault(_LEAKS_KEY, {})[mode] = text

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
        for mode, text in item.stash.get(_LEAKS_KEY, {}).items():
            self._blame(reports, text, mode)
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    @staticmethod
    def _blame(reports: list[pytest.TestReport], text: str, mode: str) -> None:
        by_phase = {report.when: report for report in reports}
        target = by_phase.get("call") if mode == "fail" else None
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
        """Tasks lost or left outside any test (module/session fixtures) are shown, not
        failed."""
        if self.mode is not None:
            lost = [r for r in self.outside if isinstance(r, (Report, Suppressed, NeverAwaited))]
            if lost:
                terminalreporter.write_sep("=", "asyncio-agent: tasks lost outside tests")
                terminalreporter.write_line(describe(lost))
        if self.leftovers is not None and self.leftovers.outside:
            terminalreporter.write_sep("=", "asyncio-agent: tasks left behind outside tests")
            terminalreporter.write_line(describe_leftovers(self.leftovers.outside, outside=True))

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self._reporter.remove_listener(self._on_report)
        if self.leftovers is not None:
            self.leftovers.stop()
        if self._installed_here:
            from . import runtime

            runtime.uninstall()


def _current_recorder() -> Any:
    from . import runtime

    installation = runtime.current()
    return installation.recorder if installation is not None else None
