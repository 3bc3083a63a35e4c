"""Where the agent's cost per task goes: instructions and simulated cache misses, by function.

    python bench/cache_profile.py                        # create_gather, 100,000 live tasks
    python bench/cache_profile.py --scale 0.1 --top 15   # 10,000 live tasks
    python bench/cache_profile.py --variant before=OTHER/bin/python   # another install

Instruction counts (bench/instructions.py) cannot see a cache miss, and on this machine
the hardware counters are not available to ``perf stat`` (a virtual machine). This runs
the create-and-gather child (bench/workloads.py) under ``valgrind --tool=cachegrind
--cache-sim=yes`` for the baseline and the agent, with the last-level cache set to the
size of one core's L2 (2 MB: a miss there goes to the shared L3 or to memory), twice
each (the warm-up only, and the warm-up and two runs more), and prints per task of one
run: instructions, first-level data misses and last-level misses, in total and for the
functions whose counts differ most. The simulation has no prefetcher and no TLB; a
sequential scan counts as many misses as random reads, which real hardware hides.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from run import VARIANTS, WORKLOADS, Variant

EVENTS = ("Ir", "D1mr", "D1mw", "DLmr", "DLmw")
_ROW = re.compile(r"\s*([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+(\S.*)$")
Counts = dict[str, list[float]]
ZERO = [0.0] * len(EVENTS)


def profile(variant: Variant, repeats: int, scale: float, folder: Path, cache: str) -> Counts:
    """Per-function event counts of one child process."""
    out = folder / f"{variant.name}-{repeats}.out"
    env = variant.environment()
    env["AGENT_BENCH_SCALE"] = str(scale)
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--LL={cache}"]
    command += [f"--cachegrind-out-file={out}", variant.python, str(WORKLOADS)]
    command += ["create_gather", "--repeats", str(repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant.name} failed:\n{done.stderr[-2000:]}")
    annotate = ["cg_annotate", "--auto=no", "--threshold=0", "--show-percs=no"]
    text = subprocess.run(
        [*annotate, "--show=" + ",".join(EVENTS), str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: Counts = defaultdict(lambda: list(ZERO))
    for line in text.splitlines():
        found = _ROW.match(line)
        if found is None or "PROGRAM TOTALS" in line:
            continue
        name = re.sub(r"^.*/(Python-3[^/]*|include/python3[^/]*)/", "", found.group(6).strip())
        for index, value in enumerate(found.groups()[:5]):
            counts[name][index] += int(value.replace(",", ""))
    return dict(counts)


def _minus(later: Counts, earlier: Counts, divisor: float = 1.0) -> Counts:
    return {
        name: [
            (b - a) / divisor
            for a, b in zip(earlier.get(name, ZERO), later.get(name, ZERO), strict=True)
        ]
        for name in set(earlier) | set(later)
    }


def per_run(variant: Variant, scale: float, folder: Path, cache: str) -> Counts:
    """Counts of one timed run: (warm-up + 2 runs) - (warm-up only), halved."""
    once = profile(variant, 0, scale, folder, cache)
    thrice = profile(variant, 2, scale, folder, cache)
    return _minus(thrice, once, 2.0)


def main() -> None:
    """Profile both variants and print the per-task table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = 100,000 live tasks")
    parser.add_argument(
        "--variant", default="agent", help="compared with the baseline (or NAME=PYTHON)"
    )
    parser.add_argument("--cache", default="2097152,16,64", help="last level: size,ways,line")
    parser.add_argument("--top", type=int, default=12)
    options = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    tasks = max(100, int(100_000 * options.scale))
    by_name = {v.name: v for v in VARIANTS}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        base = per_run(by_name["baseline"], options.scale, folder, options.cache)
        chosen = by_name.get(options.variant) or Variant.other(options.variant)
        other = per_run(chosen, options.scale, folder, options.cache)

    def total(counts: Counts) -> list[float]:
        return [sum(values[i] for values in counts.values()) / tasks for i in range(5)]

    def cells(values: list[float]) -> str:
        return f"{values[0]:10,.0f} {values[1] + values[2]:9.1f} {values[3] + values[4]:9.1f}"

    print(f"Python {sys.version.split()[0]}, create_gather with {tasks:,} live tasks; per task")
    print(f"of one run; last level simulated as {options.cache} (size, ways, line).")
    print(f"{'':42} {'instr':>10} {'D1 miss':>9} {'LL miss':>9}")
    print(f"{'baseline':42} {cells(total(base))}")
    print(f"{chosen.name:42} {cells(total(other))}")
    delta = _minus(other, base)
    print(f"{'difference':42} {cells(total(delta))}")
    for label, key in (("last-level misses", 3), ("first-level misses", 1)):
        print(f"\nlargest differences in {label}, per task:")
        ranked = sorted(delta.items(), key=lambda item: -abs(item[1][key] + item[1][key + 1]))
        for name, values in ranked[: options.top]:
            print(f"{name[-42:]:42} {cells([v / tasks for v in values])}")


if __name__ == "__main__":
    main()
