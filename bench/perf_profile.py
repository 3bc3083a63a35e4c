"""Where the agent's wall time goes, sampled: ``perf`` on create-and-gather, by symbol.

    python bench/perf_profile.py --cpu 1                 # 100,000 live tasks
    python bench/perf_profile.py --cpu 1 --scale 10 --repeats 1   # 1,000,000

Instruction counts miss time spent waiting for memory; ``perf record -e cpu-clock``
samples where the time goes, waits included (the hardware counters, cache misses
among them, are not available on this virtual machine: ``perf stat`` reports them
"not supported"). For the baseline and each agent variant this runs the
create-and-gather child (bench/workloads.py) under ``perf stat`` (software counters:
task clock, page faults, context switches) and under ``perf record``, each twice (the
warm-up only, and the warm-up and the timed runs: the difference leaves start-up and
imports out), ``--rounds`` times, and prints per task of one run: the counters, the
sampled time in total, and the symbols whose sampled time differs most from the
baseline's (median over rounds). With --keep, the recordings stay there, for
``perf report`` and ``perf annotate``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from run import VARIANTS, WORKLOADS, Variant

FREQUENCY = 4999  # samples per second of CPU time
STAT_EVENTS = "task-clock,page-faults,context-switches"
_STAT = re.compile(r"^\s*([\d.,]+)\s+(?:msec\s+)?([\w-]+)")


def _command(variant: Variant, scale: float, repeats: int, cpu: str | None) -> list[str]:
    pin = ["taskset", "-c", cpu] if cpu is not None and shutil.which("taskset") else []
    workload = [variant.python, str(WORKLOADS), "create_gather", "--repeats", str(repeats)]
    return [*pin, *workload]


def _env(variant: Variant, scale: float) -> dict[str, str]:
    env = variant.environment()
    env["AGENT_BENCH_SCALE"] = str(scale)
    return env


def counters(variant: Variant, scale: float, repeats: int, cpu: str | None) -> dict[str, float]:
    """``perf stat``'s software counters for one child process."""
    command = ["perf", "stat", "-e", STAT_EVENTS, *_command(variant, scale, repeats, cpu)]
    done = subprocess.run(
        command, env=_env(variant, scale), capture_output=True, text=True, check=True
    )
    found: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = _STAT.match(line)
        if match is not None:
            found[match.group(2)] = float(match.group(1).replace(",", ""))
    return found


def samples(
    variant: Variant, scale: float, repeats: int, cpu: str | None, data: Path
) -> dict[str, int]:
    """Samples per ``shared object: symbol`` of one child process under ``perf record``."""
    record = ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(FREQUENCY), "-o", str(data)]
    subprocess.run(
        [*record, *_command(variant, scale, repeats, cpu)],
        env=_env(variant, scale),
        capture_output=True,
        check=True,
    )
    report = ["perf", "report", "-i", str(data), "--no-children", "--percent-limit", "0"]
    report += ["--sort", "dso,symbol", "-F", "sample,dso,symbol", "--stdio"]
    text = subprocess.run(report, capture_output=True, text=True, check=True).stdout
    counts: dict[str, int] = defaultdict(int)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        dso = re.sub(r"\.cpython-[^.]*\.so", ".so", parts[1])
        counts[f"{dso}: {parts[3]}"] += int(parts[0])
    return dict(counts)


def main() -> None:
    """Record every variant, print the per-task table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = 100,000 live tasks")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", help="pin every child to this CPU (taskset -c)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--keep", type=Path, help="folder for the first round's perf.data")
    parser.add_argument(
        "--other", action="append", default=[], help="NAME=PYTHON: that agent as a variant too"
    )
    options = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("perf is not installed (Debian: apt-get install linux-perf)")
    variants = [v for v in VARIANTS if v.name in ("baseline", "agent")]
    variants += [Variant.other(spec) for spec in options.other]
    tasks = max(100, int(100_000 * options.scale))
    per = tasks * options.repeats  # the tasks of the timed runs
    stats: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    sampled: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    with tempfile.TemporaryDirectory() as temporary:
        folder = options.keep or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        for round_number in range(options.rounds):
            for variant in variants:
                runs = {}
                for repeats in (0, options.repeats):
                    data = folder / f"{variant.name}-{round_number}-{repeats}.data"
                    runs[repeats] = (
                        counters(variant, options.scale, repeats, options.cpu),
                        samples(variant, options.scale, repeats, options.cpu, data),
                    )
                (stat0, sample0), (stat1, sample1) = runs[0], runs[options.repeats]
                stats[variant.name].append({k: v - stat0.get(k, 0.0) for k, v in stat1.items()})
                sampled[variant.name].append(
                    {
                        symbol: sample1.get(symbol, 0) - sample0.get(symbol, 0)
                        for symbol in set(sample0) | set(sample1)
                    }
                )

    ns = 1e9 / FREQUENCY / per  # nanoseconds per task for one sample

    def median_of(name: str, symbol: str) -> float:
        return statistics.median(run.get(symbol, 0) for run in sampled[name])

    print(
        f"Python {sys.version.split()[0]}, create_gather, {tasks:,} live tasks; per task of"
        f" {options.repeats} timed runs (processes with them minus processes without);"
        f" median of {options.rounds} rounds"
        f"{f', pinned to CPU {options.cpu}' if options.cpu else ''}."
    )
    print(f"{'':44} {'task-clock ns':>13} {'faults':>8} {'sampled ns':>10}")
    for variant in variants:
        clock = statistics.median(s.get("task-clock", 0.0) for s in stats[variant.name])
        faults = statistics.median(s.get("page-faults", 0.0) for s in stats[variant.name])
        total = statistics.median(sum(run.values()) for run in sampled[variant.name])
        print(
            f"{variant.name:44} {clock * 1e6 / per:13,.0f} {faults / per:8.3f} {total * ns:10,.0f}"
        )
    for variant in variants[1:]:
        symbols = set().union(*sampled[variant.name], *sampled["baseline"])
        difference = {
            symbol: median_of(variant.name, symbol) - median_of("baseline", symbol)
            for symbol in symbols
        }
        ranked = sorted(difference.items(), key=lambda item: -abs(item[1]))
        print(f"\n{variant.name}: sampled ns per task, against the baseline, by symbol")
        for symbol, delta in ranked[: options.top]:
            print(f"  {delta * ns:+8.1f}  {symbol}")


if __name__ == "__main__":
    main()
