"""Never hurt the host: an OpenTelemetry exporter of the application that hangs.

The application's own TracerProvider exports through an exporter that never returns
(an export that sleeps for an hour, or a collector that accepts the connection and
never answers). The program must run on, every event must still be written, the agent
may warn once, and the process must end.
"""

from __future__ import annotations

import json
import socket

import pytest
from conftest import DESTROYED, Runner

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra (pip install .[otlp])")

HANGING_EXPORTER = """
import asyncio, gc, json, os, sys, time

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult,
)

import asyncio_agent

KIND = sys.argv[1]
ROUNDS, PER_ROUND = 10, 500
calls = []


class SleepingExporter(SpanExporter):
    # A collector that never answers: each export blocks for an hour.
    def export(self, spans):
        calls.append(len(spans))
        time.sleep(3600)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30000):
        return True


if KIND == "silent_otlp_endpoint":
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=os.environ["SILENT_ENDPOINT"], timeout=3600)
else:
    exporter = SleepingExporter()
if KIND == "batch":
    # shutdown_on_exit=False: the SDK's own exit wait for its stuck worker (30 s) is
    # the application's business, not the agent's.
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=10))
else:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)


async def hang():
    await asyncio.get_running_loop().create_future()


async def main():
    leaked = 0
    for _ in range(ROUNDS):
        for _ in range(PER_ROUND):
            asyncio.create_task(hang())
        await asyncio.sleep(0)
        gc.collect()  # the finalizers report: spans go to the hanging exporter
        leaked += PER_ROUND
        time.sleep(0.05)  # the application's own work
    return leaked


gc.disable()
leaked = asyncio.run(main())
print(json.dumps({"leaked": leaked, "flushed": asyncio_agent.flush(20)}))
"""


@pytest.mark.parametrize("kind", ["simple", "batch", "silent_otlp_endpoint"])
def test_hanging_exporter_of_the_application_neither_stops_the_program_nor_its_events(
    run: Runner, kind: str
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # accepts connections (the backlog) and never answers
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces"
    try:
        result = run(
            HANGING_EXPORTER,
            args=(kind,),
            env={"ASYNCIO_AGENT_RATE_LIMIT": "0", "SILENT_ENDPOINT": endpoint},
            timeout=90,  # the process ends: an export alone would block for an hour
        )
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary == {"leaked": 5000, "flushed": True}, result.stderr[-3000:]
    # The events do not wait for the exporter: every report is written.
    assert len(result.of_kind(DESTROYED)) == 5000
    warnings = [line for line in result.stderr.splitlines() if line.startswith("asyncio-agent")]
    assert len(warnings) <= 1, result.stderr[-3000:]
    assert all("OpenTelemetry exporter does not return" in line for line in warnings)
    assert "Traceback" not in result.stderr
