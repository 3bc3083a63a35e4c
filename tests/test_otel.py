"""OpenTelemetry: anomalies as ERROR spans inside the request's trace, and metrics.

Each program runs in a subprocess with the agent switched on by env var. The program
sets up the SDK with in-memory exporters (as an application would set up its own) and
prints what was exported as JSON; the tests read that JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import DESTROYED, SHAPE_314, UNRETRIEVED, Run, Runner, clean_environment, line_of

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra (pip install .[otlp])")

# An application that configures OpenTelemetry in its main, after the agent started.
PRELUDE = """
import asyncio, gc, json, sys
gc.disable()

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

def setup():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "signup"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return exporter, reader

def dump(exporter, reader):
    import asyncio_agent
    asyncio_agent.flush()
    spans = [json.loads(s.to_json(indent=None)) for s in exporter.get_finished_spans()]
    points = {}
    data = reader.get_metrics_data()
    for rm in (data.resource_metrics if data else []):
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "asyncio.loop.blocked.duration":
                    continue  # a loaded machine's stalls (a histogram: no single value)
                points[m.name] = [
                    {"attributes": dict(p.attributes), "value": p.value}
                    for p in m.data.data_points
                ]
    print("OTEL " + json.dumps({"spans": spans, "metrics": points}))
"""

REQUEST = (
    PRELUDE
    + """
async def forever():
    await asyncio.Event().wait()

async def boom():
    raise ValueError("lost work")

async def handle_signup():
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("GET /signup"):
        asyncio.create_task(forever())  # SITE-PENDING
        asyncio.create_task(boom())  # SITE-BOOM
        await asyncio.sleep(0.01)
    gc.collect()

exporter, reader = setup()
asyncio.run(handle_signup())
dump(exporter, reader)
"""
)


def exported(result: Run) -> dict[str, Any]:
    """The spans and metric points the program printed."""
    assert result.returncode == 0, result.stderr[-3000:]
    for line in result.stdout.splitlines():
        if line.startswith("OTEL "):
            data: dict[str, Any] = json.loads(line[5:])
            return data
    raise AssertionError(result.stdout + result.stderr)


def named(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [span for span in spans if span["name"] == name]
    assert len(found) == 1, [span["name"] for span in spans]
    return found[0]


def test_anomaly_spans_are_children_of_the_request_span(run: Runner) -> None:
    spans = exported(run(REQUEST))["spans"]
    request = named(spans, "GET /signup")
    for kind in (DESTROYED, UNRETRIEVED):
        span = named(spans, kind)
        assert span["parent_id"] == request["context"]["span_id"]
        assert span["context"]["trace_id"] == request["context"]["trace_id"]
        assert span["status"]["status_code"] == "ERROR"
        assert span["resource"]["attributes"]["service.name"] == "signup"


def test_anomaly_span_carries_creation_site_and_task_attributes(run: Runner) -> None:
    spans = exported(run(REQUEST))["spans"]
    attributes = named(spans, DESTROYED)["attributes"]
    assert attributes["code.filepath"].endswith("app.py")
    assert attributes["code.lineno"] == line_of(REQUEST, "# SITE-PENDING")
    assert attributes["code.function"] == "handle_signup"
    stack = attributes["code.stacktrace"].splitlines()
    assert stack[-1].endswith(f"app.py:{line_of(REQUEST, '# SITE-PENDING')} in handle_signup")
    assert attributes["asyncio.task.name"] == "Task-2"
    assert attributes["asyncio.task.coroutine"] == "forever"
    assert attributes["asyncio.task.age_s"] >= 0
    assert attributes["asyncio.at_shutdown"] is False
    assert attributes["thread.name"] == "MainThread"
    assert named(spans, DESTROYED)["status"]["description"] == (
        "Task was destroyed but it is pending!"
    )


def test_unretrieved_exception_is_an_exception_event_on_its_span(run: Runner) -> None:
    spans = exported(run(REQUEST))["spans"]
    span = named(spans, UNRETRIEVED)
    assert span["attributes"]["code.lineno"] == line_of(REQUEST, "# SITE-BOOM")
    assert span["attributes"]["asyncio.task.coroutine"] == "boom"
    assert span["status"]["description"] == "ValueError: lost work"
    (event,) = span["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "lost work"
    stacktrace = event["attributes"]["exception.stacktrace"]
    assert stacktrace.startswith("Traceback (most recent call last):")
    assert stacktrace.rstrip().endswith("ValueError: lost work")


def test_anomaly_span_lasts_from_task_creation_to_the_report(run: Runner) -> None:
    spans = exported(run(REQUEST))["spans"]
    request, pending = named(spans, "GET /signup"), named(spans, DESTROYED)
    start, end = _time(pending["start_time"]), _time(pending["end_time"])
    # Creation times are kept to the millisecond.
    assert _time(request["start_time"]) - 0.002 <= start <= _time(request["end_time"])
    assert end >= _time(request["end_time"])  # collected after the request ended


def _time(iso: str) -> float:
    from datetime import datetime

    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def test_task_created_outside_any_span_gets_a_root_span(run: Runner) -> None:
    source = (
        PRELUDE
        + """
async def boom():
    raise ValueError("no request")

async def main():
    asyncio.create_task(boom())
    await asyncio.sleep(0.01)
    gc.collect()

exporter, reader = setup()
asyncio.run(main())
dump(exporter, reader)
"""
    )
    result = run(source)
    span = named(exported(result)["spans"], UNRETRIEVED)
    assert span["parent_id"] is None
    (event,) = result.of_kind(UNRETRIEVED)
    assert "trace_id" not in event and "span_id" not in event


def test_events_carry_the_trace_and_span_id_of_the_creation_span(run: Runner) -> None:
    result = run(REQUEST)
    request = named(exported(result)["spans"], "GET /signup")
    assert len(result.anomalies()) == 2
    for event in result.anomalies():
        assert "0x" + event["trace_id"] == request["context"]["trace_id"]
        assert "0x" + event["span_id"] == request["context"]["span_id"]
        assert len(event["trace_id"]) == 32 and len(event["span_id"]) == 16


def test_unsampled_request_keeps_its_anomalies_out_of_the_trace(run: Runner) -> None:
    # A ParentBased sampler follows the remembered parent's sampled flag.
    source = REQUEST.replace(
        "provider = TracerProvider(",
        "from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased\n"
        "    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF), ",
    )
    result = run(source)
    assert exported(result)["spans"] == []
    assert len(result.anomalies()) == 2


def test_anomaly_counter_counts_by_kind_and_creation_site(run: Runner) -> None:
    points = exported(run(REQUEST))["metrics"]["asyncio.task.anomalies"]
    by_kind = {p["attributes"]["asyncio.event"]: p for p in points}
    assert set(by_kind) == {DESTROYED, UNRETRIEVED}
    pending = by_kind[DESTROYED]
    assert pending["value"] == 1
    assert pending["attributes"]["asyncio.task.site"].endswith(
        f"app.py:{line_of(REQUEST, '# SITE-PENDING')}"
    )
    assert pending["attributes"]["asyncio.at_shutdown"] is False


def test_counter_gives_sites_beyond_the_cap_the_value_other(run: Runner) -> None:
    source = (
        PRELUDE
        + """
async def boom():
    raise ValueError("x")

async def main():
    for number in range(130):  # 130 distinct creation sites (one file each)
        exec(compile("asyncio.create_task(boom())", f"site{number}.py", "exec"))
    await asyncio.sleep(0.01)
    gc.collect()

exporter, reader = setup()
asyncio.run(main())
dump(exporter, reader)
"""
    )
    points = exported(run(source))["metrics"]["asyncio.task.anomalies"]
    sites = {p["attributes"]["asyncio.task.site"]: p["value"] for p in points}
    assert len(sites) == 101
    assert sites["other"] == 30
    assert sum(sites.values()) == 130


def test_live_task_gauge_counts_tasks_not_yet_collected(run: Runner) -> None:
    source = (
        PRELUDE
        + """
async def main(keep):
    for _ in range(5):
        keep.append(asyncio.create_task(asyncio.Event().wait()))
    await asyncio.sleep(0)
    exporter, reader = setup()
    data = reader.get_metrics_data()
    values = [(p.value, dict(p.attributes)) for rm in data.resource_metrics
              for sm in rm.scope_metrics for m in sm.metrics if m.name == "asyncio.task.live"
              for p in m.data.data_points]
    print("LIVE", json.dumps(values))
    for task in keep:
        task.cancel()

asyncio.run(main([]))
"""
    )
    result = run(source)
    assert result.returncode == 0, result.stderr
    # The five waiting tasks and main's own task; labelled "pending" where the
    # interpreter lists pending tasks only (3.14+, or its simulated shape).
    listed = "pending" if SHAPE_314 else "all"
    expected = [[6, {"asyncio.tasks.listed": listed}]]
    assert f"LIVE {json.dumps(expected)}" in result.stdout, result.stdout + result.stderr


PROBE_STATE = """
import asyncio, sys
import asyncio_agent.runtime

def probe():
    return asyncio_agent.runtime.current().recorder.span_probe is not None

before_import = probe()
from opentelemetry import trace
after_import = probe()
trace.get_tracer("app").start_span("no provider yet").end()
with_proxy = probe()
from opentelemetry.sdk.trace import TracerProvider
trace.set_tracer_provider(TracerProvider())
print(before_import, after_import, with_proxy, probe())
"""


def test_span_probe_stays_off_until_the_application_sets_a_real_provider(run: Runner) -> None:
    result = run(PROBE_STATE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False", "True"]


def test_without_opentelemetry_nothing_of_it_is_imported(run: Runner) -> None:
    source = """
    import asyncio, gc, sys
    gc.disable()

    async def boom():
        raise ValueError("x")

    async def main():
        asyncio.create_task(boom())
        await asyncio.sleep(0.01)
        gc.collect()

    asyncio.run(main())
    import asyncio_agent, asyncio_agent.runtime
    asyncio_agent.flush()
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    print(asyncio_agent.runtime.current().recorder.span_probe)
    """
    result = run(source)
    assert result.stdout.split("\n")[:2] == ["[]", "None"], result.stdout + result.stderr
    assert len(result.of_kind(UNRETRIEVED)) == 1


ENV_ONLY = """
import asyncio, gc, sys
gc.disable()

async def forever():
    await asyncio.Event().wait()

async def boom():
    raise ValueError("lost work")

async def main():
    asyncio.create_task(forever())
    asyncio.create_task(boom())
    await asyncio.sleep(0.01)
    gc.collect()
    print("sdk imported:", "opentelemetry.sdk.trace" in sys.modules)

asyncio.run(main())
import asyncio_agent
asyncio_agent.flush()  # a short script: make sure the background OTel setup has finished
"""


def test_console_exporter_from_env_prints_root_spans_with_service_name(run: Runner) -> None:
    result = run(
        ENV_ONLY,
        env={
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "mailer",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        },
    )
    assert result.returncode == 0, result.stderr
    spans = [json.loads(chunk) for chunk in _json_objects(result.stdout)]
    assert sorted(span["name"] for span in spans) == [DESTROYED, UNRETRIEVED]
    for span in spans:
        assert span["parent_id"] is None
        assert span["resource"]["attributes"]["service.name"] == "mailer"
        assert span["resource"]["attributes"]["deployment.environment"] == "test"
    assert "asyncio-agent: warning" not in result.stderr


def _json_objects(text: str) -> list[str]:
    """Split concatenated pretty-printed JSON objects."""
    decoder = json.JSONDecoder()
    chunks, index = [], 0
    while index < len(text):
        if text[index] != "{":
            index += 1
            continue
        _, end = decoder.raw_decode(text, index)
        chunks.append(text[index:end])
        index = end
    return chunks


def test_sdk_is_not_imported_when_no_otel_variable_is_set(run: Runner) -> None:
    result = run(ENV_ONLY)
    assert "sdk imported: False" in result.stdout, result.stdout + result.stderr


def test_unreachable_collector_gives_one_warning_and_the_program_runs_on(run: Runner) -> None:
    result = run(
        ENV_ONLY,
        env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # discard port: closed
        },
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "asyncio-agent: warning" in line]
    assert len(warnings) == 1, result.stderr
    assert "127.0.0.1:9" in warnings[0] and "dropped" in warnings[0]
    # The SDK's own per-attempt log lines are summed up in that one warning.
    assert "Transient error" not in result.stderr and "Failed to export" not in result.stderr
    assert len(result.anomalies()) == 2  # the events themselves are unaffected


def test_silent_collector_does_not_hold_the_program_at_exit(run: Runner, tmp_path: Path) -> None:
    # A listener that accepts connections and never answers: exports hang until their
    # own timeout, which the agent does not wait for at exit.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        result = run(
            ENV_ONLY,
            env={
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "60",
            },
            timeout=40,  # exporting alone would take 60 s
        )
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "asyncio-agent: warning" in line]
    assert len(warnings) == 1, result.stderr
    assert "no answer within" in warnings[0]


def test_missing_exporter_package_is_one_warning(run: Runner) -> None:
    # Hide the OTLP exporters as if the `otlp` extra were not installed.
    source = (
        textwrap.dedent(
            """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.startswith("opentelemetry.exporter"):
                    raise ImportError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        """
        )
        + ENV_ONLY
    )
    result = run(source, env={"OTEL_TRACES_EXPORTER": "otlp"})
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "asyncio-agent: warning" in line]
    assert len(warnings) == 1, result.stderr
    assert "asyncio-agent[otlp]" in warnings[0]
    assert len(result.anomalies()) == 2


def test_opentelemetry_instrument_turns_the_agent_on(tmp_path: Path) -> None:
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    if not instrument.exists():
        pytest.skip("needs opentelemetry-instrumentation (the otel-test extra)")
    pytest.importorskip("opentelemetry.distro", reason="needs opentelemetry-distro")
    source = """
    import asyncio, gc
    from opentelemetry import trace
    gc.disable()

    async def boom():
        raise ValueError("lost work")

    async def main():
        with trace.get_tracer("app").start_as_current_span("GET /signup"):
            asyncio.create_task(boom())
            await asyncio.sleep(0.01)
        gc.collect()

    asyncio.run(main())
    """
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(source))
    env = clean_environment()  # no ASYNCIO_AGENT: the instrumentor entry point turns it on
    env.update(
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="signup",
        ASYNCIO_AGENT_OUTPUT=str(tmp_path / "events.jsonl"),
    )
    completed = subprocess.run(
        [str(instrument), sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    spans = [json.loads(chunk) for chunk in _json_objects(completed.stdout)]
    request = named(spans, "GET /signup")
    anomaly = named(spans, UNRETRIEVED)
    assert anomaly["parent_id"] == request["context"]["span_id"]
    assert anomaly["resource"]["attributes"]["service.name"] == "signup"
    (event,) = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert event["event"] == UNRETRIEVED
    assert "0x" + event["span_id"] == request["context"]["span_id"]


def test_application_providers_win_over_the_otel_environment(run: Runner) -> None:
    # OTEL_*_EXPORTER set for the agent, but the application configures its own
    # providers in main(), after the agent built its own: the anomalies go to the
    # application's providers, none to the console exporter.
    result = run(
        REQUEST,
        env={"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console"},
    )
    data = exported(result)
    request = named(data["spans"], "GET /signup")
    assert named(data["spans"], DESTROYED)["parent_id"] == request["context"]["span_id"]
    points = data["metrics"]["asyncio.task.anomalies"]
    assert sum(point["value"] for point in points) == 2
    console = result.stdout.split("OTEL ")[0]
    assert DESTROYED not in console and "asyncio.task.anomalies" not in console


def test_uninstall_switches_the_probe_off_and_restores_the_provider_setter(
    run: Runner,
) -> None:
    source = """
    import asyncio_agent, asyncio_agent.runtime
    from opentelemetry import trace
    wrapped = trace._set_tracer_provider
    recorder = asyncio_agent.runtime.current().recorder
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
    on = recorder.span_probe is not None
    asyncio_agent.uninstall()
    print(on, recorder.span_probe, trace._set_tracer_provider is wrapped.__wrapped__)
    """
    result = run(source)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "None", "True"]


def test_anomaly_counter_counts_reports_the_rate_limit_held_back(run: Runner) -> None:
    # 30 lost tasks from one line with a limit of 5 a second: 5 spans, but the counter
    # counts every report CPython made.
    source = (
        PRELUDE
        + """
async def boom():
    raise ValueError("lost work")

async def main():
    for _ in range(30):
        asyncio.create_task(boom())  # SITE
    await asyncio.sleep(0.01)
    gc.collect()

exporter, reader = setup()
asyncio.run(main())
dump(exporter, reader)
"""
    )
    result = run(source, env={"ASYNCIO_AGENT_RATE_LIMIT": "5"})
    data = exported(result)
    assert len(data["spans"]) == 5
    points = data["metrics"]["asyncio.task.anomalies"]
    assert sum(p["value"] for p in points) == 30
    assert {p["attributes"]["asyncio.event"] for p in points} == {UNRETRIEVED}


def test_redacted_reports_put_no_message_in_spans(run: Runner) -> None:
    # The message is made at run time: source lines stay in tracebacks (code, not data).
    source = REQUEST.replace('ValueError("lost work")', 'ValueError("-".join(["4111"] * 4))')
    data = exported(run(source, env={"ASYNCIO_AGENT_REDACT": "1"}))
    text = json.dumps(data["spans"])
    assert "4111-4111" not in text
    [span] = [s for s in data["spans"] if s["name"] == UNRETRIEVED]
    assert span["status"]["description"] == "ValueError: ValueError"


def test_opentelemetry_asyncio_instrumentation_does_not_take_the_creation_site(
    run: Runner,
) -> None:
    # Its wrapper of create_task calls the original on the caller's behalf: the site is
    # still the application's line (as with asyncio's and uvloop's own frames).
    pytest.importorskip("opentelemetry.instrumentation.asyncio")
    source = """
    import asyncio, gc
    from opentelemetry.instrumentation.asyncio import AsyncioInstrumentor
    AsyncioInstrumentor().instrument()
    gc.disable()

    async def forever():
        await asyncio.Event().wait()

    async def main():
        asyncio.create_task(forever())  # SITE
        await asyncio.sleep(0)
        gc.collect()

    asyncio.run(main())
    """
    result = run(source)
    [event] = result.anomalies()
    assert (event["creation_function"], event["creation_line"]) == ("main", line_of(source, "SITE"))


NEVER_AWAITED_PROGRAM = (
    PRELUDE
    + """
async def fetch():
    pass

async def handle_order():
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("GET /orders"):
        fetch()  # SITE-DROPPED
        kept = fetch()  # SITE-KEPT
    del kept  # outside the request: its creation context is not known here

exporter, reader = setup()
asyncio.run(handle_order())
dump(exporter, reader)
"""
)


BLOCKING_REQUEST = (
    PRELUDE
    + """
import time

async def render_report():
    time.sleep(0.6)  # BLOCK

async def handle_report():
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("GET /report"):
        await asyncio.create_task(render_report())  # SITE

exporter, reader = setup()
asyncio.run(handle_report())
import asyncio_agent
asyncio_agent.flush()
spans = [json.loads(s.to_json(indent=None)) for s in exporter.get_finished_spans()]
points = []
for rm in reader.get_metrics_data().resource_metrics:
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            if m.name == "asyncio.loop.blocked.duration":
                points += [
                    {"attributes": dict(p.attributes), "count": p.count, "sum": p.sum}
                    for p in m.data.data_points
                ]
print("OTEL " + json.dumps({"spans": spans, "metrics": points}))
"""
)


@pytest.mark.parametrize("origin", ["0", "4"])
def test_never_awaited_coroutine_is_an_error_span_in_its_creation_trace(
    run: Runner, origin: str
) -> None:
    result = run(NEVER_AWAITED_PROGRAM, env={"ASYNCIO_AGENT_COROUTINE_ORIGIN": origin})
    data = exported(result)
    request = named(data["spans"], "GET /orders")
    spans = [s for s in data["spans"] if s["name"] == "asyncio.coroutine.never_awaited"]
    assert len(spans) == 2
    dropped, kept = spans
    for span in spans:
        assert span["status"]["status_code"] == "ERROR"
        assert span["status"]["description"] == "coroutine 'fetch' was never awaited"
        assert span["attributes"]["asyncio.coroutine"] == "fetch"
    # Its last reference went at the line that created it: the trace current there is
    # its creation trace (known only with origin tracking, which names that line).
    if origin == "4":
        assert dropped["parent_id"] == request["context"]["span_id"]
        assert dropped["context"]["trace_id"] == request["context"]["trace_id"]
        assert dropped["attributes"]["code.lineno"] == line_of(
            NEVER_AWAITED_PROGRAM, "# SITE-DROPPED"
        )
        assert kept["attributes"]["code.lineno"] == line_of(NEVER_AWAITED_PROGRAM, "# SITE-KEPT")
        event = result.of_kind("asyncio.coroutine.never_awaited")[0]
        assert event["trace_id"] == request["context"]["trace_id"][2:]
    else:
        assert dropped["parent_id"] is None
        assert "code.lineno" not in dropped["attributes"]
    assert kept["parent_id"] is None  # died elsewhere: a root span
    points = data["metrics"]["asyncio.task.anomalies"]
    assert {p["attributes"]["asyncio.event"] for p in points} == {"asyncio.coroutine.never_awaited"}
    assert sum(p["value"] for p in points) == 2
    # One count per creation site: two known lines, or one "unknown".
    assert len(points) == (2 if origin == "4" else 1)


def test_blocked_loop_is_a_span_in_the_trace_that_created_the_task_and_a_histogram(
    run: Runner,
) -> None:
    result = run(BLOCKING_REQUEST, env={"ASYNCIO_AGENT_BLOCK_MS": "200"})
    data = exported(result)
    request = named(data["spans"], "GET /report")
    span = named(data["spans"], "asyncio.loop.blocked")
    assert span["parent_id"] == request["context"]["span_id"]
    assert span["context"]["trace_id"] == request["context"]["trace_id"]
    assert span["status"]["status_code"] == "ERROR"
    attributes = span["attributes"]
    assert attributes["asyncio.loop.blocked_in"] == "task"
    assert attributes["asyncio.task.coroutine"] == "render_report"
    assert attributes["code.lineno"] == line_of(BLOCKING_REQUEST, "# SITE")
    assert attributes["code.function"] == "handle_report"
    blocking_line = f"app.py:{line_of(BLOCKING_REQUEST, '# BLOCK')} in render_report"
    assert attributes["asyncio.loop.blocking_stack"].splitlines()[-1].endswith(blocking_line)
    assert attributes["asyncio.loop.blocked_s"] > 0.2
    [point] = data["metrics"]
    assert point["count"] == 1
    assert point["attributes"]["asyncio.loop.blocked_in"] == "task"
    site = point["attributes"]["asyncio.task.site"]
    assert site.endswith(f"app.py:{line_of(BLOCKING_REQUEST, '# SITE')}")
