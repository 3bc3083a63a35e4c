"""The structured-event sink: each Report as one structlog event (JSON line or console).

Owns the event field names of the contract and the output stream. Writes in the reporter
thread (or at exit) and never imports there: structlog is imported only by ``warm_up()``,
when the program imports asyncio; until then events are written as the same JSON (or
console) lines without it. Never touches the application's structlog configuration: it
builds its own logger with its own processors.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Optional, TextIO

from ..config import Settings
from ..findings import NEVER_AWAITED, NeverAwaited, StuckTask, origin_site
from ..notices import warn_once
from ..privacy import PathRewriter
from ..ratelimit import SUPPRESSED_EVENT
from ..report import EXCEPTION_UNRETRIEVED, Report
from ..sites import Site
from ..stall import IN_CALLBACK, IN_TASK, Stall
from ..tracing import hex_ids
from .base import Sink

DROPPED_EVENT = "asyncio.agent.reports_dropped"
SNAPSHOT_EVENT = "asyncio.tasks.snapshot"
GROWING_EVENT = "asyncio.tasks.growing"
_KEEP_PATHS = PathRewriter(None)

# Fields first in every line, in this order, so a person can read the JSON too.
_LEADING = ("timestamp", "level", "event")


def report_fields(report: Report, paths: Optional[PathRewriter] = None) -> dict[str, Any]:
    """The contract's event fields for ``report`` (without event, level, timestamp).

    ``paths`` makes file paths relative to the configured root (ASYNCIO_AGENT_PATH_ROOT).
    """
    paths = paths or _KEEP_PATHS
    site = report.site
    fields: dict[str, Any] = {
        "task_name": report.task_name,
        "coroutine": report.coroutine,
        **_creation_fields(site, paths),
        "at_shutdown": report.at_shutdown,
        "task_age_s": None if report.task_age_s is None else round(report.task_age_s, 6),
    }
    if report.kind == EXCEPTION_UNRETRIEVED:
        fields["exception_type"] = report.exception_type
        fields["exception_message"] = report.exception_message
        fields["traceback"] = paths.traceback(report.traceback_text())
    _common_tail(fields, report.span, report.pid, report.thread, report.timestamp)
    return fields


def _creation_fields(site: Optional[Site], paths: PathRewriter) -> dict[str, Any]:
    """The ``creation_*`` fields of a creation site (null, and an empty stack, if unknown)."""
    return {
        "creation_file": paths.path(site.filename) if site else None,
        "creation_line": site.lineno if site else None,
        "creation_function": site.function if site else None,
        "creation_stack": paths.stack(list(site.stack)) if site else [],
    }


def _common_tail(fields: dict[str, Any], span: object, pid: int, thread: Any, stamp: float) -> None:
    ids = hex_ids(span)
    if ids is not None:  # the OpenTelemetry span current at creation: logs join traces
        fields["trace_id"], fields["span_id"] = ids
    fields["pid"] = pid
    fields["thread"] = thread
    fields["_timestamp"] = stamp


def never_awaited_fields(
    finding: NeverAwaited, paths: Optional[PathRewriter] = None
) -> dict[str, Any]:
    """The event fields of a never-awaited coroutine (without event, level, timestamp).

    ``creation_*`` come from CPython's origin tracking (ASYNCIO_AGENT_COROUTINE_ORIGIN)
    and are null without it; ``collected_*`` name the code that was running when the
    coroutine was finalized, the line CPython's own warning points at.
    """
    paths = paths or _KEEP_PATHS
    site = origin_site(finding.origin)
    collected = finding.collected
    fields: dict[str, Any] = {
        "coroutine": finding.coroutine,
        **_creation_fields(Site(*site) if site else None, paths),
        "collected_file": paths.path(collected[0]) if collected else None,
        "collected_line": collected[1] if collected else None,
        "collected_function": collected[2] if collected else None,
        "garbage_collected": finding.garbage_collected,
        "at_shutdown": finding.at_shutdown,
    }
    _common_tail(fields, finding.span, finding.pid, finding.thread, finding.timestamp)
    return fields


def stuck_fields(finding: StuckTask, paths: Optional[PathRewriter] = None) -> dict[str, Any]:
    """The event fields of a stuck task (without event, level, timestamp)."""
    paths = paths or _KEEP_PATHS
    site = finding.site
    fields: dict[str, Any] = {
        "task_name": finding.task_name,
        "coroutine": finding.coroutine,
        **_creation_fields(site, paths),
        "task_age_s": round(finding.task_age_s, 3),
        "awaiting": paths.stack(list(finding.awaiting)),
        "siblings": finding.siblings,
        "siblings_median_age_s": round(finding.siblings_median_age_s, 3),
        "also_stuck": finding.also_stuck,
    }
    _common_tail(fields, finding.span, finding.pid, finding.thread, finding.timestamp)
    return fields


def stall_fields(stall: Stall, paths: Optional[PathRewriter] = None) -> dict[str, Any]:
    """The ``asyncio.loop.blocked`` event fields for ``stall`` (without event, level,
    timestamp): task fields only when a task was running, ``callback`` only when a
    plain callback was."""
    paths = paths or _KEEP_PATHS
    fields: dict[str, Any] = {
        "duration_s": round(stall.duration_s, 6),
        "threshold_s": stall.threshold_s,
        "blocked_in": stall.blocked_in,
        "blocking_stack": paths.stack(list(stall.blocking_stack)),
    }
    if stall.blocked_in == IN_TASK:
        site = stall.site
        fields["task_name"] = stall.task_name
        fields["coroutine"] = stall.coroutine
        fields.update(_creation_fields(site, paths))
        ids = hex_ids(stall.span)
        if ids is not None:  # the span current where the blocked task was created
            fields["trace_id"], fields["span_id"] = ids
    elif stall.blocked_in == IN_CALLBACK:
        fields["callback"] = stall.callback
    fields["loop_thread"] = stall.loop_thread
    fields["pid"] = stall.pid
    fields["_timestamp"] = stall.timestamp
    return fields


def _iso_utc(epoch: float) -> str:
    # time.strftime, not datetime: datetime's strftime imports a module on first use,
    # and reports written during interpreter teardown can no longer import.
    whole = int(epoch)
    micros = int((epoch - whole) * 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{micros:06d}Z"


def _add_timestamp(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Stamp the moment the anomaly was detected (not when it was written)."""
    epoch = event_dict.pop("_timestamp", None)
    event_dict["timestamp"] = _iso_utc(epoch if isinstance(epoch, float) else time.time())
    return event_dict


def _leading_keys_first(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: event_dict[key] for key in _LEADING if key in event_dict}
    ordered.update((k, v) for k, v in event_dict.items() if k not in ordered)
    return ordered


def _console_blocks(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Move the stacks and traceback below the line, where ConsoleRenderer prints text."""
    stack = event_dict.pop("creation_stack", None) or []
    awaiting = event_dict.pop("awaiting", None) or []
    text = event_dict.pop("traceback", None)
    blocking = event_dict.pop("blocking_stack", None) or []
    block = ""
    if blocking:
        block += "Loop blocked at (most recent call last):\n"
        block += "".join(f"  {frame}\n" for frame in blocking)
    if stack:
        what = "Coroutine" if event_dict.get("event") == NEVER_AWAITED else "Task"
        block += f"{what} created at (most recent call last):\n"
        block += "".join(f"  {frame}\n" for frame in stack)
    if awaiting:
        block += "Awaiting (outermost first):\n"
        block += "".join(f"  {frame}\n" for frame in awaiting)
    if text:
        block += text
    if block:
        event_dict["exception"] = block
    return event_dict


class _PlainLogger:
    """Stands in for structlog while it is not loaded (before the program imports
    asyncio, and at exit): the same fields in the same order, imports nothing."""

    def __init__(self, write: Callable[[str], None], console: bool) -> None:
        self._write = write
        self._console = console

    def _log(self, level: str, event: str, **fields: Any) -> None:
        event_dict = {**fields, "event": event, "level": level}
        event_dict = _leading_keys_first(None, level, _add_timestamp(None, level, event_dict))
        if not self._console:
            self._write(json.dumps(event_dict, default=repr) + "\n")
            return
        block = _console_blocks(None, level, event_dict).pop("exception", "")
        head = f"{event_dict.pop('timestamp')} [{event_dict.pop('level'):<9}] "
        head += f"{event_dict.pop('event'):<30}"
        pairs = " ".join(
            f"{key}={value if isinstance(value, str) else repr(value)}"
            for key, value in event_dict.items()
        )
        self._write(f"{head} {pairs}".rstrip() + "\n" + block)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, **fields)


class _LineWriter:
    """The structlog "logger" at the end of the chain: writes one whole line at once."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write

    def msg(self, message: str) -> None:
        self._write(message + "\n")

    error = warning = info = debug = critical = msg


class EventSink(Sink):
    """Writes each Report as a structlog event to stderr, stdout or a file."""

    def __init__(self, settings: Settings) -> None:
        self._fd: Optional[int] = None
        self._fd_identity: tuple[int, int] = (0, 0)
        self._path = settings.output
        self._stream_name: Optional[str] = None
        self._format = settings.format
        self._paths = PathRewriter(settings.path_root)
        self.lost = 0
        """Lines that could not be written (output deleted, full, closed, ...)."""
        self._lost_reason = ""
        target = settings.output
        if target.lower() in ("stderr", "stdout"):
            self._stream_name = target.lower()
        else:
            try:
                self._open_file()
            except OSError as exc:
                warn_once(
                    "ASYNCIO_AGENT_OUTPUT",
                    f"ASYNCIO_AGENT_OUTPUT={target!r} cannot be opened for writing "
                    f"({exc.strerror or exc}); using 'stderr'",
                )
                self._stream_name = "stderr"
            else:
                self._format = "json"  # a file is always JSON lines
        self._logger: Any = None  # structlog's, once built (never on the output path)
        self._plain = _PlainLogger(self._write_line, console=self._format == "console")

    @property
    def description(self) -> str:
        """Where events go, for people (``stderr``, ``stdout`` or the file path)."""
        return self._stream_name or self._path

    def _stream(self) -> Optional[TextIO]:
        return sys.stderr if self._stream_name == "stderr" else sys.stdout

    def _open_file(self) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        status = os.fstat(fd)
        self._fd = fd
        self._fd_identity = (status.st_dev, status.st_ino)

    def _checked_fd(self) -> int:
        """Our descriptor, reopened if the file was deleted or the descriptor closed.

        The application may close our descriptor and reuse its number for a file of its
        own: then the identity differs, and that descriptor is left alone.
        """
        fd = self._fd
        assert fd is not None
        try:
            status = os.fstat(fd)
        except OSError:
            status = None
        if status is not None and (status.st_dev, status.st_ino) == self._fd_identity:
            if status.st_nlink > 0:
                return fd
            os.close(fd)  # ours, but deleted: write to a new file at the path
            why = "was deleted; writing to a new file there"
        else:
            why = "lost its descriptor (closed by the program?); reopened"
        warn_once(f"output-reopened:{self._path}", f"ASYNCIO_AGENT_OUTPUT={self._path!r} {why}")
        self._open_file()
        return self._fd  # type: ignore[return-value]

    def _write_line(self, line: str) -> None:
        try:
            self._write_raw(line)
        except Exception as exc:
            # A full disk, a closed stdout, a broken pipe: never the application's
            # problem. Say it once, count the rest, and say the count at exit.
            self.lost += 1
            if not self._lost_reason:
                self._lost_reason = f"{type(exc).__name__}: {exc}"
                warn_once(
                    f"output-failed:{self.description}",
                    f"cannot write events to {self.description} ({self._lost_reason}); "
                    "they are being counted and lost",
                )

    def _write_raw(self, line: str) -> None:
        if self._fd is not None:
            fd = self._checked_fd()
            # One write per line: O_APPEND keeps lines whole across processes.
            data = line.encode("utf-8", "replace")
            while data:
                written = os.write(fd, data)
                data = data[written:]
            return
        stream = self._stream()
        if stream is None:
            raise OSError(f"sys.{self._stream_name} is None")
        stream.write(line)
        stream.flush()

    def summarize_losses(self) -> None:
        """At exit: one warning with the number of events that could not be written."""
        if self.lost:
            warn_once(
                f"output-lost:{self.description}",
                f"{self.lost} event(s) could not be written to {self.description} "
                f"({self._lost_reason})",
            )

    def warm_up(self) -> None:
        """Import structlog and build the logger now.

        Called when the program imports asyncio (in the importing thread, before any task
        exists) and when structlog finishes importing. The only place structlog is ever
        imported: writing an event never imports anything, since an import there can
        re-enter the agent (structlog imports asyncio, whose import hook calls this).
        """
        if self._logger is not None:
            return
        try:
            import structlog

            self._logger = self._build_logger(structlog)
        except Exception:
            # Not installed, or still being imported (structlog's own import imports
            # asyncio, which brings us here): events stay plain until it is complete.
            pass

    def prepare(self) -> None:
        """Get ready for reports written during interpreter exit, importing nothing.

        If structlog is loaded, its logger is built now; if not, later events are plain
        JSON lines (or console lines), the same fields in the same order.
        """
        structlog = sys.modules.get("structlog")
        if self._logger is None and structlog is not None:
            try:
                self._logger = self._build_logger(structlog)
            except Exception:
                pass

    def _logger_now(self) -> Any:
        logger = self._logger
        return logger if logger is not None else self._plain

    def _build_logger(self, structlog: Any) -> Any:
        renderer: Any
        if self._format == "console":
            stream = self._stream()
            colors = bool(stream is not None and stream.isatty())
            renderer = structlog.dev.ConsoleRenderer(colors=colors)
            processors: list[Any] = [
                structlog.processors.add_log_level,
                _add_timestamp,
                _console_blocks,
                renderer,
            ]
        else:
            processors = [
                structlog.processors.add_log_level,
                _add_timestamp,
                _leading_keys_first,
                structlog.processors.JSONRenderer(),
            ]
        return structlog.BoundLogger(_LineWriter(self._write_line), processors, {})

    def close(self) -> None:
        """Close the output file, if there is one (used by uninstall)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._stream_name is None:
            self._stream_name = "stderr"  # anything later goes somewhere visible

    def emit(self, report: Report) -> None:
        """Write ``report`` as one event named after its kind."""
        self._logger_now().error(report.kind, **report_fields(report, self._paths))

    def emit_never_awaited(self, finding: NeverAwaited) -> None:
        """Write one ``asyncio.coroutine.never_awaited`` event."""
        self._logger_now().error(finding.kind, **never_awaited_fields(finding, self._paths))

    def emit_stuck(self, finding: StuckTask) -> None:
        """Write one ``asyncio.task.stuck`` event (a warning: it may yet finish)."""
        self._logger_now().warning(finding.kind, **stuck_fields(finding, self._paths))

    def emit_blocked(self, stall: Stall) -> None:
        """Write one ``asyncio.loop.blocked`` event (a warning: the loop froze, nothing
        was lost)."""
        self._logger_now().warning(stall.kind, **stall_fields(stall, self._paths))

    def emit_dropped(self, count: int) -> None:
        """Write one ``asyncio.agent.reports_dropped`` event."""
        self._logger_now().warning(DROPPED_EVENT, count=count, pid=os.getpid())

    def emit_snapshot(self, fields: dict[str, Any], growing: list[dict[str, Any]]) -> None:
        """Write one ``asyncio.tasks.snapshot`` event (live tasks by site, see
        :mod:`asyncio_agent.snapshot`), then ``asyncio.tasks.growing`` if some sites keep
        growing."""
        logger = self._logger_now()
        logger.info(SNAPSHOT_EVENT, **fields, growing=growing)
        if growing:
            logger.warning(GROWING_EVENT, sites=growing, pid=fields.get("pid"))

    def emit_suppressed(
        self, site: Optional[Site], kind: str, count: int, at_shutdown: bool = False
    ) -> None:
        """Write one ``asyncio.agent.reports_suppressed`` event: ``count`` reports of
        ``kind`` from ``site`` held back by the rate limit (each one a report CPython
        made, like a written event)."""
        self._logger_now().warning(
            SUPPRESSED_EVENT,
            count=count,
            suppressed_event=kind,
            creation_file=self._paths.path(site.filename) if site else None,
            creation_line=site.lineno if site else None,
            creation_function=site.function if site else None,
            at_shutdown=at_shutdown,
            pid=os.getpid(),
        )
