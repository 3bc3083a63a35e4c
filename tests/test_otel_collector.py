"""End to end: a real OTLP collector (rotel, from PyPI) receives the anomaly spans and metrics.

The collector runs on 127.0.0.1 on free ports, receiving OTLP/HTTP and gRPC, and writes
what it receives to its debug log, which the tests parse. The programs are configured
with environment variables only, as in production.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import DESTROYED, SITECUSTOMIZE_DIR, UNRETRIEVED, clean_environment

BLOCKED = "asyncio.loop.blocked"
"""Loop stalls: on a loaded machine a test program may stall; these tests are about lost
tasks, blocking has its own tests (test_blocking, test_otel)."""

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra (pip install .[otlp])")

PROTOCOLS = ["http/protobuf", "grpc"]


def _rotel_binary() -> Path:
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        pytest.skip("needs the rotel collector (pip install --pre rotel; otel-test extra)")
    binary = Path(spec.origin).parent / "rotel-agent"
    if not binary.exists():
        pytest.skip(f"the rotel package has no rotel-agent binary for this platform ({binary})")
    return binary


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Span:
    """One span as the collector logged it."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    status: str
    service: str
    attributes: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


@dataclass
class Point:
    """One metric data point as the collector logged it."""

    metric: str
    service: str
    value: float
    attributes: dict[str, str] = field(default_factory=dict)


_ATTRIBUTE = re.compile(r"^\s*-> ([\w.]+): (\w+)\((.*)\)$")


_SPAN_FIELDS = {
    "Trace ID": "trace_id",
    "Parent ID": "parent_id",
    "ID": "span_id",
    "Name": "name",
    "Status code": "status",
}


class _DebugLogParser:
    """Reads rotel's detailed debug log line by line into spans and metric points."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.points: list[Point] = []
        self.service = ""
        self.section = ""
        self.span: Any = None
        self.point: Any = None
        self.metric = ""

    def feed(self, raw: str) -> None:
        line = raw.strip()
        if self._header(line):
            return
        match = _ATTRIBUTE.match(raw)
        if match:
            key, _, value = match.groups()
            self._attribute(key, value)
        elif line.startswith("-> Name: "):
            self._name(line[len("-> Name: ") :])
        elif line.startswith("Value: ") and self.point is not None:
            self.point.value = float(line[len("Value: ") :])
        elif self.section == "span" and self.span is not None:
            key, colon, value = line.partition(":")
            name = _SPAN_FIELDS.get(key.strip())
            if colon and name:
                setattr(self.span, name, value.strip())

    def _header(self, line: str) -> bool:
        if line.startswith(("ResourceSpans #", "ResourceMetrics #")):
            self.section, self.span, self.point = "resource", None, None
        elif line.startswith("Span #"):
            self.span = Span("", "", "", "", "", self.service)
            self.spans.append(self.span)
            self.section = "span"
        elif line.startswith("Descriptor:"):
            self.section = "descriptor"
        elif line.startswith("NumberDataPoints #"):
            self.point = Point(self.metric, self.service, 0.0)
            self.points.append(self.point)
            self.section = "point"
        elif line.startswith("Events:"):
            self.section = "events"
        else:
            return False
        return True

    def _attribute(self, key: str, value: str) -> None:
        if self.section == "resource" and key == "service.name":
            self.service = value
        elif self.section == "span" and self.span is not None:
            self.span.attributes[key] = value
        elif self.section == "events" and self.span is not None:
            self.span.events.append(f"{key}={value}")
        elif self.section == "point" and self.point is not None:
            self.point.attributes[key] = value

    def _name(self, name: str) -> None:
        if self.section == "descriptor":
            self.metric = name
        elif self.section == "events" and self.span is not None:
            self.span.events.append(name)


def parse_debug_log(text: str) -> tuple[list[Span], list[Point]]:
    """The spans and metric points in rotel's detailed debug log."""
    parser = _DebugLogParser()
    for raw in text.splitlines():
        parser.feed(raw)
    return parser.spans, parser.points


class Collector:
    """A rotel-agent process receiving OTLP on two free ports."""

    def __init__(self, folder: Path) -> None:
        binary = _rotel_binary()
        self.http_port, self.grpc_port = _free_port(), _free_port()
        self.log = folder / "collector.log"
        env = dict(os.environ)
        # The binary embeds Python (for processors) and links the interpreter's library.
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        ldlibrary = sysconfig.get_config_var("LDLIBRARY") or ""
        if not (Path(libdir) / ldlibrary).exists() or not ldlibrary.endswith(".so"):
            pytest.skip(f"rotel-agent needs a shared libpython; this Python has {ldlibrary!r}")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, env.get("LD_LIBRARY_PATH")]))
        self._output = self.log.open("w")
        self.process = subprocess.Popen(
            [
                str(binary),
                "start",
                "--otlp-http-endpoint",
                f"127.0.0.1:{self.http_port}",
                "--otlp-grpc-endpoint",
                f"127.0.0.1:{self.grpc_port}",
                "--exporter",
                "blackhole",
                "--debug-log",
                "traces",
                "--debug-log",
                "metrics",
                "--debug-log-verbosity",
                "detailed",
                "--disable-batching",
            ],
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + 15
        while not (_listening(self.http_port) and _listening(self.grpc_port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.skip(f"rotel-agent did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def endpoint(self, protocol: str) -> str:
        port = self.grpc_port if protocol == "grpc" else self.http_port
        return f"http://127.0.0.1:{port}"

    def received(
        self, service: str, until: Any, timeout: float = 20.0
    ) -> tuple[list[Span], list[Point]]:
        """What arrived for ``service``, once ``until(spans, points)`` holds (or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            spans, points = parse_debug_log(self.log.read_text(errors="replace"))
            spans = [s for s in spans if s.service == service]
            points = [p for p in points if p.service == service]
            if until(spans, points) or time.monotonic() > deadline:
                return spans, points
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._output.close()


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    running = Collector(tmp_path_factory.mktemp("collector"))
    try:
        yield running
    finally:
        running.stop()


SIGNUP_SERVICE = """
import asyncio, gc
from opentelemetry import trace
gc.disable()

async def refresh_cache():
    await asyncio.Event().wait()

async def send_welcome_email(user):
    raise ConnectionError(f"SMTP server refused mail for {user}")

async def handle_signup(user):
    with trace.get_tracer("signup").start_as_current_span("POST /signup"):
        await asyncio.sleep(0.002)
        asyncio.create_task(refresh_cache())
        asyncio.create_task(send_welcome_email(user))
        await asyncio.sleep(0.005)
    gc.collect()

asyncio.run(handle_signup("ada"))
"""


def _run(
    folder: Path, source: str, env: dict[str, str], launcher: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "app.py"
    script.write_text(textwrap.dedent(source))
    environment = clean_environment()
    environment.update(env)
    environment["ASYNCIO_AGENT_OUTPUT"] = str(folder / "events.jsonl")
    return subprocess.run(
        [*launcher, sys.executable, str(script)],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _otel_env(collector: Collector, protocol: str, service: str) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint(protocol),
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }


def _anomaly_count(points: list[Point]) -> float:
    # Cumulative sums: the latest value of each attribute set, added up.
    latest: dict[tuple[tuple[str, str], ...], float] = {}
    for point in points:
        if point.metric == "asyncio.task.anomalies":
            latest[tuple(sorted(point.attributes.items()))] = point.value
    return sum(latest.values())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_collector_receives_anomaly_spans_inside_the_request_trace(
    collector: Collector, protocol: str, tmp_path: Path
) -> None:
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    if not instrument.exists():
        pytest.skip("needs opentelemetry-instrumentation (the otel-test extra)")
    pytest.importorskip("opentelemetry.distro", reason="needs opentelemetry-distro")
    service = f"signup-{uuid.uuid4().hex[:8]}"
    # opentelemetry-instrument: the distro sets the global providers from the
    # environment, and the agent's instrumentor entry point switches the agent on.
    env = _otel_env(collector, protocol, service)
    # Not OpenTelemetry's own asyncio instrumentation (the otel-test extra installs it,
    # and opentelemetry-instrument would load it): it wraps each coroutine, which CPython
    # and the agent then name. test_otel covers the agent beside it.
    env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "asyncio"
    result = _run(tmp_path, SIGNUP_SERVICE, env, (str(instrument),))
    assert result.returncode == 0, result.stderr

    def complete(spans: list[Span], points: list[Point]) -> bool:
        return len([s for s in spans if s.name != BLOCKED]) >= 3 and _anomaly_count(points) >= 2

    spans, points = collector.received(service, complete)
    spans = [span for span in spans if span.name != BLOCKED]  # a loaded machine's stalls
    names = sorted(span.name for span in spans)
    assert names == ["POST /signup", DESTROYED, UNRETRIEVED], collector.log.read_text()[-3000:]
    request = next(span for span in spans if span.name == "POST /signup")
    for span in spans:
        if span.name == request.name:
            continue
        assert span.parent_id == request.span_id
        assert span.trace_id == request.trace_id
        assert span.status == "STATUS_CODE_ERROR"
        assert span.attributes["code.function"] == "handle_signup"
    failed = next(span for span in spans if span.name == UNRETRIEVED)
    assert failed.attributes["asyncio.task.coroutine"] == "send_welcome_email"
    assert "exception" in failed.events
    assert "exception.type=ConnectionError" in failed.events
    assert _anomaly_count(points) == 2
    assert "asyncio-agent: warning" not in result.stderr


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_env_only_agent_delivers_root_anomaly_spans_and_counter(
    collector: Collector, protocol: str, tmp_path: Path
) -> None:
    service = f"worker-{uuid.uuid4().hex[:8]}"
    source = """
    import asyncio, gc
    gc.disable()

    async def refresh_cache():
        await asyncio.Event().wait()

    async def send_welcome_email(user):
        raise ConnectionError(f"SMTP server refused mail for {user}")

    async def main():
        asyncio.create_task(refresh_cache())
        asyncio.create_task(send_welcome_email("ada"))
        await asyncio.sleep(0.01)
        gc.collect()
        await asyncio.sleep(1.0)  # a service runs on; a short script calls asyncio_agent.flush()

    asyncio.run(main())
    """
    env = _otel_env(collector, protocol, service)
    env["ASYNCIO_AGENT"] = "1"
    env["PYTHONPATH"] = str(SITECUSTOMIZE_DIR)
    env["OTEL_RESOURCE_ATTRIBUTES"] = "deployment.environment=e2e"
    result = _run(tmp_path, source, env)
    assert result.returncode == 0, result.stderr

    def complete(spans: list[Span], points: list[Point]) -> bool:
        return len([s for s in spans if s.name != BLOCKED]) >= 2 and _anomaly_count(points) >= 2

    spans, points = collector.received(service, complete)
    spans = [span for span in spans if span.name != BLOCKED]  # a loaded machine's stalls
    assert sorted(span.name for span in spans) == [DESTROYED, UNRETRIEVED], (
        collector.log.read_text()[-3000:]
    )
    for span in spans:
        assert span.parent_id == ""  # no request span: roots
        assert span.attributes["code.function"] == "main"
    assert _anomaly_count(points) == 2
    live = [p for p in points if p.metric == "asyncio.task.live"]
    assert live, "the live-task gauge was exported"
    assert "asyncio-agent: warning" not in result.stderr
