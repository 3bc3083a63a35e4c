"""``python -m asyncio_agent report``: event files from many processes, grouped by creation site.

Owns reading JSON-lines event files and the table, JSON and Markdown renderings: lost
tasks by kind and creation site, and event loop blocks by blocking line and by what was
blocking (the running task's creation site, or the callback). Never
fails on a bad line: truncated, foreign or unreadable lines are counted and reported.
Every count is of reports CPython made: a site's count is its events written plus the
reports the rate limit held back (``asyncio.agent.reports_suppressed`` counts); reports
dropped because the agent's queue was full have no site and are counted apart.
"""

from __future__ import annotations

import collections
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, TextIO

KINDS = {
    "asyncio.task.destroyed_pending": "destroyed pending",
    "asyncio.task.exception_unretrieved": "exception unretrieved",
    "asyncio.coroutine.never_awaited": "never awaited",
    "asyncio.task.stuck": "stuck",
}
NEVER_AWAITED = "asyncio.coroutine.never_awaited"
SUPPRESSED_EVENT = "asyncio.agent.reports_suppressed"
DROPPED_EVENT = "asyncio.agent.reports_dropped"
BLOCKED_EVENT = "asyncio.loop.blocked"


class _Seen(Protocol):
    """A group that keeps when its events were seen and by which processes."""

    first_seen: Optional[str]
    last_seen: Optional[str]
    pids: set[int]


def _note_seen(group: _Seen, event: dict[str, Any]) -> None:
    """Widen ``group``'s first/last seen to ``event``'s timestamp; add its pid."""
    stamp = event.get("timestamp")
    if isinstance(stamp, str):
        # ISO 8601 UTC with a fixed layout: text order is time order.
        if group.first_seen is None or stamp < group.first_seen:
            group.first_seen = stamp
        if group.last_seen is None or stamp > group.last_seen:
            group.last_seen = stamp
    pid = event.get("pid")
    if isinstance(pid, int):
        group.pids.add(pid)


@dataclass
class BlockedGroup:
    """Event loop blocks with one blocking line and one culprit."""

    blocking_line: Optional[str]
    """The innermost frame of ``blocking_stack``: where the loop thread was."""
    blocked_by: str
    """``task created at file:line in function``, ``callback NAME``, or why neither."""
    written: int = 0
    suppressed: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    first_seen: Optional[str] = None
    last_seen: Optional[str] = None
    coroutines: collections.Counter[str] = field(default_factory=collections.Counter)
    pids: set[int] = field(default_factory=set)

    @property
    def count(self) -> int:
        """Blocks seen: written plus held back by the rate limit."""
        return self.written + self.suppressed

    def add(self, event: dict[str, Any], count: int = 1, suppressed: bool = False) -> None:
        """Add one written event (or a held-back count)."""
        if suppressed:
            self.suppressed += count
        else:
            self.written += 1
            duration = event.get("duration_s")
            if isinstance(duration, (int, float)) and not isinstance(duration, bool):
                self.total_s += float(duration)
                self.max_s = max(self.max_s, float(duration))
            coroutine = event.get("coroutine")
            if isinstance(coroutine, str):
                self.coroutines[coroutine] += 1
        _note_seen(self, event)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {
            "blocking_line": self.blocking_line,
            "blocked_by": self.blocked_by,
            "count": self.count,
            "written": self.written,
            "suppressed": self.suppressed,
            "total_s": round(self.total_s, 6),
            "max_s": round(self.max_s, 6),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "coroutines": dict(self.coroutines.most_common()),
            "pids": sorted(self.pids),
        }


def _site_text(event: dict[str, Any]) -> Optional[str]:
    file = event.get("creation_file")
    if not isinstance(file, str):
        return None
    return f"{file}:{event.get('creation_line')} in {event.get('creation_function')}"


def _blocked_by(event: dict[str, Any]) -> str:
    where = event.get("blocked_in")
    if where == "task":
        site = _site_text(event)
        return f"task created at {site}" if site else "task created at <unknown>"
    if where == "callback":
        return f"callback {event.get('callback')}"
    return str(where or "<unknown>").replace("_", " ")


@dataclass
class Group:
    """All events of one kind from one creation site."""

    kind: str
    creation_file: Optional[str]
    creation_line: Optional[int]
    creation_function: Optional[str]
    where: str = "created"
    """``created``, or ``collected`` for never-awaited coroutines whose creation site is
    unknown (no origin tracking): then grouped by where they were collected."""
    written: int = 0
    """Events written for this site (each one report)."""
    suppressed: int = 0
    """Reports held back by the rate limit (from the reports_suppressed counts)."""
    first_seen: Optional[str] = None
    last_seen: Optional[str] = None
    example_exception: Optional[str] = None
    at_shutdown: int = 0
    coroutines: collections.Counter[str] = field(default_factory=collections.Counter)
    pids: set[int] = field(default_factory=set)

    @property
    def count(self) -> int:
        """Reports CPython made for this site and kind: written plus held back."""
        return self.written + self.suppressed

    @property
    def site(self) -> str:
        """``file:line in function``, or ``<unknown>``."""
        if not self.creation_file:
            return "<unknown>"
        place = f"{self.creation_file}:{self.creation_line} in {self.creation_function}"
        return place if self.where == "created" else f"(collected at) {place}"

    def add(self, event: dict[str, Any]) -> None:
        """Add one written event."""
        self.written += 1
        self._seen(event, 1)
        if self.example_exception is None and event.get("exception_type"):
            message = event.get("exception_message")
            self.example_exception = (
                f"{event['exception_type']}: {message}" if message else str(event["exception_type"])
            )
        coroutine = event.get("coroutine")
        if isinstance(coroutine, str):
            self.coroutines[coroutine] += 1

    def add_suppressed(self, event: dict[str, Any]) -> None:
        """Add a ``reports_suppressed`` event: ``count`` reports held back."""
        count = _count_of(event)
        self.suppressed += count
        self._seen(event, count)

    def _seen(self, event: dict[str, Any], reports: int) -> None:
        _note_seen(self, event)
        if event.get("at_shutdown") is True:
            self.at_shutdown += reports

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {
            "kind": self.kind,
            "creation_file": self.creation_file,
            "creation_line": self.creation_line,
            "creation_function": self.creation_function,
            "site_is": self.where,
            "count": self.count,
            "written": self.written,
            "suppressed": self.suppressed,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "example_exception": self.example_exception,
            "at_shutdown": self.at_shutdown,
            "coroutines": dict(self.coroutines.most_common()),
            "pids": sorted(self.pids),
        }


@dataclass
class Summary:
    """What the files held: the groups, and what could not be used."""

    groups: list[Group]
    files: list[str]
    lines: int = 0
    unreadable_lines: int = 0
    foreign_lines: int = 0
    other_events: collections.Counter[str] = field(default_factory=collections.Counter)
    missing_files: list[str] = field(default_factory=list)
    dropped: int = 0
    """Reports dropped because the agent's queue was full (their sites are unknown)."""
    blocked: list[BlockedGroup] = field(default_factory=list)
    """Event loop blocks, by blocking line and culprit, most frequent first."""

    @property
    def total(self) -> int:
        """Every report CPython made that the files account for."""
        return sum(group.count for group in self.groups) + self.dropped

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {
            "files": self.files,
            "missing_files": self.missing_files,
            "lines": self.lines,
            "unreadable_lines": self.unreadable_lines,
            "foreign_lines": self.foreign_lines,
            "other_events": dict(self.other_events),
            "total": self.total,
            "dropped": self.dropped,
            "groups": [group.to_dict() for group in self.groups],
            "blocked": [group.to_dict() for group in self.blocked],
        }


def _lines(path: str) -> Iterator[str]:
    if path == "-":
        yield from sys.stdin
        return
    with open(path, encoding="utf-8", errors="replace") as stream:
        yield from stream


def summarize(paths: Iterable[str]) -> Summary:
    """Read every file in ``paths`` and group their task events by kind and site."""
    summary = Summary(groups=[], files=[])
    groups: dict[tuple[Any, ...], Group] = {}
    blocked: dict[tuple[Optional[str], str], BlockedGroup] = {}
    for path in paths:
        try:
            lines = list(_lines(path))
        except OSError as exc:
            summary.missing_files.append(f"{path} ({exc.strerror or exc})")
            continue
        summary.files.append(path)
        for line in lines:
            if line.strip():
                summary.lines += 1
                _read_line(line, summary, groups, blocked)
    summary.groups = sorted(groups.values(), key=lambda g: (-g.count, g.site, g.kind))
    summary.blocked = sorted(
        blocked.values(), key=lambda g: (-g.count, -g.total_s, g.blocking_line or "")
    )
    return summary


def _count_of(event: dict[str, Any]) -> int:
    count = event.get("count")
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 0


def _read_line(
    line: str,
    summary: Summary,
    groups: dict[tuple[Any, ...], Group],
    blocked: dict[tuple[Optional[str], str], BlockedGroup],
) -> None:
    try:
        event = json.loads(line)
    except ValueError:
        summary.unreadable_lines += 1  # truncated (a killed process) or not JSON
        return
    name = event.get("event") if isinstance(event, dict) else None
    if not isinstance(name, str):
        summary.foreign_lines += 1
        return
    if name == DROPPED_EVENT:
        summary.dropped += _count_of(event)
        return
    held_back = name == SUPPRESSED_EVENT and event.get("suppressed_event") == BLOCKED_EVENT
    if name == BLOCKED_EVENT or held_back:
        _add_blocked(event, held_back, blocked)
        return
    suppressed = name == SUPPRESSED_EVENT and event.get("suppressed_event") in KINDS
    if name not in KINDS and not suppressed:
        if name.startswith("asyncio."):
            summary.other_events[name] += 1
        else:
            summary.foreign_lines += 1
        return
    prefix, where = "creation", "created"
    if name == NEVER_AWAITED and not event.get("creation_file") and event.get("collected_file"):
        prefix, where = "collected", "collected"  # no origin tracking: where it died
    line_no = event.get(f"{prefix}_line")
    key = (
        event["suppressed_event"] if suppressed else name,
        _text(event.get(f"{prefix}_file")),
        line_no if isinstance(line_no, int) else None,
        _text(event.get(f"{prefix}_function")),
        where,
    )
    group = groups.get(key)
    if group is None:
        group = groups[key] = Group(*key)
    if suppressed:
        group.add_suppressed(event)
    else:
        group.add(event)


def _add_blocked(
    event: dict[str, Any],
    held_back: bool,
    blocked: dict[tuple[Optional[str], str], BlockedGroup],
) -> None:
    if held_back:
        site = _site_text(event)
        key: tuple[Optional[str], str] = (
            None,
            f"task created at {site}" if site else "<unknown>",
        )
    else:
        stack = event.get("blocking_stack")
        innermost = stack[-1] if isinstance(stack, list) and stack else None
        key = (innermost if isinstance(innermost, str) else None, _blocked_by(event))
    group = blocked.get(key)
    if group is None:
        group = blocked[key] = BlockedGroup(*key)
    group.add(event, _count_of(event), suppressed=held_back)


def _text(value: object) -> Optional[str]:
    return value if isinstance(value, str) else None


_COLUMNS = (
    "COUNT",
    "RATE-LIMITED",
    "KIND",
    "CREATION SITE",
    "FIRST SEEN",
    "LAST SEEN",
    "PIDS",
    "EXAMPLE",
)


def _pids_shown(pids: set[int]) -> str:
    """The first five process ids, and how many more."""
    ordered = sorted(pids)
    more = len(ordered) - 5
    return ",".join(str(pid) for pid in ordered[:5]) + (f" +{more}" if more > 0 else "")


def _rows(summary: Summary) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for group in summary.groups:
        shown = _pids_shown(group.pids)
        example = group.example_exception or ", ".join(
            c for c, _ in group.coroutines.most_common(2)
        )
        rows.append(
            (
                str(group.count),
                str(group.suppressed) if group.suppressed else "",
                KINDS[group.kind],
                group.site,
                group.first_seen or "",
                group.last_seen or "",
                shown,
                example,
            )
        )
    return rows


_TASK_KINDS = ("asyncio.task.destroyed_pending", "asyncio.task.exception_unretrieved")


def _noun(summary: Summary) -> str:
    if all(group.kind in _TASK_KINDS for group in summary.groups):
        return "lost tasks reported by CPython"
    return "anomalies (lost tasks, never-awaited coroutines, stuck tasks)"


_BLOCKED_COLUMNS = (
    "COUNT",
    "RATE-LIMITED",
    "TOTAL S",
    "MAX S",
    "BLOCKING LINE",
    "BLOCKED BY",
    "LAST SEEN",
    "PIDS",
)


def _blocked_rows(summary: Summary) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for group in summary.blocked:
        shown = _pids_shown(group.pids)
        coroutine = ", ".join(c for c, _ in group.coroutines.most_common(1))
        rows.append(
            (
                str(group.count),
                str(group.suppressed) if group.suppressed else "",
                f"{group.total_s:.3f}",
                f"{group.max_s:.3f}",
                group.blocking_line or ("<rate-limited>" if not group.written else "<not sampled>"),
                group.blocked_by + (f" ({coroutine})" if coroutine else ""),
                group.last_seen or "",
                shown,
            )
        )
    return rows


def _columns(header: tuple[str, ...], rows: list[tuple[str, ...]], right: int) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[i]) if i < right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
    return out


def _footer(summary: Summary) -> list[str]:
    written = sum(group.written for group in summary.groups)
    suppressed = sum(group.suppressed for group in summary.groups)
    lines = [
        f"{summary.total} {_noun(summary)}: {written} written as events, "
        f"{suppressed} counted by the rate limit, {summary.dropped} dropped (queue full, "
        f"site unknown); {len(summary.groups)} groups, from {len(summary.files)} file(s), "
        f"{summary.lines} lines"
    ]
    if summary.blocked:
        blocks = sum(group.count for group in summary.blocked)
        seconds = sum(group.total_s for group in summary.blocked)
        lines.append(
            f"{blocks} event loop block(s), {seconds:.3f} s in all, in "
            f"{len(summary.blocked)} groups (blocking line, blocked by)"
        )
    if summary.unreadable_lines:
        lines.append(f"{summary.unreadable_lines} line(s) unreadable (truncated or not JSON)")
    if summary.foreign_lines:
        lines.append(f"{summary.foreign_lines} line(s) not from the agent (ignored)")
    if summary.other_events:
        other = ", ".join(f"{name}: {n}" for name, n in sorted(summary.other_events.items()))
        lines.append(f"other agent events: {other}")
    lines.extend(f"could not read {missing}" for missing in summary.missing_files)
    return lines


def render_table(summary: Summary) -> str:
    """Plain-text columns for a terminal."""
    rows = _rows(summary)
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    out = []
    for row in [_COLUMNS, *rows]:
        cells = [
            cell.rjust(widths[i]) if i < 2 else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ]
        out.append("  ".join(cells).rstrip())
    if not rows:
        out = ["no task events found"]
    if summary.blocked:
        out += ["", "event loop blocks:"]
        out += _columns(_BLOCKED_COLUMNS, _blocked_rows(summary), 4)
    return "\n".join([*out, "", *_footer(summary)]) + "\n"


def render_markdown(summary: Summary) -> str:
    """A GitHub-flavoured Markdown table (for an issue or a pull request)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(c.title() if c != "PIDS" else "PIDs" for c in _COLUMNS) + " |"]
    out.append("|" + "|".join("---:" if i < 2 else "---" for i in range(len(_COLUMNS))) + "|")
    for row in _rows(summary):
        out.append(
            "| "
            + " | ".join(f"`{cell(c)}`" if i == 3 else cell(c) for i, c in enumerate(row))
            + " |"
        )
    if summary.blocked:
        out += ["", "Event loop blocks:", ""]
        out.append("| " + " | ".join(c.title() for c in _BLOCKED_COLUMNS) + " |")
        out.append("|" + "|".join("---:" if i < 4 else "---" for i in range(8)) + "|")
        for row in _blocked_rows(summary):
            out.append(
                "| "
                + " | ".join(f"`{cell(c)}`" if i in (4, 5) else cell(c) for i, c in enumerate(row))
                + " |"
            )
    return "\n".join([*out, "", *(f"_{line}_  " for line in _footer(summary))]) + "\n"


def report_files(paths: list[str], style: str, stream: Optional[TextIO] = None) -> int:
    """Print the summary of ``paths`` in ``style``; 2 if no file could be read, else 0."""
    out = stream if stream is not None else sys.stdout
    summary = summarize(paths)
    if style == "json":
        out.write(json.dumps(summary.to_dict(), indent=2) + "\n")
    elif style == "markdown":
        out.write(render_markdown(summary))
    else:
        out.write(render_table(summary))
    for missing in summary.missing_files:
        sys.stderr.write(f"asyncio-agent report: could not read {missing}\n")
    return 0 if summary.files else 2
