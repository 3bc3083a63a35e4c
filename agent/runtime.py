"""The installed agent: its settings, the pipeline built when asyncio arrives, its hooks.

Owns the one process-wide installation. ``install()`` reads the settings, places an
import hook and registers the process-wide hooks (agent.lifecycle); that is all a
program that never imports asyncio ever pays. The pipeline (sinks, reporter, site
recorder, loop patches) is built when the program imports asyncio, uvloop or
OpenTelemetry, or asks for something that needs it, in that thread: never on the output
path, never in a finalizer. Imports asyncio never: loops are reached through the import
hook when the application imports asyncio or uvloop.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from types import ModuleType

from .config import Settings, load_settings
from .importhook import PostImportHook
from .interp.process import keep_keyboard_interrupt_exit_status
from .interp.shape import Shape
from .interp.shape import probe as probe_shape
from .lifecycle import ProcessHooks, attach, detach

# typing is not imported at run time (~6 ms): this module is imported at every start-up
# with the agent on, and its annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

TRACE_MODULE = "opentelemetry.trace"


def _young_collections() -> int:
    """How many times the youngest generation has been collected so far."""
    return int(gc.get_stats()[0]["collections"])


class Pipeline:
    """Everything that records, detects and writes, wired together (built once)."""

    def __init__(self, settings: Settings) -> None:
        from .hooks import LoopPatcher
        from .privacy import redacting
        from .ratelimit import RateLimiter
        from .reporter import Reporter
        from .sinks.events import EventSink
        from .sinks.otel import OtelSink
        from .sites import SiteRecorder
        from .stuck import StuckDetector
        from .tracing import SpanProbeSwitch
        from .unawaited import NeverAwaitedDetector, NeverAwaitedTally

        self.event_sink = EventSink(settings)
        # Spans and metrics; inert (imports nothing) unless OpenTelemetry is in use.
        self.otel_sink = OtelSink(os.environ)
        # Asked inside the finalizer, before a report is built (see agent.ratelimit).
        self.limiter = RateLimiter(settings.rate_limit)
        sinks = [self.event_sink, self.otel_sink]
        self.reporter = Reporter(sinks, settings.queue_size, self.limiter)
        self.recorder = SiteRecorder(
            settings.stack_depth, settings.skip_modules, speedups=settings.speedups
        )
        self.span_switch = SpanProbeSwitch(self.recorder)
        # Redaction runs in the finalizer, so the message never reaches the queue.
        submit = redacting(self.reporter.submit) if settings.redact else self.reporter.submit
        self.patcher = LoopPatcher(self.recorder, submit, self.limiter.admit)
        self.otel_sink.live_tasks = self.live_task_count
        # Never-awaited coroutines: CPython's unawaited-coroutine hook (agent.unawaited).
        self.never_awaited = NeverAwaitedDetector(
            self.reporter.submit,
            self.limiter.admit,
            lambda: self.recorder.span_probe,
            compiled=settings.speedups,
            origin_depth=settings.coroutine_origin,
        )
        self.never_awaited_tally = NeverAwaitedTally()
        self.reporter.add_listener(self.never_awaited_tally.on_report)
        # Stuck tasks: a periodic check once asyncio is imported, and after snapshots.
        self.stuck: Optional[StuckDetector] = None
        if settings.stuck_s > 0:
            self.stuck = StuckDetector(
                settings.stuck_s, self.recorder, self.reporter.submit, self.live_task_list
            )
        # Blocking detection: a heartbeat per running loop and one watchdog thread.
        self.watchdog: Any = None
        self.running_hook: Any = None
        self.run_patch: Any = None
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

            self.dumper = SnapshotDumper(
                settings,
                self.reporter,
                self.event_sink,
                self.snapshot,
                self.stuck.check if self.stuck is not None else None,
            )

    @property
    def shape(self) -> Optional[Shape]:
        """What asyncio is made of here, once it is imported (agent.interp.shape)."""
        return self.patcher.shape

    def snapshot(self) -> Any:
        """The live tasks now, by creation site (agent.snapshot)."""
        from .snapshot import take_snapshot

        blocked = self.watchdog.blocked_now() if self.watchdog is not None else ()
        return take_snapshot(
            self.recorder,
            self.shape,
            self.patcher.seen_loops or (),
            tuple(self.never_awaited_tally.top()),
            blocked,
        )

    def live_task_list(self) -> list[Any]:
        """The live tasks the interpreter lets the agent list (agent.interp.tasks)."""
        from .interp.tasks import live_tasks

        return live_tasks(self.shape, self.patcher.seen_loops or ()).tasks

    def watch_loops(self, uvloop_module: Optional[ModuleType] = None) -> None:
        """Blocking detection: learn when loops run (asyncio's running-loop setter), and
        start the watchdog thread now, outside any loop. ``uvloop_module``: a uvloop
        imported before install(), which kept asyncio's own setter: its ``Loop`` gets a
        ``run_forever`` wrapper instead."""
        if self.watchdog is None:
            return
        self.running_hook.install()
        loop_class = getattr(uvloop_module, "Loop", None)
        if isinstance(loop_class, type):
            self.run_patch.patch_class(loop_class)
        self.watchdog.start()

    def live_task_count(self) -> tuple[int, bool]:
        """How many tasks are alive, and whether that is all of them (else pending only)."""
        from .interp.tasks import live_task_count

        shape = self.shape
        count = live_task_count(shape, self.patcher.seen_loops or ())
        return count, shape is None or shape.complete


class Installation(ProcessHooks):
    """Everything ``install()`` set up, so ``uninstall()`` can undo exactly that."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pipeline: Optional[Pipeline] = None
        self._build_lock = threading.Lock()
        # A uvloop imported before install() kept asyncio's own running-loop setter.
        self._uvloop_early = False
        self.hook = PostImportHook(
            {
                "asyncio": self._asyncio_imported,
                "uvloop": self._uvloop_imported,
                "structlog": self._structlog_imported,
                TRACE_MODULE: self._otel_imported,
                "opentelemetry.metrics": self._otel_imported,
            }
        )

    # -- the pipeline, built on first need ---------------------------------------------

    def pipeline(self) -> Pipeline:
        """The pipeline, built now if it is not yet (imports the agent's modules)."""
        pipeline = self._pipeline
        if pipeline is None:
            with self._build_lock:
                pipeline = self._pipeline
                if pipeline is None:
                    pipeline = self._pipeline = Pipeline(self.settings)
        return pipeline

    @property
    def built(self) -> Optional[Pipeline]:
        """The pipeline if it has been built, else None (never builds it)."""
        return self._pipeline

    @property
    def reporter(self) -> Any:
        """The reporter (agent.reporter.Reporter)."""
        return self.pipeline().reporter

    @property
    def recorder(self) -> Any:
        """The site recorder (agent.sites.SiteRecorder)."""
        return self.pipeline().recorder

    # -- import hook callbacks -----------------------------------------------------------

    def _asyncio_imported(self, module: ModuleType) -> None:
        pipeline = self.pipeline()
        shape = probe_shape(sys.modules.get("asyncio.tasks"))
        pipeline.patcher.on_asyncio_imported(sys.modules["asyncio.base_events"], shape)
        # Never-awaited coroutines from now on (and their origin, if asked, in this
        # thread and each thread that runs a loop).
        pipeline.never_awaited.start()
        pipeline.never_awaited.on_asyncio_imported(module)
        pipeline.watch_loops()
        # structlog is loaded here, while the program imports asyncio and so cannot
        # have a single task yet: its thousands of allocations then cannot trigger a
        # collection that frees a lost task earlier than without the agent (as they
        # would at the first report, when the lost task's cycle is garbage already).
        collections_before = _young_collections()
        try:
            pipeline.event_sink.warm_up()
        except Exception:
            pass
        pipeline.reporter.start()
        pipeline.otel_sink.start()
        if pipeline.dumper is not None:
            pipeline.dumper.start_timer()  # periodic snapshots only where asyncio is used
        if pipeline.stuck is not None:
            pipeline.stuck.start_timer(pipeline.reporter.call_soon)
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
        if self._pipeline is not None:
            self._pipeline.event_sink.warm_up()

    def _otel_imported(self, module: ModuleType) -> None:
        pipeline = self.pipeline()
        if module.__name__ == TRACE_MODULE:
            pipeline.span_switch.on_trace_imported(module)
        pipeline.otel_sink.start()

    def _uvloop_imported(self, module: ModuleType) -> None:
        pipeline = self.pipeline()
        pipeline.patcher.on_uvloop_imported(module)
        pipeline.watch_loops(module if self._uvloop_early else None)
        pipeline.reporter.start()

    # -- life --------------------------------------------------------------------------

    def start(self) -> None:
        attach(self)
        if self.settings.dump_signal:
            # The handler is set now, from the main thread (the only one allowed to).
            dumper = self.pipeline().dumper
            if dumper is not None:
                dumper.install_signal_handler()
        self._uvloop_early = "uvloop.loop" in sys.modules
        self.hook.install()  # asyncio or uvloop already imported: patched now
        running = _running_loop()
        if running is not None:
            self.instrument_loop(running)
            watchdog = self.pipeline().watchdog
            if watchdog is not None:
                watchdog.join_running(running)  # no run_forever of ours on its stack

    def instrument_loop(self, loop: Any) -> bool:
        pipeline = self.pipeline()
        ok = pipeline.patcher.patch_loop(loop)
        if ok:
            pipeline.reporter.start()
        if pipeline.run_patch is not None and not _tells_when_running(loop):
            pipeline.run_patch.patch_class(type(loop))  # from its next run_forever on
        return ok

    def flush(self, timeout: float) -> bool:
        pipeline = self._pipeline
        return True if pipeline is None else pipeline.reporter.flush(timeout)

    def stop(self, timeout: float) -> None:
        detach(self)
        self.hook.remove()
        pipeline = self._pipeline
        if pipeline is None:
            return
        pipeline.span_switch.remove()
        pipeline.patcher.unpatch_all()
        pipeline.never_awaited.stop()
        if pipeline.stuck is not None:
            pipeline.stuck.stop()
        if pipeline.watchdog is not None:
            pipeline.running_hook.uninstall()
            pipeline.run_patch.unpatch_all()
            pipeline.watchdog.stop()
        if pipeline.dumper is not None:
            pipeline.dumper.stop()
        pipeline.reporter.shutdown(timeout)
        pipeline.event_sink.close()

    # -- process-wide hooks (agent.lifecycle) ------------------------------------------

    def before_threads_join(self) -> None:
        pipeline = self._pipeline
        if pipeline is not None:
            try:
                pipeline.reporter.flush()
            except Exception:
                pass

    def at_exit(self) -> None:
        pipeline = self._pipeline
        if pipeline is not None:
            try:
                pipeline.reporter.close()
            except Exception:
                pass
        keep_keyboard_interrupt_exit_status()

    def after_fork_in_child(self) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            return
        try:
            pipeline.reporter.after_fork_in_child()
            if pipeline.dumper is not None:
                pipeline.dumper.after_fork_in_child()
            if pipeline.stuck is not None:
                pipeline.stuck.after_fork_in_child()
            if pipeline.watchdog is not None:
                pipeline.watchdog.after_fork_in_child()
        except Exception:
            pass


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
    return True if installation is None else installation.flush(timeout)


def instrument_loop(loop: Any) -> bool:
    """See :func:`asyncio_agent.instrument_loop`."""
    installation = _current
    if installation is None:
        return False
    return installation.instrument_loop(loop)


def snapshot() -> Any:
    """See :func:`asyncio_agent.snapshot`."""
    installation = _current
    if installation is not None:
        return installation.pipeline().snapshot()
    from .sites import SiteRecorder
    from .snapshot import take_snapshot

    # Sites are shared by all recorders: a fresh one decodes any record.
    return take_snapshot(SiteRecorder(0), probe_shape(sys.modules.get("asyncio.tasks")))


def current() -> Optional[Installation]:
    """The active installation, or None."""
    return _current


def live_task_list() -> list[Any]:
    """The live tasks the interpreter lets the agent list: every task not yet collected,
    or, on 3.14+, the pending ones of the loops the agent has seen (agent.interp.tasks)."""
    installation = _current
    pipeline = installation.built if installation is not None else None
    if pipeline is not None:
        return pipeline.live_task_list()
    from .interp.tasks import live_tasks

    return live_tasks(probe_shape(sys.modules.get("asyncio.tasks"))).tasks
