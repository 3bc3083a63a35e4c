"""Span probe: remembers which OpenTelemetry span was current when each task was created.

Owns switching ``SiteRecorder.span_probe`` on when a real global TracerProvider exists,
and the packed id value stored on tasks. Never imports OpenTelemetry itself: it waits
for the application to import ``opentelemetry.trace``, and keeps no span or context.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any, Optional

from .interp import otel_api
from .sites import SiteRecorder

TRACE_MODULE = "opentelemetry.trace"
_WRAPPED_MARK = "__asyncio_agent_wrapper__"

# A creation span packs into one int: trace id (128 bits), span id (64 bits) and the
# sampled flag (1 bit). One int, not a tuple: the garbage collector does not track it,
# so the task's attribute dict stays untracked.
_SPAN_BITS = 64
_SPAN_MASK = (1 << _SPAN_BITS) - 1


def pack(trace_id: int, span_id: int, sampled: bool) -> int:
    """One int holding a span's trace id, span id and sampled flag."""
    return (trace_id << (_SPAN_BITS + 1)) | (span_id << 1) | int(sampled)


def unpack(value: object) -> Optional[tuple[int, int, bool]]:
    """``(trace_id, span_id, sampled)`` from :func:`pack`'s value, or None."""
    if type(value) is not int or value <= 0:
        return None
    return value >> (_SPAN_BITS + 1), (value >> 1) & _SPAN_MASK, bool(value & 1)


def hex_ids(value: object) -> Optional[tuple[str, str]]:
    """The trace id and span id as OpenTelemetry writes them in logs (32 and 16 hex)."""
    ids = unpack(value)
    if ids is None:
        return None
    return f"{ids[0]:032x}", f"{ids[1]:016x}"


def is_real_provider(provider: object) -> bool:
    """Whether ``provider`` makes recording spans (not the API's proxy or no-op one)."""
    if provider is None:
        return False
    name = type(provider).__name__
    return name not in ("ProxyTracerProvider", "NoOpTracerProvider", "_ProxyTracerProvider")


def make_probe(trace: ModuleType) -> Callable[[], Optional[int]]:
    """The cheapest probe this OpenTelemetry version allows.

    The fast one reads the context variable and the span key directly and indexes the
    SpanContext tuple; if the API's layout is not the one expected, the public
    ``get_current_span()`` is used instead.
    """
    fast = otel_api.fast_span_probe(trace)
    if fast is not None:
        return fast
    get_current_span = trace.get_current_span

    def probe() -> Optional[int]:
        context = get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return pack(context.trace_id, context.span_id, bool(context.trace_flags & 1))

    return probe


def _checking_setter(original: Any, check: Callable[[], None]) -> Any:
    def setter(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        try:
            check()
        except Exception:
            pass
        return result

    setattr(setter, _WRAPPED_MARK, True)
    setter.__wrapped__ = original  # type: ignore[attr-defined]
    return setter


class SpanProbeSwitch:
    """Turns the recorder's span probe on once a real global TracerProvider is set.

    Watches ``opentelemetry.trace``: checks the provider when the module is imported
    (or at once if it already is) and wraps its provider setter, so a provider the
    application sets later, in its ``main()``, is noticed when it is set. Until then
    ``span_probe`` stays None and task creation pays nothing.
    """

    def __init__(self, recorder: SiteRecorder) -> None:
        self._recorder = recorder
        self._module: Optional[ModuleType] = None
        self._setter_name: Optional[str] = None
        self._original_setter: Any = None

    def on_trace_imported(self, trace: ModuleType) -> None:
        """Post-import hook callback for ``opentelemetry.trace``."""
        self._module = trace
        self._wrap_setter(trace)
        self.check()

    def check(self) -> None:
        """Turn the probe on if the global TracerProvider is a real one."""
        trace = self._module
        if trace is None or self._recorder.span_probe is not None:
            return
        if is_real_provider(otel_api.global_tracer_provider(trace)):
            self._recorder.span_probe = make_probe(trace)

    def _wrap_setter(self, trace: ModuleType) -> None:
        for name in otel_api.PROVIDER_SETTERS:
            original = getattr(trace, name, None)
            if original is None:
                continue
            if getattr(original, _WRAPPED_MARK, False):
                return
            setattr(trace, name, _checking_setter(original, self.check))
            self._setter_name, self._original_setter = name, original
            return

    def remove(self) -> None:
        """Switch the probe off and put the provider setter back."""
        self._recorder.span_probe = None
        trace, name = self._module, self._setter_name
        if trace is not None and name is not None:
            current = getattr(trace, name, None)
            if getattr(current, _WRAPPED_MARK, False):
                setattr(trace, name, self._original_setter)
        self._module = self._setter_name = self._original_setter = None
