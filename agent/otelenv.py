"""The agent's own OpenTelemetry SDK providers, built from the standard ``OTEL_*`` variables.

Owns reading the exporter variables and building a TracerProvider / MeterProvider for
anomalies when the application has none. Imports the SDK only inside the builders, and
never sets a global provider: the application's own setup always stays in charge.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from .interp.otel_api import EXPORT_LOGGERS
from .notices import warn_once

KNOWN_EXPORTERS = ("otlp", "console")
PROTOCOLS = ("http/protobuf", "grpc")
DEFAULT_PROTOCOL = "http/protobuf"


def _is_true(raw: Optional[str]) -> bool:
    return (raw or "").strip().lower() == "true"


def requested_exporters(environ: Mapping[str, str], signal: str) -> tuple[str, ...]:
    """The exporters ``OTEL_<SIGNAL>_EXPORTER`` asks for that the agent can build.

    Unset, ``none`` or ``OTEL_SDK_DISABLED=true``: none. Unknown names give one warning.
    """
    if _is_true(environ.get("OTEL_SDK_DISABLED")):
        return ()
    name = f"OTEL_{signal.upper()}_EXPORTER"
    raw = environ.get(name, "")
    chosen: list[str] = []
    for item in raw.split(","):
        exporter = item.strip().lower()
        if not exporter or exporter == "none":
            continue
        if exporter in KNOWN_EXPORTERS:
            chosen.append(exporter)
        else:
            warn_once(
                f"{name}:{exporter}",
                f"{name}={raw!r}: the agent can build 'otlp' and 'console' only; "
                f"{exporter!r} ignored for anomalies",
            )
    return tuple(chosen)


def otlp_protocol(environ: Mapping[str, str], signal: str) -> str:
    """``http/protobuf`` (the specification's default) or ``grpc``."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        raw = environ.get(name)
        if raw is None or not raw.strip():
            continue
        value = raw.strip().lower()
        if value in PROTOCOLS:
            return value
        warn_once(name, f"{name}={raw!r} is not 'http/protobuf' or 'grpc'; using http/protobuf")
        return DEFAULT_PROTOCOL
    return DEFAULT_PROTOCOL


def endpoint_description(environ: Mapping[str, str], signal: str, protocol: str) -> str:
    """Where OTLP data goes, for warnings (the exporters read the variables themselves)."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = environ.get(name, "").strip()
        if value:
            return value
    return "http://localhost:4317" if protocol == "grpc" else "http://localhost:4318"


class ExportProblems:
    """Swallows the SDK's per-retry export log lines for our providers, keeping the first.

    A logging filter by duck typing: :mod:`logging` is imported only when attached.
    """

    _WARNING = 30  # logging.WARNING

    def __init__(self) -> None:
        self.first: Optional[str] = None
        self.count = 0
        self._loggers: list[Any] = []

    def filter(self, record: Any) -> bool:
        """False (drop) for warnings and errors, which are summed up in one warning."""
        if record.levelno < self._WARNING:
            return True
        self.count += 1
        if self.first is None:
            try:
                self.first = record.getMessage()
            except Exception:
                self.first = str(record.msg)
        return False

    def attach(self) -> None:
        """Add the filter to the SDK's exporter loggers (while the SDK is being set up)."""
        import logging

        for name in EXPORT_LOGGERS:
            logger = logging.getLogger(name)
            logger.addFilter(self)
            self._loggers.append(logger)

    def detach(self) -> None:
        """Remove the filter again (after our providers shut down; imports nothing)."""
        loggers, self._loggers = self._loggers, []
        for logger in loggers:
            logger.removeFilter(self)


class SpanDelivery:
    """Counts anomaly spans handed to the exporter and those it delivered."""

    def __init__(self) -> None:
        self.sent = 0
        self.delivered = 0
        self.reason: Optional[str] = None


def _counting_exporter(inner: Any, delivery: SpanDelivery) -> Any:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class CountingSpanExporter(SpanExporter):  # type: ignore[misc]
        """Delegates to the real exporter and counts what it delivered."""

        def export(self, spans: Sequence[Any]) -> Any:
            delivery.sent += len(spans)
            try:
                result = inner.export(spans)
            except Exception as exc:
                delivery.reason = f"{type(exc).__name__}: {exc}"
                return SpanExportResult.FAILURE
            if result == SpanExportResult.SUCCESS:
                delivery.delivered += len(spans)
            elif delivery.reason is None:
                delivery.reason = "the exporter reported a failure"
            return result

        def shutdown(self) -> None:
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return bool(inner.force_flush(timeout_millis))

    return CountingSpanExporter()


def _resource() -> Any:
    import sys

    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.version import __version__ as sdk_version

    # What Resource.create() gives, without its thread pool: the setup may still be
    # running while the program exits, when thread pools refuse new work.
    executable = sys.executable.rsplit("/", 1)[-1] if sys.executable else "python"
    base = Resource(
        {
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": sdk_version,
            "service.name": f"unknown_service:{executable}",
        }
    )
    # OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME over it.
    return base.merge(OTELResourceDetector().detect())


def _span_exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if otlp_protocol(environ, "traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def _metric_exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    if otlp_protocol(environ, "metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    return OTLPMetricExporter()


def _missing_package(variable: str, exc: ImportError) -> None:
    warn_once(
        f"otel-import:{variable}",
        f"{variable} asks for OpenTelemetry export but {exc.name or exc} is not installed "
        "(pip install 'asyncio-agent[otlp]'); anomalies are not exported there",
    )


def build_tracer_provider(
    environ: Mapping[str, str], exporters: Sequence[str], delivery: SpanDelivery
) -> Any:
    """A private SDK TracerProvider exporting through a BatchSpanProcessor, or None."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # shutdown_on_exit=False: the agent shuts it down itself, within a time bound.
        provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
        for name in exporters:
            exporter = _counting_exporter(_span_exporter(name, environ), delivery)
            provider.add_span_processor(BatchSpanProcessor(exporter))
    except ImportError as exc:
        _missing_package("OTEL_TRACES_EXPORTER", exc)
        return None
    return provider


def build_meter_provider(environ: Mapping[str, str], exporters: Sequence[str]) -> Any:
    """A private SDK MeterProvider with a periodic reader per exporter, or None."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        # The reader honours OTEL_METRIC_EXPORT_INTERVAL (default 60 s) and exports
        # once more when the agent shuts the provider down at exit.
        readers = [
            PeriodicExportingMetricReader(_metric_exporter(name, environ)) for name in exporters
        ]
        return MeterProvider(resource=_resource(), metric_readers=readers, shutdown_on_exit=False)
    except ImportError as exc:
        _missing_package("OTEL_METRICS_EXPORTER", exc)
        return None


class BoundedRunner:
    """Runs exporter calls in one helper thread and waits for them only so long.

    Exporters may block on a slow collector for their whole export timeout; the
    program's exit must not wait for that. The thread is started early, with the
    providers, because no thread can be started once the interpreter is shutting down.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._thread: Optional[threading.Thread] = None
        self._busy = False

    def busy(self) -> bool:
        """Whether the helper thread is inside a call (perhaps one that never returns)."""
        return self._busy

    def start(self) -> None:
        """Start the helper thread (again, after a fork) if it is not running."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        thread = threading.Thread(target=self._work, name="asyncio-agent-otel-export", daemon=True)
        thread.start()
        self._thread = thread

    def _work(self) -> None:
        while True:
            action, done = self._jobs.get()
            self._busy = True
            try:
                action()
            except Exception:
                pass
            finally:
                self._busy = False
                done.set()

    def run(self, action: Callable[[], object], timeout: float) -> bool:
        """Run ``action()``; False if it has not finished within ``timeout`` seconds."""
        try:
            self.start()
        except RuntimeError:  # no new threads at shutdown: run in place
            try:
                action()
            except Exception:
                pass
            return True
        done = threading.Event()
        self._jobs.put((action, done))
        return done.wait(timeout)
