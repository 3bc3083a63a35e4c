"""OpenTelemetry's API from the inside: its context variable, span key and provider slot.

Owns every private name of the OpenTelemetry API the agent reads (``_RUNTIME_CONTEXT``,
``_current_context``, ``_SPAN_KEY``, ``_TRACER_PROVIDER``, ``_set_tracer_provider``) and
the SDK's internal logger names.
Checks the layout before trusting it; never imports OpenTelemetry (it is handed the
modules the application imported) and never keeps a span or a context.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, Optional

# Loggers through which the SDK reports export failures of our own providers (its
# internal modules' names). Their records are counted and summed up in one warning
# instead of one line per retry (agent.otelenv.ExportProblems).
EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.metrics._internal.export",
    "opentelemetry.sdk.trace.export",
)

PROVIDER_SETTERS = ("_set_tracer_provider", "set_tracer_provider")
"""The private setter is what both set_tracer_provider() and the API's own
OTEL_PYTHON_TRACER_PROVIDER loading call; the public one is the fallback."""


def global_tracer_provider(trace: ModuleType) -> Any:
    """The global TracerProvider set so far (not the API's proxy), or None."""
    return getattr(trace, "_TRACER_PROVIDER", None)


def fast_span_probe(trace: ModuleType) -> Optional[Callable[[], Optional[int]]]:
    """A probe that reads the current span's ids straight from the API's context
    variable, or None if this API's layout is not the one expected (then the public
    ``get_current_span()`` is used instead). The value packs like tracing.pack()."""
    try:
        context_module = sys.modules["opentelemetry.context"]
        runtime = context_module._RUNTIME_CONTEXT
        get_context = runtime._current_context.get
        key = sys.modules["opentelemetry.trace.propagation"]._SPAN_KEY
        sample = trace.SpanContext(
            trace_id=3, span_id=5, is_remote=False, trace_flags=trace.TraceFlags(1)
        )
        if not (
            isinstance(sample, tuple)
            and sample[0] == 3
            and sample[1] == 5
            and sample[3] == 1
            and sample[5] is True
            and isinstance(get_context(), dict)
        ):
            return None
    except Exception:
        return None

    # The last SpanContext seen and its packed value: tasks created in one request
    # share a span, and an identity check is cheaper than three big-int operations.
    # A SpanContext is an immutable tuple of ids; the span itself is never kept.
    # One slot holding a (context, packed) tuple, read once: consistent across threads.
    last: list[tuple[Any, int]] = [(None, 0)]

    def probe() -> Optional[int]:
        span = get_context().get(key)
        if span is None:
            return None
        context = span.get_span_context()
        entry = last[0]
        if context is entry[0]:
            packed: int = entry[1]
            return packed
        if not context[5]:  # is_valid: the API's INVALID_SPAN when nothing is current
            return None
        packed = (context[0] << 65) | (context[1] << 1) | (context[3] & 1)
        last[0] = (context, packed)
        return packed

    return probe
