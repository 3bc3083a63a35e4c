"""Benchmark workloads, run in a child process: ``python bench/workloads.py NAME``.

Owns the programs being timed and the timing around them (inside the process, around
the workload only). Which variant (baseline, agent, debug mode, peers) is active is
decided by the driver through the environment; this file only adds the peers' set-up.
Prints one JSON object: the workload's times in seconds, or its memory figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

Workload = Callable[[], Awaitable[None]]

# The driver's --smoke shrinks every workload to a few milliseconds.
SCALE = float(os.environ.get("AGENT_BENCH_SCALE", "1"))


# -- workloads ----------------------------------------------------------------------


async def create_and_gather() -> None:
    """(1) create 100,000 trivial tasks and gather them."""
    count = max(100, int(100_000 * SCALE))

    async def leaf() -> int:
        return 1

    await asyncio.gather(*[asyncio.create_task(leaf()) for _ in range(count)])


async def fan_out_tree() -> None:
    """(2) recursive fan-out (4 children, 7 levels) in the style of pyperformance's
    async_tree benchmarks: half the nodes sleep(0), half await an I/O-like future."""
    depth, branches = (7, 4) if SCALE >= 1 else (3, 4)
    loop = asyncio.get_running_loop()

    async def io_like() -> None:
        future = loop.create_future()
        loop.call_soon(future.set_result, None)
        await future

    async def tree(level: int) -> None:
        if level % 2:
            await asyncio.sleep(0)
        else:
            await io_like()
        if level:
            await asyncio.gather(*[asyncio.create_task(tree(level - 1)) for _ in range(branches)])

    await tree(depth)


async def echo_server_clients() -> None:
    """(3) 2,000 short-lived tasks, each 3 round trips to a local TCP echo server."""
    clients, exchanges = max(10, int(2_000 * SCALE)), 3

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(64):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(exchanges):
            writer.write(b"ping")
            await writer.drain()
            await reader.readexactly(4)
        writer.close()
        await writer.wait_closed()

    batch = 100  # bounded concurrency: stay far below the fd limit
    for start in range(0, clients, batch):
        await asyncio.gather(
            *[asyncio.create_task(client()) for _ in range(min(batch, clients - start))]
        )
    server.close()
    await server.wait_closed()


WORKLOADS: dict[str, Workload] = {
    "create_gather": create_and_gather,
    "fan_out_tree": fan_out_tree,
    "echo_server": echo_server_clients,
}


# -- peers --------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _set_up_peer(peer: str, loop: asyncio.AbstractEventLoop) -> Any:
    if peer in ("aiocop", "pyleak", "aiodebug"):
        from peers import enable_inside

        return loop.run_until_complete(enable_inside(peer))  # inside the loop, as they need
    if peer == "aiomonitor":
        import aiomonitor

        termui, webui, console = _free_ports(3)
        monitor = aiomonitor.Monitor(
            loop,
            host="127.0.0.1",
            termui_port=termui,
            webui_port=webui,
            console_port=console,
            console_enabled=False,
            hook_task_factory=True,
        )
        monitor.start()
        return monitor
    if peer == "otel":
        from opentelemetry.instrumentation.asyncio import AsyncioInstrumentor

        AsyncioInstrumentor().instrument()
    return None


# -- timing -------------------------------------------------------------------------


def _new_loop(loop_kind: str) -> asyncio.AbstractEventLoop:
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class GcMeter:
    """Collections and seconds in them, per generation, while in ``gc.callbacks``."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            generation = info["generation"]
            self.collections[generation] += 1
            self.seconds[generation] += time.perf_counter() - self._started


def time_workload(name: str, loop_kind: str, repeats: int, peer: str) -> dict[str, Any]:
    """Run ``name`` ``repeats`` times on one loop; the seconds of each run (wall time,
    and the process's CPU time, which leaves out the time other programs ran), and the
    garbage collector's collections and seconds in each run."""
    loop = _new_loop(loop_kind)
    asyncio.set_event_loop(loop)
    monitor = _set_up_peer(peer, loop)
    workload = WORKLOADS[name]
    times, cpu_times, collector = [], [], []
    try:
        loop.run_until_complete(workload())  # warm-up: imports, caches, first sites
        for _ in range(repeats):
            gc.collect()
            meter = GcMeter()
            gc.callbacks.append(meter)
            start, cpu_start = time.perf_counter(), time.process_time()
            loop.run_until_complete(workload())
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
            gc.callbacks.remove(meter)
            collector.append({"collections": meter.collections, "seconds": meter.seconds})
    finally:
        if callable(monitor):
            monitor()  # a peer's stop
        elif monitor is not None:
            monitor.close()
        loop.close()
    return {"times": times, "cpu_times": cpu_times, "gc": collector}


def memory_per_task(loop_kind: str, count: int = 20_000, churn: bool = True) -> dict[str, Any]:
    """Bytes allocated per live pending task (tracemalloc), and flatness over 1M tasks."""
    loop = _new_loop(loop_kind)

    async def pending(event: asyncio.Event) -> None:
        await event.wait()

    async def measure() -> float:
        event = asyncio.Event()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        tasks = [asyncio.create_task(pending(event)) for _ in range(count)]
        await asyncio.sleep(0)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        event.set()
        await asyncio.gather(*tasks)
        return (after - before) / count

    async def churn_through(total: int) -> list[int]:
        async def leaf() -> None:
            await asyncio.sleep(0)

        points = []
        tracemalloc.start()
        for done in range(0, total, 50_000):
            await asyncio.gather(*[asyncio.create_task(leaf()) for _ in range(50_000)])
            if done % 250_000 == 0:
                gc.collect()
                points.append(tracemalloc.get_traced_memory()[0])
        tracemalloc.stop()
        return points

    try:
        per_task = loop.run_until_complete(measure())
        points = loop.run_until_complete(churn_through(1_000_000)) if churn else []
    finally:
        loop.close()
    return {"bytes_per_task": per_task, "memory_after_250k_steps": points}


def main() -> None:
    """Command line of the child process."""
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=[*WORKLOADS, "memory"])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--peer",
        choices=("none", "aiomonitor", "otel", "aiocop", "pyleak", "aiodebug"),
        default="none",
    )
    parser.add_argument("--count", type=int, default=20_000, help="memory: live tasks")
    parser.add_argument("--no-churn", action="store_true", help="memory: per task only")
    options = parser.parse_args()
    if options.workload == "memory":
        result = memory_per_task(options.loop, options.count, churn=not options.no_churn)
    else:
        result = time_workload(options.workload, options.loop, options.repeats, options.peer)
    result["agent"] = "asyncio_agent.runtime" in sys.modules
    result["pid"] = os.getpid()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
