"""Cost of the OpenTelemetry span probe: ns per probe call and per created task.

Run: python bench/otel_probe.py (needs the otel extra). Prints one line per case.
"""

from __future__ import annotations

import asyncio
import sys
import timeit

import asyncio_agent
import asyncio_agent.runtime
from asyncio_agent.tracing import make_probe
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

N = 200_000


def per_call(function: object, number: int = 1_000_000) -> float:
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e9  # type: ignore[arg-type]


async def create_tasks(count: int) -> float:
    loop = asyncio.get_running_loop()

    async def nothing() -> None:
        pass

    coros = [nothing() for _ in range(count)]
    start = loop.time()
    tasks = [loop.create_task(coro) for coro in coros]
    elapsed = loop.time() - start
    await asyncio.gather(*tasks)
    return elapsed / count * 1e9


def best_task_cost(with_span: bool) -> float:
    async def run() -> float:
        if with_span:
            with trace.get_tracer("bench").start_as_current_span("request"):
                return min([await create_tasks(N) for _ in range(5)])
        return min([await create_tasks(N) for _ in range(5)])

    return asyncio.run(run())


def main() -> None:
    print(f"Python {sys.version.split()[0]}")
    asyncio_agent.install(output="/dev/null")
    print(f"create_task, agent on, no OTel:            {best_task_cost(False):6.0f} ns/task")
    trace.set_tracer_provider(TracerProvider())
    recorder = asyncio_agent.runtime.current().recorder  # type: ignore[union-attr]
    assert recorder.span_probe is not None
    probe = make_probe(trace)
    print(f"probe, no span current:                    {per_call(probe):6.0f} ns/call")
    with trace.get_tracer("bench").start_as_current_span("request"):
        print(f"probe, span current (cached):              {per_call(probe):6.0f} ns/call")
    print(f"create_task, agent on, provider, no span:  {best_task_cost(False):6.0f} ns/task")
    print(f"create_task, agent on, provider, in span:  {best_task_cost(True):6.0f} ns/task")


if __name__ == "__main__":
    main()
