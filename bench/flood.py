"""Flood benchmark: the cost of each lost task when a program loses one per iteration.

A loop that leaks one raising task per iteration (each task's exception is never
retrieved, so CPython's finalizer reports it and its default handler logs the
traceback). Variants, each in its own process, interleaved and pinned to one core
where ``taskset`` exists: ``plain`` (no agent), ``agent`` (default settings: 1,000
reports per site and second are written, the rest counted) and ``agent_rate_limit_0``
(every report written). The child times batches of 1,000 leaks, CPU time of the whole
process (the agent's reporter thread included) after a final flush; a batch of the
``agent`` variant that comes after its site's first 1,000 reports in the second is a
"suppressed" batch: the cost of a lost task once the rate limit holds its site back.

    python bench/flood.py                  # writes bench/results/pyX.Y-flood.md
    python bench/flood.py --rounds 3 --batches 20
    python bench/flood.py --instructions   # also valgrind instruction counts per task

Never asserts timings: it reports them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SITECUSTOMIZE = HERE.parent / "sitecustomize_example"
BATCH = 1_000

VARIANTS: dict[str, dict[str, str]] = {
    "plain": {},
    "agent": {"PYTHONPATH": str(SITECUSTOMIZE), "ASYNCIO_AGENT": "1"},
    "agent_rate_limit_0": {
        "PYTHONPATH": str(SITECUSTOMIZE),
        "ASYNCIO_AGENT": "1",
        "ASYNCIO_AGENT_RATE_LIMIT": "0",
    },
}


# -- child ------------------------------------------------------------------------------


async def _leak(batches: int) -> list[tuple[float, float, float]]:
    """(wall start, wall seconds, CPU seconds) of each batch of BATCH leaked tasks."""

    async def boom() -> None:
        raise ValueError("lost")

    out = []
    for _ in range(batches):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(BATCH):
            asyncio.create_task(boom())  # noqa: RUF006 - losing it is the point
            await asyncio.sleep(0)  # it runs, raises and is freed: CPython reports it
        await asyncio.sleep(0)
        out.append((wall, time.perf_counter() - wall, time.process_time() - cpu))
    return out


def child(batches: int) -> dict[str, Any]:
    """Run the flood; per-batch times, and the whole run's CPU after the agent's flush."""
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    per_batch = asyncio.run(_leak(batches))
    flush = getattr(sys.modules.get("asyncio_agent"), "flush", None)
    if flush is not None:
        flush(60)  # the reporter thread's work belongs to the cost
    return {
        "batches": per_batch,
        "cpu_total": time.process_time() - start_cpu,
        "wall_total": time.perf_counter() - start_wall,
        "agent": "asyncio_agent.runtime" in sys.modules,
    }


# -- driver -----------------------------------------------------------------------------


def _environment(variant: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ASYNCIO_AGENT", "OTEL_")) and k not in ("PYTHONPATH",)
    }
    env.update(VARIANTS[variant])
    return env


def _command(batches: int) -> list[str]:
    command = [sys.executable, __file__, "--child", "--batches", str(batches)]
    if shutil.which("taskset"):
        command = ["taskset", "-c", str((os.cpu_count() or 1) - 1), *command]
    return command


def _run(variant: str, batches: int) -> dict[str, Any]:
    done = subprocess.run(
        _command(batches),
        env=_environment(variant),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # CPython's log lines and the events: written, not kept
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed with {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["agent"] != (variant != "plain"):
        raise RuntimeError(f"{variant}: agent state is not what the variant asks")
    return result


def _suppressed_batches(batches: list[list[float]]) -> list[float]:
    """Wall seconds of the batches whose site was already over its 1,000 a second."""
    out = []
    window_start = None
    for start, wall, _cpu in batches:
        if window_start is None or start - window_start >= 1.0:
            window_start = start  # this batch's first 1,000 reports are written
            continue
        out.append(wall)
    return out


def _instructions(variant: str, batches: int) -> float:
    """Instructions per leaked task (valgrind), the reporter thread's included."""
    counts = []
    for size in (1, 1 + batches):
        command = ["valgrind", "--tool=cachegrind", "--cache-sim=no"]
        command += ["--cachegrind-out-file=/dev/null", sys.executable, __file__]
        command += ["--child", "--batches", str(size)]
        done = subprocess.run(
            command, env=_environment(variant), capture_output=True, text=True, check=False
        )
        found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise RuntimeError(f"{variant} under valgrind failed:\n{done.stderr[-2000:]}")
        counts.append(int(found.group(1).replace(",", "")))
    return (counts[1] - counts[0]) / (batches * BATCH)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    """Command line: the driver, or (``--child``) one measured process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, default=10, help="batches of 1,000 leaks")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--output", type=Path, default=HERE / "results")
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(options.batches)))
        return

    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    steady: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for number in range(options.rounds):
        order = list(VARIANTS)
        random.Random(number).shuffle(order)
        results = {name: _run(name, options.batches) for name in order}
        for name, result in results.items():
            cpu[name].append(result["cpu_total"] / results["plain"]["cpu_total"])
            plain_batches = [wall for _s, wall, _c in results["plain"]["batches"][1:]]
            mine = (
                _suppressed_batches(result["batches"])
                if name == "agent"
                else [wall for _s, wall, _c in result["batches"][1:]]
            )
            steady[name].append(statistics.median(mine) / statistics.median(plain_batches))
        print(f"  round {number + 1}/{options.rounds} done", flush=True)

    total = options.batches * BATCH
    lines = [
        f"`python bench/flood.py --rounds {options.rounds} --batches {options.batches}`: "
        f"Python {platform.python_version()}, {platform.machine()}; {total:,} lost tasks "
        "per process (each raising, never retrieved); ratio to plain in the same round, "
        "median (min-max).",
        "",
        "| variant | CPU of the whole run (reporter thread included) | wall per batch "
        "(agent: batches its site's rate limit held back) |",
        "|---|---|---|",
    ]
    for name in VARIANTS:
        lines.append(f"| {name} | {_spread(cpu[name])} | {_spread(steady[name])} |")
    if options.instructions and shutil.which("valgrind"):
        per_task = {name: _instructions(name, 3) for name in VARIANTS}
        lines += ["", "| variant | instructions per lost task | ratio to plain |", "|---|---|---|"]
        for name, count in per_task.items():
            lines.append(f"| {name} | {count:,.0f} | {count / per_task['plain']:.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    options.output.mkdir(parents=True, exist_ok=True)
    version = ".".join(platform.python_version_tuple()[:2])
    (options.output / f"py{version}-flood.md").write_text(table)


if __name__ == "__main__":
    main()
