"""Instructions per workload run, counted by valgrind: the agent's cost without the noise.

Wall time on a shared 2-core machine swings by 10-30% between runs; an instruction
count of the same program is the same every time. For each workload and variant this
runs the benchmark child (bench/workloads.py) under ``valgrind --tool=cachegrind``
twice, once with the warm-up only and once with two timed runs more, and reports half
the difference: the instructions of one run of the workload, and their ratio to the
baseline's.

    python bench/instructions.py                     # writes bench/results/pyXY-instructions.md
    python bench/instructions.py --scale 0.1 --workloads create_gather

Under valgrind a program runs about 50 times slower, so the agent's site cache (valid
for one millisecond) misses about 50 times as often as at full speed: these counts
overstate the agent's cost a little, never understate it. Instructions are not time
(cache misses and branch mispredictions are not in them); bench/run.py measures time.
"""

from __future__ import annotations

import argparse
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from run import VARIANTS, WORKLOADS, Variant

HERE = Path(__file__).resolve().parent
COUNTED = ("baseline", "agent", "agent_no_blocking", "agent_python_path")
# Sizes that keep each child under a minute in valgrind; the fan-out tree only has its
# full shape (7 levels, 21,845 tasks) at scale 1.
SCALES = {"create_gather": 0.2, "fan_out_tree": 1.0, "echo_server": 0.2}
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(variant: Variant, workload: str, repeats: int, scale: float) -> int:
    """Instructions valgrind counted for one child process."""
    env = variant.environment()
    env["AGENT_BENCH_SCALE"] = str(scale)
    env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every child
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no"]
    command += ["--cachegrind-out-file=/dev/null", variant.python, str(WORKLOADS)]
    command += [workload, "--repeats", str(repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    found = _REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{variant.name}/{workload} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_run(variant: Variant, workload: str, scale: float) -> float:
    """Instructions of one timed run: (warm-up + 2 runs) - (warm-up only), halved."""
    warm_up_only = instructions(variant, workload, 0, scale)
    return (instructions(variant, workload, 2, scale) - warm_up_only) / 2


def main() -> None:
    """Count, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, help="workload size for all (1 = full)")
    parser.add_argument("--workloads", default="create_gather,fan_out_tree,echo_server")
    parser.add_argument("--output", default=str(HERE / "results"))
    parser.add_argument(
        "--other", action="append", default=[], help="NAME=PYTHON: that agent as a variant too"
    )
    parser.add_argument("--variants", default=",".join(COUNTED), help="names from bench/run.py")
    options = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    workloads = options.workloads.split(",")
    wanted = options.variants.split(",")
    variants = [v for v in VARIANTS if v.name in wanted]
    variants += [Variant.other(spec) for spec in options.other]
    counts: dict[str, dict[str, float]] = {}
    for workload in workloads:
        counts[workload] = {}
        for variant in variants:
            scale = options.scale or SCALES.get(workload, 0.2)
            counts[workload][variant.name] = per_run(variant, workload, scale)
            print(f"  {workload:13} {variant.name:18} {counts[workload][variant.name]:,.0f}")
    version = ".".join(platform.python_version_tuple()[:2])
    command = "python bench/instructions.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"Reproduce: `{command.strip()}` (with this Python, from the repository root)",
        "",
        f"Python {platform.python_version()}, {platform.machine()}; instructions of one run "
        "(valgrind; workload scale "
        + ", ".join(f"{w} {options.scale or SCALES.get(w, 0.2)}" for w in workloads)
        + "): ratio to baseline (millions).",
        "",
        "| variant | " + " | ".join(workloads) + " |",
        "|---|" + "---|" * len(workloads),
    ]
    for variant in variants:
        cells = []
        for workload in workloads:
            ratio = counts[workload][variant.name] / counts[workload]["baseline"]
            cells.append(f"{ratio:.3f}x ({counts[workload][variant.name] / 1e6:,.0f})")
        lines.append(f"| {variant.name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"py{version}-instructions.md").write_text(table)


if __name__ == "__main__":
    main()
