"""The OpenTelemetry sink: each Report as an ERROR span inside its request's trace, plus metrics.

Owns the span name, span attributes and metric instruments (names under
``asyncio.task.*``). Runs in the reporter thread; never imports OpenTelemetry unless the
application already did or ``OTEL_*_EXPORTER`` asks for it, and never raises.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, Optional

from .. import otelenv
from ..findings import NeverAwaited, StuckTask, origin_site
from ..notices import warn_once
from ..report import EXCEPTION_UNRETRIEVED, Report
from ..sites import Site
from ..stall import BLOCKED, IN_CALLBACK, IN_TASK, Stall
from ..tracing import is_real_provider, unpack
from .base import Sink

SCOPE = "asyncio-agent"
ANOMALIES_METRIC = "asyncio.task.anomalies"
LIVE_METRIC = "asyncio.task.live"
LIVE_SCOPE_ATTRIBUTE = "asyncio.tasks.listed"
"""On the live-task gauge: ``all`` (every task not yet collected) or ``pending``."""
BLOCKED_METRIC = "asyncio.loop.blocked.duration"
BLOCKED_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Histogram bucket boundaries (seconds) for loop stalls (the SDK's default ones are
meant for milliseconds)."""
MAX_SITE_VALUES = 100
"""Distinct creation sites given their own metric attribute value; the rest are ``other``."""
OTHER_SITE = "other"
FLUSH_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 3.0
SPAN_TIMEOUT_S = FLUSH_TIMEOUT_S
"""How long ending one anomaly span may take before the exporter counts as stuck."""


def _code_attributes(site: Optional[Site]) -> dict[str, Any]:
    """OpenTelemetry's ``code.*`` attributes of a creation site (None values if unknown)."""
    return {
        "code.filepath": site.filename if site else None,
        "code.lineno": site.lineno if site else None,
        "code.function": site.function if site else None,
        "code.stacktrace": "\n".join(site.stack) if site else None,
    }


def span_attributes(report: Report) -> dict[str, Any]:
    """The span attributes for ``report``: semantic-convention ``code.*`` plus ``asyncio.*``."""
    site = report.site
    values: dict[str, Any] = {
        **_code_attributes(site),
        "asyncio.task.name": report.task_name,
        "asyncio.task.coroutine": report.coroutine,
        "asyncio.task.age_s": report.task_age_s,
        "asyncio.at_shutdown": report.at_shutdown,
        "thread.name": report.thread,
        "process.pid": report.pid,
    }
    # OpenTelemetry rejects None attribute values (with a log line each).
    return {key: value for key, value in values.items() if value is not None}


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    # OpenTelemetry rejects None attribute values (with a log line each).
    return {key: value for key, value in values.items() if value is not None}


def never_awaited_attributes(finding: NeverAwaited) -> dict[str, Any]:
    """Span attributes of a never-awaited coroutine: ``code.*`` is where it was created
    (when origin tracking knows it), ``asyncio.coroutine.collected_at`` where it died."""
    site = origin_site(finding.origin)
    collected = finding.collected
    return _clean(
        {
            **_code_attributes(Site(*site) if site else None),
            "asyncio.coroutine": finding.coroutine,
            "asyncio.coroutine.collected_at": (
                f"{collected[0]}:{collected[1]} in {collected[2]}" if collected else None
            ),
            "asyncio.at_shutdown": finding.at_shutdown,
            "thread.name": finding.thread,
            "process.pid": finding.pid,
        }
    )


def stuck_attributes(finding: StuckTask) -> dict[str, Any]:
    """Span attributes of a stuck task."""
    site = finding.site
    return _clean(
        {
            **_code_attributes(site),
            "asyncio.task.name": finding.task_name,
            "asyncio.task.coroutine": finding.coroutine,
            "asyncio.task.age_s": finding.task_age_s,
            "asyncio.task.awaiting": "\n".join(finding.awaiting) or None,
            "asyncio.task.siblings": finding.siblings,
            "asyncio.task.siblings_median_age_s": finding.siblings_median_age_s,
            "thread.name": finding.thread,
            "process.pid": finding.pid,
        }
    )


class _SpanData(NamedTuple):
    """What one anomaly span is made of."""

    kind: str
    packed_span: object  # the ids of the span current at creation (agent.tracing.pack)
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    description: str
    exception: Optional[dict[str, Any]] = None


def stall_attributes(stall: Stall) -> dict[str, Any]:
    """The span attributes for a loop stall: the blocked task's ``code.*`` creation site
    and ``asyncio.*`` names, or the callback, and the sampled stack."""
    site = stall.site if stall.blocked_in == IN_TASK else None
    values: dict[str, Any] = {
        "asyncio.loop.blocked_s": round(stall.duration_s, 6),
        "asyncio.loop.threshold_s": stall.threshold_s,
        "asyncio.loop.blocked_in": stall.blocked_in,
        "asyncio.loop.blocking_stack": "\n".join(stall.blocking_stack) or None,
        "asyncio.loop.callback": stall.callback if stall.blocked_in == IN_CALLBACK else None,
        **_code_attributes(site),
        "asyncio.task.name": stall.task_name,
        "asyncio.task.coroutine": stall.coroutine,
        "thread.name": stall.loop_thread,
        "process.pid": stall.pid,
    }
    return {key: value for key, value in values.items() if value is not None}


def _is_real_meter_provider(provider: object) -> bool:
    name = type(provider).__name__
    return provider is not None and name not in ("_ProxyMeterProvider", "NoOpMeterProvider")


class OtelSink(Sink):
    """Emits anomalies as spans and metrics through the application's or its own providers."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)
        self._trace_exporters = otelenv.requested_exporters(environ, "traces")
        self._metric_exporters = otelenv.requested_exporters(environ, "metrics")
        self._lock = threading.Lock()
        self._tracer: Any = None
        self._tracer_source: Any = None  # the provider the tracer came from
        self._own_tracer_provider: Any = None
        self._own_meter_provider: Any = None
        self._built_own_traces = False
        self._meter_resolved = False
        self._counter: Any = None
        self._sites: dict[str, str] = {}
        self._histogram: Any = None  # loop stall durations
        self._blocked_sites: dict[str, str] = {}
        self._unflushed = False
        self._closed = False
        self._started = False
        self._stuck = False  # an export missed its deadline: do not wait for it again
        self._broken = False  # setup failed once (warned): anomalies are not exported
        self._problems = otelenv.ExportProblems()
        self._bounded = otelenv.BoundedRunner()
        self.delivery = otelenv.SpanDelivery()
        self.live_tasks: Callable[[], tuple[int, bool]] = lambda: (0, True)
        """How many tasks are alive, and whether that is all of them (set by the
        installation: agent.interp knows how to count them here)."""

    # -- when to wake up -----------------------------------------------------------

    def _wanted(self) -> bool:
        return bool(
            self._trace_exporters
            or self._metric_exporters
            or "opentelemetry.trace" in sys.modules
            or "opentelemetry.metrics" in sys.modules
        )

    def start(self) -> None:
        """Set up providers and instruments in the background, once OTel is in use.

        Called when asyncio is imported and when the application imports OpenTelemetry;
        the first call that finds OTel in use starts the setup, later ones do nothing.
        """
        if self._started or not self._wanted() or self._closed:
            return
        self._started = True
        if self._trace_exporters or self._metric_exporters:
            # The exporters import it; once the interpreter starts shutting down, that
            # import fails (it registers an exit hook), so do it now, while it is cheap
            # (asyncio has already imported concurrent.futures).
            import concurrent.futures.thread  # noqa: F401
        # Not a daemon: the program's exit waits for a half-done SDK import rather than
        # finishing it during interpreter shutdown, where imports and threads fail.
        threading.Thread(target=self._setup, name="asyncio-agent-otel-setup").start()

    def prepare(self) -> None:
        """Import and build everything now, before interpreter shutdown forbids imports."""
        if self._wanted():
            self._setup()

    def _setup(self) -> None:
        with self._lock:
            self._resolve()
            if self._tracer_source is not None or self._meter_resolved:
                try:
                    self._bounded.start()
                except RuntimeError:
                    pass  # shutting down: bounded calls then run in place

    def _resolve(self) -> Any:
        """The tracer to use (or None), with metrics set up; gives up after one failure."""
        if self._broken:
            return None
        try:
            tracer = self._resolve_tracer()
            self._resolve_meter()
        except Exception as exc:
            self._broken = True
            detail = f"{type(exc).__name__}: {exc}"
            if "shutdown" in str(exc):
                detail += (
                    "; the program ended before the OpenTelemetry SDK was ready: "
                    "call asyncio_agent.flush() at the end of short scripts"
                )
            warn_once("otel-setup", f"OpenTelemetry export could not start ({detail})")
            return None
        return tracer

    # -- providers -------------------------------------------------------------------

    def _resolve_tracer(self) -> Any:
        # The application's global provider wins whenever it is set, even after ours.
        trace: Any = sys.modules.get("opentelemetry.trace")
        if trace is None and self._trace_exporters:
            from opentelemetry import trace as imported

            trace = imported
        if trace is None:
            return None
        provider = trace.get_tracer_provider()
        if not is_real_provider(provider):
            if not self._trace_exporters:
                return None
            if not self._built_own_traces:
                self._built_own_traces = True
                self._own_tracer_provider = otelenv.build_tracer_provider(
                    self._environ, self._trace_exporters, self.delivery
                )
                if self._own_tracer_provider is not None:
                    self._problems.attach()
            provider = self._own_tracer_provider
            if provider is None:
                return None
        if provider is not self._tracer_source:
            from .. import __version__

            self._tracer = provider.get_tracer(SCOPE, __version__)
            self._tracer_source = provider
        return self._tracer

    def _resolve_meter(self) -> None:
        if self._meter_resolved:
            if self._own_meter_provider is not None:
                self._switch_to_application_meter()
            return
        metrics: Any = sys.modules.get("opentelemetry.metrics")
        if metrics is None and (self._metric_exporters or "opentelemetry.trace" in sys.modules):
            from opentelemetry import metrics as imported

            metrics = imported
        if metrics is None:
            return
        provider = metrics.get_meter_provider()
        # Without env settings the API's proxy is used: its instruments become real
        # if the application sets a MeterProvider later.
        if not _is_real_meter_provider(provider) and self._metric_exporters:
            own = otelenv.build_meter_provider(self._environ, self._metric_exporters)
            if own is not None:
                self._own_meter_provider = provider = own
                self._problems.attach()
        self._create_instruments(provider, metrics.Observation)
        self._meter_resolved = True

    def _switch_to_application_meter(self) -> None:
        # The application set its own MeterProvider after ours was built: it wins.
        metrics: Any = sys.modules.get("opentelemetry.metrics")
        provider = metrics.get_meter_provider() if metrics is not None else None
        if not _is_real_meter_provider(provider):
            return
        own, self._own_meter_provider = self._own_meter_provider, None
        self._create_instruments(provider, metrics.Observation)
        self._bounded.run(own.shutdown, 0.0)  # exports what it counted, in the background

    def _create_instruments(self, provider: Any, observation: Any) -> None:
        from .. import __version__

        meter = provider.get_meter(SCOPE, __version__)
        self._counter = meter.create_counter(
            ANOMALIES_METRIC,
            unit="{task}",
            description="Tasks CPython reported as destroyed pending or with an "
            "exception never retrieved, coroutines never awaited, and stuck tasks",
        )

        description = "How long event loops were blocked, by what ran (creation site)"
        try:  # bucket boundaries in seconds where the API takes advice (1.23+)
            self._histogram = meter.create_histogram(
                BLOCKED_METRIC,
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=list(BLOCKED_BUCKETS),
            )
        except TypeError:
            self._histogram = meter.create_histogram(
                BLOCKED_METRIC, unit="s", description=description
            )

        def observe_live(_options: Any) -> Iterator[Any]:
            count, complete = self.live_tasks()
            # Where the interpreter lists only pending tasks (3.14+), the value says so.
            yield observation(count, {LIVE_SCOPE_ATTRIBUTE: "all" if complete else "pending"})

        meter.create_observable_gauge(
            LIVE_METRIC,
            callbacks=[observe_live],
            unit="{task}",
            description="asyncio tasks alive in the process (not yet garbage-collected); "
            f"{LIVE_SCOPE_ATTRIBUTE}=pending where only pending tasks can be listed",
        )

    # -- reports ---------------------------------------------------------------------

    def emit(self, report: Report) -> None:
        """Record ``report`` as one span (over the task's life) and one counter increment."""
        end_ns = int(report.timestamp * 1e9)
        age = report.task_age_s
        exception: Optional[dict[str, Any]] = None
        if report.kind == EXCEPTION_UNRETRIEVED:
            description = f"{report.exception_type}: {report.exception_message}"
            exception = {
                "exception.type": report.exception_type,
                "exception.message": report.exception_message,
                "exception.stacktrace": report.traceback_text(),
            }
        else:
            description = "Task was destroyed but it is pending!"
        data = _SpanData(
            report.kind,
            report.span,
            end_ns - int(age * 1e9) if age is not None else end_ns,  # the task's life
            end_ns,
            span_attributes(report),
            description,
            exception,
        )
        self._record(data, report.site, report.at_shutdown)

    def _record(self, data: _SpanData, site: Optional[Site], at_shutdown: bool) -> None:
        """One ERROR span (a child of the span current at creation, if known) and one
        count in the anomalies metric: what every kind of report and finding becomes."""

        def count() -> None:
            if self._counter is not None:
                self._counter.add(1, self._metric_attributes(site, data.kind, at_shutdown))

        self._record_span(data, count)

    def _record_span(self, data: _SpanData, measure: Callable[[], None]) -> None:
        """The span of :meth:`_record`, then ``measure()`` (its metric), under the lock."""
        if self._closed or not self._wanted():
            return
        with self._lock:
            tracer = self._resolve()
            # While the exporter is still inside a call that missed its deadline, the
            # span is skipped (said once, when it got stuck); the event is written.
            if tracer is not None and not (self._stuck and self._bounded.busy()):
                self._end_span_bounded(lambda: self._span(tracer, data))
            measure()

    def _end_span_bounded(self, make_span: Callable[[], None]) -> None:
        # The application's span processor may export inside span.end() (a
        # SimpleSpanProcessor): end the span in the export helper thread, so an exporter
        # that never returns holds up the anomaly spans, never the reporter's events.
        failed: list[Exception] = []

        def end_span() -> None:
            try:
                make_span()
            except Exception as exc:
                failed.append(exc)

        if not self._bounded.run(end_span, SPAN_TIMEOUT_S):
            self._mark_stuck(f"ending a span took over {SPAN_TIMEOUT_S:g} s")
            return
        self._unflushed = True
        if failed:
            raise failed[0]  # the reporter says it once, as for any failing sink

    def _mark_stuck(self, what: str) -> None:
        self._stuck = True
        if self._own_tracer_provider is None:  # ours: said at exit, with the count lost
            warn_once(
                "otel-stuck",
                f"the application's OpenTelemetry exporter does not return ({what}); "
                "anomaly spans are skipped while it hangs, events are unaffected "
                f"(pid {os.getpid()})",
            )

    def _span(self, tracer: Any, data: _SpanData) -> None:
        from opentelemetry import trace

        span = tracer.start_span(
            data.kind,
            context=self._parent(data.packed_span),
            attributes=data.attributes,
            start_time=data.start_ns,
        )
        if data.exception is not None:
            span.add_event(
                "exception",
                {key: value for key, value in data.exception.items() if value is not None},
                timestamp=data.end_ns,
            )
        span.set_status(trace.Status(trace.StatusCode.ERROR, data.description))
        span.end(end_time=data.end_ns)

    def _metric_attributes(
        self, site: Optional[Site], kind: str, at_shutdown: bool
    ) -> dict[str, Any]:
        key = f"{site.filename}:{site.lineno}" if site else "unknown"
        value = self._sites.get(key)
        if value is None:
            value = key if len(self._sites) < MAX_SITE_VALUES else OTHER_SITE
            if value != OTHER_SITE:
                self._sites[key] = value
        return {
            "asyncio.event": kind,
            "asyncio.task.site": value,
            "asyncio.at_shutdown": at_shutdown,
        }

    def emit_never_awaited(self, finding: NeverAwaited) -> None:
        """One ERROR span (in the trace current where the coroutine was created, when
        known; else a root span) and one count in the anomalies metric."""
        end_ns = int(finding.timestamp * 1e9)
        data = _SpanData(
            finding.kind,
            finding.span,
            end_ns,
            end_ns,
            never_awaited_attributes(finding),
            f"coroutine '{finding.coroutine}' was never awaited",
        )
        self._record(data, finding.site, finding.at_shutdown)

    def emit_stuck(self, finding: StuckTask) -> None:
        """One ERROR span from the task's creation to the check (in the trace that
        created it) and one count in the anomalies metric."""
        end_ns = int(finding.timestamp * 1e9)
        data = _SpanData(
            finding.kind,
            finding.span,
            end_ns - int(finding.task_age_s * 1e9),
            end_ns,
            stuck_attributes(finding),
            f"pending for {finding.task_age_s:.0f} s, far longer than its "
            f"{finding.siblings} sibling(s) (median {finding.siblings_median_age_s:.3g} s)",
        )
        self._record(data, finding.site, at_shutdown=False)

    @staticmethod
    def _parent(packed_span: object) -> Any:
        from opentelemetry import context, trace

        ids = unpack(packed_span)
        if ids is None:
            return context.Context()  # no span known at creation: a root span
        trace_id, span_id, sampled = ids
        remembered = trace.SpanContext(
            trace_id=trace_id,
            span_id=span_id,
            is_remote=False,
            trace_flags=trace.TraceFlags(1 if sampled else 0),
        )
        return trace.set_span_in_context(trace.NonRecordingSpan(remembered))

    def emit_blocked(self, stall: Stall) -> None:
        """A loop stall: one ERROR span over the stall (in the trace of the blocked task's
        creator, when a task was running) and one value of the duration histogram."""
        end_ns = int(stall.timestamp * 1e9)
        data = _SpanData(
            stall.kind,
            stall.span,
            end_ns - int(stall.duration_s * 1e9),
            end_ns,
            stall_attributes(stall),
            f"event loop blocked for {stall.duration_s:.3f} s",
        )

        def measure() -> None:
            if self._histogram is not None:
                self._histogram.record(stall.duration_s, self._stall_metric_attributes(stall))

        self._record_span(data, measure)

    def _stall_metric_attributes(self, stall: Stall) -> dict[str, Any]:
        site = stall.site if stall.blocked_in == IN_TASK else None
        if site is not None:
            key = f"{site.filename}:{site.lineno}"
        elif stall.blocked_in == IN_CALLBACK:
            key = f"callback {stall.callback}"
        else:
            key = stall.blocked_in
        value = self._blocked_sites.get(key)
        if value is None:
            value = key if len(self._blocked_sites) < MAX_SITE_VALUES else OTHER_SITE
            if value != OTHER_SITE:
                self._blocked_sites[key] = value
        return {"asyncio.loop.blocked_in": stall.blocked_in, "asyncio.task.site": value}

    def emit_suppressed(
        self, site: Optional[Site], kind: str, count: int, at_shutdown: bool = False
    ) -> None:
        """Count reports the rate limit held back in the anomalies metric (no spans).

        Held-back loop stalls have no duration to record: the event sink counts them."""
        if self._closed or not self._wanted() or kind == BLOCKED:
            return
        with self._lock:
            self._resolve()
            if self._counter is not None:
                self._counter.add(count, self._metric_attributes(site, kind, at_shutdown))

    # -- flush and exit ----------------------------------------------------------------

    def flush_exports(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Push the spans written so far to their exporter; False on timeout."""
        # Waits for a setup still under way (it holds the lock): a short program that
        # calls asyncio_agent.flush() gets its spans exported.
        if not self._lock.acquire(timeout=timeout):
            return False
        self._lock.release()
        if self._stuck and self._bounded.busy():
            return False  # still inside the call that missed its deadline: no second wait
        source = self._tracer_source
        if not self._unflushed or source is None:
            return True
        self._unflushed = False
        force_flush = getattr(source, "force_flush", None)
        if force_flush is None:
            return True
        millis = int(timeout * 1000)
        if self._bounded.run(lambda: force_flush(millis), min(timeout, FLUSH_TIMEOUT_S)):
            return True
        self._mark_stuck(f"a flush took over {min(timeout, FLUSH_TIMEOUT_S):g} s")
        return False

    def close_exports(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Flush, shut our own providers down (bounded), and say once what was lost."""
        if self._closed:
            return
        self._closed = True
        budget = min(timeout, CLOSE_TIMEOUT_S)
        started = time.monotonic()
        finished = self.flush_exports(budget) and not self._stuck
        own = [p for p in (self._own_tracer_provider, self._own_meter_provider) if p is not None]
        if own:
            # An exporter that already missed a flush deadline gets no second wait.
            left = 0.2 if self._stuck else max(0.1, budget - (time.monotonic() - started))

            def shutdown() -> None:
                for provider in own:
                    try:
                        provider.shutdown()
                    except Exception:
                        pass

            finished = self._bounded.run(shutdown, left) and finished
            self._problems.detach()
        self._say_lost(finished, budget)

    def _say_lost(self, finished: bool, budget: float) -> None:
        if self._own_tracer_provider is None:
            return
        delivery = self.delivery
        lost = delivery.sent - delivery.delivered
        if not finished:
            reason = f"no answer within {FLUSH_TIMEOUT_S if self._stuck else budget:g} s"
        else:
            reason = delivery.reason or self._problems.first or "export failed"
        if lost > 0 or not finished:
            where = otelenv.endpoint_description(
                self._environ, "traces", otelenv.otlp_protocol(self._environ, "traces")
            )
            count = f"{lost} anomaly span(s)" if finished else "anomaly spans"
            warn_once(
                "otel-export",
                f"{count} could not be delivered to the OpenTelemetry collector at "
                f"{where} ({reason}); dropped (pid {os.getpid()})",
            )
