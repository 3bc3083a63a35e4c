"""Regenerates docs/otel-trace.png: a request trace with its anomaly spans, as a collector got it.

Starts a real OTLP collector (rotel, from PyPI), runs a small signup service under
``opentelemetry-instrument`` with environment variables only, reads the spans from the
collector's debug log and draws them as a timeline with matplotlib.

    pip install '.[otel-test,docs]' && python docs/render_trace.py
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "otel-trace.png"
SERVICE = "signup-service"

APP = """
import asyncio, gc
from opentelemetry import trace

gc.disable()
tracer = trace.get_tracer("signup")

async def refresh_cache():
    await asyncio.Event().wait()

async def send_welcome_email(user):
    await asyncio.sleep(0.004)
    raise ConnectionError(f"SMTP server refused mail for {user}")

async def handle_signup(user):
    with tracer.start_as_current_span("POST /signup"):
        with tracer.start_as_current_span("INSERT users"):
            await asyncio.sleep(0.006)
        asyncio.create_task(refresh_cache())
        asyncio.create_task(send_welcome_email(user))
        with tracer.start_as_current_span("render response"):
            await asyncio.sleep(0.008)
    await asyncio.sleep(0.004)
    gc.collect()  # the pending task nobody kept is destroyed here

asyncio.run(handle_signup("ada"))
"""


@dataclass
class Span:
    """One span from the collector's debug log."""

    name: str = ""
    span_id: str = ""
    parent_id: str = ""
    start: int = 0
    end: int = 0
    error: bool = False
    attributes: dict[str, str] = field(default_factory=dict)


_ATTRIBUTE = re.compile(r"^\s*-> ([\w.]+): \w+\((.*)\)$")
_FIELDS = {"ID": "span_id", "Parent ID": "parent_id", "Name": "name"}


def parse_spans(text: str) -> list[Span]:
    """Spans (with times and attributes) from rotel's detailed debug log."""
    spans: list[Span] = []
    current: Span | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Span #"):
            current = Span()
            spans.append(current)
            continue
        if line.startswith(("ResourceSpans #", "ResourceMetrics #", "Events:")):
            current = None
            continue
        if current is None:
            continue
        match = _ATTRIBUTE.match(raw)
        if match:
            current.attributes[match.group(1)] = match.group(2)
            continue
        key, colon, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not colon:
            continue
        if key in _FIELDS:
            setattr(current, _FIELDS[key], value)
        elif key == "Start time":
            current.start = int(value)
        elif key == "End time":
            current.end = int(value)
        elif key == "Status code":
            current.error = value == "STATUS_CODE_ERROR"
    return spans


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def collect_spans(folder: Path, app: str = APP, expected: int = 5) -> list[Span]:
    """Run ``app`` against a fresh collector and return the spans it received."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        sys.exit("needs the rotel collector: pip install '.[otel-test]'")
    binary = Path(spec.origin).parent / "rotel-agent"
    http_port, grpc_port = _free_port(), _free_port()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = sysconfig.get_config_var("LIBDIR") or ""
    log = folder / "collector.log"
    with log.open("w") as output:
        collector = subprocess.Popen(
            [
                str(binary),
                "start",
                "--otlp-http-endpoint",
                f"127.0.0.1:{http_port}",
                "--otlp-grpc-endpoint",
                f"127.0.0.1:{grpc_port}",
                "--exporter",
                "blackhole",
                "--debug-log",
                "traces",
                "--debug-log-verbosity",
                "detailed",
                "--disable-batching",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            time.sleep(1.0)
            script = folder / "app.py"
            script.write_text(textwrap.dedent(app))
            app_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCIO_AGENT")}
            app_env.update(
                OTEL_SERVICE_NAME=SERVICE,
                OTEL_TRACES_EXPORTER="otlp",
                OTEL_METRICS_EXPORTER="none",
                OTEL_LOGS_EXPORTER="none",
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{http_port}",
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                ASYNCIO_AGENT_OUTPUT=str(folder / "events.jsonl"),
            )
            instrument = Path(sys.executable).parent / "opentelemetry-instrument"
            subprocess.run(
                [str(instrument), sys.executable, str(script)],
                env=app_env,
                cwd=folder,
                check=True,
                capture_output=True,
            )
            for _ in range(100):
                spans = parse_spans(log.read_text())
                if len(spans) >= expected:
                    return spans
                time.sleep(0.1)
            return parse_spans(log.read_text())
        finally:
            collector.terminate()
            collector.wait(5)


def _tree_order(spans: list[Span]) -> list[tuple[Span, int]]:
    """Spans depth first (each parent above its children, by start time), with depth."""
    ids = {span.span_id for span in spans}
    ordered: list[tuple[Span, int]] = []

    def visit(parent_id: str, depth: int) -> None:
        children = [
            s
            for s in spans
            if s.parent_id == parent_id or (depth == 0 and s.parent_id not in ids and not parent_id)
        ]
        for child in sorted(children, key=lambda span: span.start):
            ordered.append((child, depth))
            visit(child.span_id, depth + 1)

    visit("", 0)
    return ordered


def _label(span: Span, depth: int) -> str:
    label = ("└─ " if depth else "") + span.name
    if span.error:
        label += f"\ncreated at line {span.attributes.get('code.lineno', '?')}"
        label += f" in {span.attributes.get('code.function', '?')}()"
    return label


TITLE = (
    f"One trace of {SERVICE}, as the OTLP collector received it:\n"
    "the lost tasks are ERROR spans inside the request that created them"
)


def render(spans: list[Span], output: Path, title: str = TITLE) -> None:
    """Draw the spans as a trace timeline: one bar per span, anomalies in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _tree_order(spans)
    origin = min(span.start for span in spans)
    figure, axes = plt.subplots(figsize=(10, 0.75 * len(spans) + 1.4), dpi=120)
    for row, (span, _depth) in enumerate(rows):
        start = (span.start - origin) / 1e6
        width = max((span.end - span.start) / 1e6, 0.15)
        color = "#d62728" if span.error else "#1f77b4"
        axes.barh(row, width, left=start, height=0.55, color=color)
        note = span.attributes.get("asyncio.task.coroutine")
        if note:
            axes.text(
                start + width + 0.3, row, f"task {note}()", va="center", fontsize=9, color=color
            )
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([_label(span, depth) for span, depth in rows], fontsize=9)
    axes.invert_yaxis()
    axes.set_xlabel("milliseconds since the request started")
    axes.set_xlim(right=axes.get_xlim()[1] * 1.25)
    axes.grid(axis="x", alpha=0.3)
    axes.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(output)
    plt.close(figure)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        spans = collect_spans(Path(folder))
    names = sorted(span.name for span in spans)
    print(f"{len(spans)} spans received: {', '.join(names)}")
    render(spans, OUTPUT)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
