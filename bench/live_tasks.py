"""Wall time and memory of create-and-gather against the number of tasks alive at once.

    python bench/live_tasks.py --cpu 1            # writes bench/results/pyX.Y-live-tasks.*

Owns the sizes (10,000 / 100,000 / 1,000,000 tasks alive at once: create them all,
then gather them), the variants (baseline, agent, agent_python_path, and --other
agents, e.g. an earlier commit's), and how they are timed on a shared machine: one
process per variant, size and round, pinned to one CPU (``taskset -c``), the variants
of a round in a new random order each round, the best of a few in-process runs per
process, and the ratio to the baseline of the same round and size; median (min-max)
over the rounds. Next to it: the same runs' CPU time and garbage collections
(``gc.callbacks``). Memory: bytes per live pending task (tracemalloc, everything the
process allocated while the tasks were created, the agent's table included), one
process per variant and size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from run import VARIANTS, WORKLOADS, Variant

HERE = Path(__file__).resolve().parent
SIZES = {10_000: 0.1, 100_000: 1.0, 1_000_000: 10.0}  # live tasks: workload scale
REPEATS = {10_000: 5, 100_000: 3, 1_000_000: 2}  # in-process runs per process
COMPARED = ("baseline", "agent", "agent_python_path")


def _pin(cpu: str | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpu]


def best_time(variant: Variant, live: int, cpu: str | None) -> tuple[float, float, Any]:
    """The best in-process wall time of one process running create-and-gather, and the
    CPU time and the collector's figures of the same run."""
    env = variant.environment()
    env["AGENT_BENCH_SCALE"] = str(SIZES[live])
    command = [*_pin(cpu), variant.python, str(WORKLOADS), "create_gather"]
    command += ["--repeats", str(REPEATS[live])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant.name}/{live} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["agent"] != ("ASYNCIO_AGENT" in variant.env):
        raise RuntimeError(f"{variant.name}: agent state is not what the variant asks")
    best = min(range(len(result["times"])), key=result["times"].__getitem__)
    return float(result["times"][best]), float(result["cpu_times"][best]), result["gc"][best]


def bytes_per_task(variant: Variant, live: int) -> float:
    """Bytes allocated per live pending task with ``live`` tasks alive."""
    command = [variant.python, str(WORKLOADS), "memory", "--count", str(live), "--no-churn"]
    done = subprocess.run(
        command, env=variant.environment(), capture_output=True, text=True, check=True
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["bytes_per_task"])


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}x ({min(values):.3f}-{max(values):.3f})"


Figures = dict[int, dict[str, list[Any]]]  # live tasks -> variant -> one per round


LOAD: list[float] = []
"""The machine's 1-minute load average before each round (other programs' share)."""


def measure(
    variants: list[Variant], sizes: list[int], rounds: int, cpu: str | None
) -> tuple[Figures, Figures, Figures]:
    """Wall times, CPU times and collector figures, per size, variant and round."""
    times: Figures = {}
    cpu_times: Figures = {}
    collector: Figures = {}
    for live in sizes:
        times[live] = {variant.name: [] for variant in variants}
        cpu_times[live] = {variant.name: [] for variant in variants}
        collector[live] = {variant.name: [] for variant in variants}
        for round_number in range(rounds):
            LOAD.append(os.getloadavg()[0])
            order = variants[:]
            random.Random(live + round_number).shuffle(order)
            for variant in order:
                seconds, cpu_seconds, gc_figures = best_time(variant, live, cpu)
                times[live][variant.name].append(seconds)
                cpu_times[live][variant.name].append(cpu_seconds)
                collector[live][variant.name].append(gc_figures)
                print(
                    f"  {live:>9,} live  round {round_number + 1}/{rounds}"
                    f"  {variant.name:18} {seconds:.4f}s (CPU {cpu_seconds:.4f}s)",
                    flush=True,
                )
    return times, cpu_times, collector


def to_baseline(measured: Figures) -> Figures:
    """Each value over the baseline's of the same size and round."""
    return {
        live: {
            name: [t / b for t, b in zip(values, by_variant["baseline"], strict=True)]
            for name, values in by_variant.items()
        }
        for live, by_variant in measured.items()
    }


def markdown(data: dict[str, Any], names: list[str], sizes: list[int]) -> str:
    """The result file: the command, then the tables."""

    def header() -> list[str]:
        return [
            "| variant | " + " | ".join(f"{live:,} live" for live in sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]

    def rows(cell: Any) -> list[str]:
        return [
            f"| {name} | " + " | ".join(cell(data, str(live), name) for live in sizes) + " |"
            for name in names
        ]

    def collections(data: dict[str, Any], live: str, name: str) -> str:
        runs = data["gc"][live][name]
        counts = " / ".join(
            f"{statistics.median(run['collections'][g] for run in runs):.0f}" for g in range(3)
        )
        return f"{counts}: {statistics.median(sum(run['seconds']) for run in runs):.3f} s"

    def memory(data: dict[str, Any], live: str, name: str) -> str:
        figures = data["bytes_per_task"][live]
        return f"{figures[name]:.0f} ({figures[name] - figures['baseline']:+.0f})"

    baseline = [data["times"][str(live)]["baseline"] for live in sizes]
    load = data["load"]
    lines = [
        f"Reproduce: `{data['command']}` (with this Python, from the repository root)",
        "",
        f"Python {data['python']}, {data['machine']}; create-and-gather with N tasks alive at"
        f" once; one process per variant, size and round, pinned to CPU {data['pinned_cpu']},"
        f" {data['rounds']} interleaved rounds; best of"
        f" {'/'.join(str(REPEATS[s]) for s in sizes)} in-process runs; ratio = wall time /"
        " baseline wall time of the same round: median (min-max). The machine's load"
        f" average at the rounds' start (other programs): median {statistics.median(load):.1f},"
        f" {min(load):.1f}-{max(load):.1f}.",
        "",
        *header(),
        *rows(lambda d, live, name: _spread(d["ratios"][live][name])),
        "",
        "The same runs' CPU time (the process's own; leaves out other programs' turns on"
        " the CPU, not their effect on the caches):",
        "",
        *header(),
        *rows(lambda d, live, name: _spread(d["cpu_ratios"][live][name])),
        "",
        "The garbage collector in the same runs: collections of generations 0 / 1 / 2 per"
        " run, and the seconds spent in them (median over the rounds):",
        "",
        *header(),
        *rows(collections),
        "",
        "Baseline wall time (s): "
        + ", ".join(
            f"{live:,} live {statistics.median(b):.3f} ({min(b):.3f}-{max(b):.3f})"
            for live, b in zip(sizes, baseline, strict=True)
        )
        + ".",
        "",
        "Bytes per live pending task (tracemalloc; extra over the baseline in brackets):",
        "",
        *header(),
        *rows(memory),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Measure, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", help="pin every child to this CPU (taskset -c)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(str(size) for size in SIZES))
    parser.add_argument("--variants", default=",".join(COMPARED))
    parser.add_argument("--output", type=Path, default=HERE / "results")
    parser.add_argument(
        "--other", action="append", default=[], help="NAME=PYTHON: that agent as a variant too"
    )
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    variants = [v for v in VARIANTS if v.name in options.variants.split(",")]
    variants += [Variant.other(spec) for spec in options.other]
    assert variants[0].name == "baseline", "the baseline comes first"

    times, cpu_times, collector = measure(variants, sizes, options.rounds, options.cpu)
    memory = {
        live: {variant.name: bytes_per_task(variant, live) for variant in variants}
        for live in sizes
    }
    command = "python bench/live_tasks.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def keyed(figures: Figures) -> dict[str, Any]:
        return {str(live): by_variant for live, by_variant in figures.items()}

    data: dict[str, Any] = {
        "command": command.strip(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "rounds": options.rounds,
        "pinned_cpu": options.cpu,
        "repeats": {str(live): REPEATS[live] for live in sizes},
        "times": keyed(times),
        "ratios": keyed(to_baseline(times)),
        "cpu_times": keyed(cpu_times),
        "cpu_ratios": keyed(to_baseline(cpu_times)),
        "gc": keyed(collector),
        "load": LOAD,
        "bytes_per_task": {str(live): by_variant for live, by_variant in memory.items()},
    }
    table = markdown(data, [variant.name for variant in variants], sizes)
    print(table)
    version = ".".join(platform.python_version_tuple()[:2])
    options.output.mkdir(parents=True, exist_ok=True)
    (options.output / f"py{version}-live-tasks.json").write_text(json.dumps(data, indent=1))
    (options.output / f"py{version}-live-tasks.md").write_text(table)


if __name__ == "__main__":
    main()
