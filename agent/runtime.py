"""The installed agent: builds the pieces from Settings, wires them, tears them down.

Owns the one process-wide installation. Imports asyncio never: loops are reached
through the post-import hook when the application imports asyncio or uvloop.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
from types import ModuleType
from typing import Any, Optional

from .config import Settings, load_settings
from .importhook import PostImportHook
from .privacy import redacting
from .ratelimit import RateLimiter
from .reporter import Reporter
from .sinks.events import EventSink
from .sinks.otel import OtelSink
from .tracing import TRACE_MODULE, SpanProbeSwitch


def _young_collections() -> int:
    """How many times the youngest generation has been collected so far."""
    return int(gc.get_stats()[0]["collections"])


class Installation:
    """Everything ``install()`` created, so ``uninstall()`` can undo exactly that."""

    def __init__(self, settings: Settings) -> None:
        from .hooks import LoopPatcher
        from .sites import SiteRecorder

        self.settings = settings
        self.event_sink = EventSink(settings)
        # Spans and metrics; inert (imports nothing) unless OpenTelemetry is in use.
        self.otel_sink = OtelSink(os.environ)
        # Asked inside the finalizer, before a report is built (see agent.ratelimit).
        self.limiter = RateLimiter(settings.rate_limit)
        self.reporter = Reporter(
            [self.event_sink, self.otel_sink], settings.queue_size, self.limiter
        )
        self.recorder = SiteRecorder(
            settings.stack_depth, settings.skip_modules, speedups=settings.speedups
        )
        self.span_switch = SpanProbeSwitch(self.recorder)
        # Redaction runs in the finalizer, so the message never reaches the queue.
        submit = redacting(self.reporter.submit) if settings.redact else self.reporter.submit
        self.patcher = LoopPatcher(self.recorder, submit, self.limiter.admit)
        # Blocking detection: a heartbeat per running loop and one watchdog thread.
        self.watchdog: Any = None
        self.run_patch: Any = None
        self.running_hook: Any = None
        self._uvloop_early = False
        if settings.block_ms:
            from .heartbeat import RunForeverPatch
            from .interp.running import RunningLoopHook
            from .watchdog import Watchdog

            self.watchdog = Watchdog(
                settings.block_ms, self.recorder.decode, submit, self.limiter.admit
            )
            self.running_hook = RunningLoopHook(self.watchdog.loop_entered, self.watchdog.loop_left)
            self.run_patch = RunForeverPatch(
                self.watchdog.loop_starting, self.watchdog.loop_stopped
            )
            self.reporter.add_before_flush(self.watchdog.drain)
        # Snapshot dumps (signal / timer) exist only when a setting asks for them.
        self.dumper: Any = None
        if settings.dump_signal or settings.snapshot_interval:
            from .snapshot_dump import SnapshotDumper

            self.dumper = SnapshotDumper(settings, self.reporter, self.event_sink, self.recorder)
        self.hook = PostImportHook(
            {
                "asyncio": self._asyncio_imported,
                "uvloop": self._uvloop_imported,
                "structlog": self._structlog_imported,
                TRACE_MODULE: self._otel_imported,
                "opentelemetry.metrics": self._otel_imported,
            }
        )

    def _asyncio_imported(self, module: ModuleType) -> None:
        self.patcher.on_asyncio_imported(sys.modules["asyncio.base_events"])
        if self.running_hook is not None:
            # Every BaseEventLoop, and every uvloop imported from now on, says when it
            # starts and stops running.
            self.running_hook.install()
            self.watchdog.start()
        # structlog is loaded here, while the program imports asyncio and so cannot
        # have a single task yet: its thousands of allocations then cannot trigger a
        # collection that frees a lost task earlier than without the agent (as they
        # would at the first report, when the lost task's cycle is garbage already).
        collections_before = _young_collections()
        with contextlib.suppress(Exception):
            self.event_sink.warm_up()
        self.reporter.start()
        self.otel_sink.start()
        if self.dumper is not None:
            self.dumper.start_timer()  # periodic snapshots only where asyncio is used
        if gc.isenabled() and _young_collections() > collections_before:
            # The import ran the collector, so every young object of the program's was
            # collected or promoted already: what is young now is the import's own.
            # Collecting it leaves the program its whole allocation budget before the
            # next automatic collection, instead of a remainder near the threshold
            # that would make that collection (and a lost task's end) come sooner.
            gc.collect(0)

    def _structlog_imported(self, module: ModuleType) -> None:
        # structlog imports asyncio while it is being imported: the warm-up at asyncio's
        # import found it incomplete, and builds the logger now that it is complete.
        self.event_sink.warm_up()

    def _otel_imported(self, module: ModuleType) -> None:
        if module.__name__ == TRACE_MODULE:
            self.span_switch.on_trace_imported(module)
        self.otel_sink.start()

    def _uvloop_imported(self, module: ModuleType) -> None:
        self.patcher.on_uvloop_imported(module)
        loop_class = getattr(module, "Loop", None)
        if self.run_patch is not None and isinstance(loop_class, type) and self._uvloop_early:
            # uvloop read asyncio's running-loop setter before we wrapped it.
            self.run_patch.patch_class(loop_class)
            self.watchdog.start()
        self.reporter.start()

    def start(self) -> None:
        # A uvloop imported before install() kept asyncio's own running-loop setter.
        self._uvloop_early = "uvloop.loop" in sys.modules
        self.hook.install()
        # With OTEL_*_EXPORTER set, the SDK is imported in the background from now on.
        self.otel_sink.start()
        if self.dumper is not None:
            self.dumper.install_signal_handler()
        running = _running_loop()
        if running is not None:
            self.instrument_loop(running)
            if self.watchdog is not None:
                self.watchdog.join_running(running)  # no run_forever wrapper on its stack

    def instrument_loop(self, loop: Any) -> bool:
        ok = self.patcher.patch_loop(loop)
        if ok:
            self.reporter.start()
        if self.run_patch is not None and not _tells_when_running(loop):
            self.run_patch.patch_class(type(loop))  # from its next run_forever on
        return ok

    def stop(self, timeout: float) -> None:
        self.hook.remove()
        self.span_switch.remove()
        self.patcher.unpatch_all()
        if self.run_patch is not None:
            self.running_hook.uninstall()
            self.run_patch.unpatch_all()
            self.watchdog.stop()
        if self.dumper is not None:
            self.dumper.stop()
        self.reporter.shutdown(timeout)
        self.event_sink.close()


def _tells_when_running(loop: Any) -> bool:
    """Whether ``loop`` calls asyncio's running-loop setter as it runs (a BaseEventLoop)."""
    base_events = sys.modules.get("asyncio.base_events")
    return base_events is not None and isinstance(loop, base_events.BaseEventLoop)


_lock = threading.Lock()
_current: Optional[Installation] = None


def _running_loop() -> Any:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def install(**options: Any) -> None:
    """See :func:`asyncio_agent.install`."""
    global _current
    with _lock:
        if _current is not None:
            return
        installation = Installation(load_settings(os.environ, **options))
        _current = installation
        installation.start()


def uninstall(timeout: float = 5.0) -> None:
    """See :func:`asyncio_agent.uninstall`."""
    global _current
    with _lock:
        installation, _current = _current, None
    if installation is not None:
        installation.stop(timeout)


def flush(timeout: float = 5.0) -> bool:
    """See :func:`asyncio_agent.flush`."""
    installation = _current
    if installation is None:
        return True
    return installation.reporter.flush(timeout)


def instrument_loop(loop: Any) -> bool:
    """See :func:`asyncio_agent.instrument_loop`."""
    installation = _current
    if installation is None:
        return False
    return installation.instrument_loop(loop)


def current() -> Optional[Installation]:
    """The active installation, or None."""
    return _current
