"""Regenerates docs/blocked-trace.png: a blocked event loop as a span in the request's trace.

Starts a real OTLP collector (rotel, from PyPI), runs a small quote service under
``opentelemetry-instrument`` with environment variables only (the agent is switched on
by its instrumentor entry point), reads the spans from the collector's debug log and
draws them as a timeline with matplotlib. Two requests share one loop: ``GET /quote``
creates a task that calls a blocking function, and ``GET /health``, which needs 5 ms,
waits for the whole block.

    pip install '.[otel-test,docs]' && python docs/render_blocked_trace.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from render_trace import Span, _tree_order, collect_spans

OUTPUT = Path(__file__).resolve().parent / "blocked-trace.png"

APP = """
import asyncio, time
from opentelemetry import trace

tracer = trace.get_tracer("quotes")

def load_exchange_rates():
    time.sleep(0.25)  # a blocking HTTP call in disguise
    return {"EUR": 0.92}

async def price_in_euros(amount):
    rates = load_exchange_rates()
    return amount * rates["EUR"]

async def handle_quote():
    with tracer.start_as_current_span("GET /quote"):
        with tracer.start_as_current_span("SELECT products"):
            await asyncio.sleep(0.02)
        await asyncio.create_task(price_in_euros(100))
        with tracer.start_as_current_span("render response"):
            await asyncio.sleep(0.01)

async def handle_health():
    await asyncio.sleep(0.03)
    with tracer.start_as_current_span("GET /health"):
        await asyncio.sleep(0.005)

async def main():
    await asyncio.gather(handle_quote(), handle_health())

asyncio.run(main())
"""


def _label(span: Span, depth: int) -> str:
    label = ("└─ " if depth else "") + span.name
    if span.name == "asyncio.loop.blocked":
        label += f"\ntask created at line {span.attributes.get('code.lineno', '?')}"
        label += f" in {span.attributes.get('code.function', '?')}()"
    return label


def _note(span: Span) -> str:
    if span.name != "asyncio.loop.blocked":
        return ""
    seconds = float(span.attributes.get("asyncio.loop.blocked_s", "0"))
    return (
        f"task {span.attributes.get('asyncio.task.coroutine', '?')}() held the loop {seconds:.2f} s"
    )


def render(spans: list[Span], output: Path) -> None:
    """Draw the spans as a timeline: one bar per span, the blocked loop in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _tree_order(spans)
    origin = min(span.start for span in spans)
    figure, axes = plt.subplots(figsize=(10, 0.75 * len(spans) + 1.4), dpi=120)
    for row, (span, _depth) in enumerate(rows):
        start = (span.start - origin) / 1e6
        width = max((span.end - span.start) / 1e6, 0.6)
        color = "#d62728" if span.error else "#1f77b4"
        axes.barh(row, width, left=start, height=0.55, color=color)
        note = _note(span)
        if note:
            axes.text(start + width + 2, row, note, va="center", fontsize=9, color=color)
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([_label(span, depth) for span, depth in rows], fontsize=9)
    axes.invert_yaxis()
    axes.set_xlabel("milliseconds since the first request started")
    axes.set_xlim(right=axes.get_xlim()[1] * 1.6)
    axes.grid(axis="x", alpha=0.3)
    axes.set_title(
        "Two requests on one event loop, as the OTLP collector received them:\n"
        "the blocked loop is an ERROR span in the trace of the request that created the task",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(output)
    plt.close(figure)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        spans = collect_spans(Path(folder), APP, expected=5)
    names = sorted(span.name for span in spans)
    print(f"{len(spans)} spans received: {', '.join(names)}")
    for span in spans:
        if span.name == "asyncio.loop.blocked":
            for key, value in sorted(span.attributes.items()):
                print(f"  {key}: {value}")
    render(spans, OUTPUT)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
