"""The ``opentelemetry-instrument`` entry point: turns the agent on like any contrib instrumentor.

Owns the ``BaseInstrumentor`` subclass registered under ``opentelemetry_instrumentor``.
Loaded only by OpenTelemetry's auto-instrumentation; never imported by the agent itself.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor


class AsyncioAgentInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Installs the agent: lost asyncio tasks become spans in the current trace.

    ``instrument(**options)`` takes the keywords of :func:`asyncio_agent.install`.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        """Nothing to wait for: the agent patches asyncio itself when it is imported."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        from . import runtime

        runtime.install(**kwargs)

    def _uninstrument(self, **kwargs: Any) -> None:
        from . import runtime

        runtime.uninstall()
