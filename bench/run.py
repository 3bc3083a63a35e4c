"""Benchmark driver: every variant side by side, interleaved, each in its own process.

Owns the variants (baseline, the agent, CPython debug mode, peers), their order, the
ratios against the baseline of the same round, and the written results (pyperf JSON
suites, a Markdown table, a plot). Never asserts timings: it reports them.

    python bench/run.py                 # full run with this interpreter
    python bench/run.py --cpu 1         # every child pinned to CPU 1 (taskset)
    python bench/run.py --smoke         # seconds-long run of every path (CI)
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKLOADS = HERE / "workloads.py"
SITECUSTOMIZE = REPO / "sitecustomize_example"


@dataclass(frozen=True)
class Variant:
    """One way of running a workload: its environment and its peer set-up."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    peer: str = "none"
    loop: str = "asyncio"
    slow: bool = False  # a peer known to cost 5-20x: fewer repeats
    python: str = sys.executable  # another environment's: e.g. an earlier agent (--other)

    @classmethod
    def other(cls, spec: str) -> Variant:
        """``NAME=PYTHON`` (--other): the agent as installed for that interpreter, e.g. a
        virtualenv of an earlier commit, timed against the same baseline."""
        name, _, python = spec.partition("=")
        return cls(name, AGENT_ON, python=python)

    def environment(self) -> dict[str, str]:
        """The child's environment: ours without any agent setting, plus the variant's."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ASYNCIO_AGENT", "OTEL_")) and k != "PYTHONASYNCIODEBUG"
        }
        env.pop("PYTHONPATH", None)
        env.update(self.env)
        return env


AGENT_ON = {"PYTHONPATH": str(SITECUSTOMIZE), "ASYNCIO_AGENT": "1"}
"""The agent as installed, with its defaults (blocking detection at 100 ms included)."""
LOST_TASKS_ONLY = {**AGENT_ON, "ASYNCIO_AGENT_BLOCK_MS": "0"}
"""The agent without blocking detection: what ``agent`` measured before it existed."""

VARIANTS = [
    Variant("baseline"),
    # The agent as installed: lost tasks, never-awaited coroutines and blocking detection.
    Variant("agent", AGENT_ON),
    # Without blocking detection (ASYNCIO_AGENT_BLOCK_MS=0): what the heartbeat costs.
    Variant("agent_no_blocking", LOST_TASKS_ONLY),
    Variant("agent_python_path", {**AGENT_ON, "ASYNCIO_AGENT_SPEEDUPS": "0"}),
    Variant("agent_full_stacks", {**AGENT_ON, "ASYNCIO_AGENT_STACK_DEPTH": "64"}),
    # CPython's coroutine origin tracking (never-awaited coroutines' creation site):
    # it costs on every coroutine created, task or not.
    Variant("agent_origin_1", {**AGENT_ON, "ASYNCIO_AGENT_COROUTINE_ORIGIN": "1"}),
    Variant("agent_origin_8", {**AGENT_ON, "ASYNCIO_AGENT_COROUTINE_ORIGIN": "8"}),
    # The stuck-task check: one pass over the live tasks every 0.5 s.
    Variant("agent_stuck", {**AGENT_ON, "ASYNCIO_AGENT_STUCK_S": "1"}),
    Variant("debug_mode", {"PYTHONASYNCIODEBUG": "1"}, slow=True),
    Variant("aiocop", peer="aiocop"),
    Variant("pyleak", peer="pyleak"),
    Variant("aiodebug", peer="aiodebug"),
    Variant("aiomonitor", peer="aiomonitor", slow=True),
    Variant("otel_asyncio", peer="otel"),
    Variant("uvloop_baseline", loop="uvloop"),
    Variant("uvloop_agent", AGENT_ON, loop="uvloop"),
    Variant("uvloop_agent_no_blocking", LOST_TASKS_ONLY, loop="uvloop"),
]
BASELINE_OF = {"uvloop_agent": "uvloop_baseline", "uvloop_agent_no_blocking": "uvloop_baseline"}


def _available(variant: Variant) -> bool:
    probe = {
        "aiomonitor": "import aiomonitor",
        "otel": "import opentelemetry.instrumentation.asyncio",
        "aiocop": "import aiocop",
        "pyleak": "import pyleak",
        "aiodebug": "import aiodebug.log_slow_callbacks",
    }.get(variant.peer, "import uvloop" if variant.loop == "uvloop" else "pass")
    done = subprocess.run([variant.python, "-c", probe], capture_output=True, check=False)
    return done.returncode == 0


LOAD: list[float] = []
"""The machine's 1-minute load average before each round (other programs' share)."""

PIN: list[str] = []
"""``taskset -c CPU`` when --cpu is given: every timed child runs on that CPU."""


def _run_child(variant: Variant, workload: str, repeats: int, scale: float) -> list[float]:
    env = variant.environment()
    env["AGENT_BENCH_SCALE"] = str(scale)
    command = [*PIN, variant.python, str(WORKLOADS), workload, "--loop", variant.loop]
    command += ["--repeats", str(repeats), "--peer", variant.peer]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant.name}/{workload} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["agent"] != ("ASYNCIO_AGENT" in variant.env):
        raise RuntimeError(f"{variant.name}: agent state is not what the variant asks")
    times: list[float] = result["times"]
    return times


def measure(
    workloads: list[str], variants: list[Variant], rounds: int, repeats: int, scale: float
) -> dict[str, dict[str, list[list[float]]]]:
    """times[workload][variant] = one list of in-process times per round."""
    times: dict[str, dict[str, list[list[float]]]] = {}
    for workload in workloads:
        times[workload] = {variant.name: [] for variant in variants}
        for round_number in range(rounds):
            LOAD.append(os.getloadavg()[0])
            order = variants[:]
            random.Random(round_number).shuffle(order)  # interleaved, reproducible
            for variant in order:
                count = 1 if variant.slow else repeats
                values = _run_child(variant, workload, count, scale)
                times[workload][variant.name].append(values)
                print(
                    f"  {workload:13} round {round_number + 1}/{rounds} {variant.name:18}"
                    f" best {min(values):.4f}s",
                    flush=True,
                )
    return times


def ratios(times: dict[str, dict[str, list[list[float]]]]) -> dict[str, dict[str, list[float]]]:
    """Per workload and variant: best time / the baseline's best time, round by round."""
    out: dict[str, dict[str, list[float]]] = {}
    for workload, by_variant in times.items():
        out[workload] = {}
        for name, per_round in by_variant.items():
            base = by_variant[BASELINE_OF.get(name, "baseline")]
            out[workload][name] = [
                min(values) / min(base_values)
                for values, base_values in zip(per_round, base, strict=True)
            ]
    return out


def startup(repeats: int) -> dict[str, float]:
    """Median wall time (ms) of ``python -c pass``: plain, sitecustomize only, agent on."""
    setups = {
        "plain": {},
        "sitecustomize, ASYNCIO_AGENT unset": {"PYTHONPATH": str(SITECUSTOMIZE)},
        "sitecustomize, ASYNCIO_AGENT=1": dict(AGENT_ON),
    }
    samples: dict[str, list[float]] = {name: [] for name in setups}
    # As in a real deployment, the sitecustomize's bytecode is cached (compiling it on
    # every start, as PYTHONDONTWRITEBYTECODE would force, costs more than the agent).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(SITECUSTOMIZE)], check=True)
    for _ in range(repeats):
        for name, extra in setups.items():
            env = Variant(name, extra).environment()
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
            samples[name].append((time.perf_counter() - start) * 1000)
    result = {name: statistics.median(values) for name, values in samples.items()}
    check = subprocess.run(
        [sys.executable, "-c", "import sys; print('asyncio' in sys.modules)"],
        env=Variant("agent", AGENT_ON).environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    result["asyncio imported at start-up with the agent on"] = float(check.stdout.strip() == "True")
    return result


def memory(variants: list[Variant]) -> dict[str, dict[str, Any]]:
    """Bytes per live task and memory along 1,000,000 completed tasks, per variant."""
    out = {}
    for variant in variants:
        command = [variant.python, str(WORKLOADS), "memory", "--loop", variant.loop]
        done = subprocess.run(
            command, env=variant.environment(), capture_output=True, text=True, check=True
        )
        out[variant.name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def _spread(values: list[float]) -> str:
    median = statistics.median(values)
    return f"{median:.2f}x ({min(values):.2f}-{max(values):.2f})"


def write_results(folder: Path, data: dict[str, Any]) -> Path:
    """Raw JSON, pyperf suites per variant, and a Markdown table; returns the table."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = data["python"]
    (folder / f"{tag}.json").write_text(json.dumps(data, indent=1))
    (folder / f"{tag}.partial.json").unlink(missing_ok=True)
    _write_pyperf(folder, tag, data["times"])
    pinned = f", pinned to CPU {data['cpu']}" if data.get("cpu") else ""
    if data.get("load"):
        load = data["load"]
        pinned += (
            f"; the machine's load average at the rounds' start (other programs): median"
            f" {statistics.median(load):.1f}, {min(load):.1f}-{max(load):.1f}"
        )
    lines = [
        f"Reproduce: `{data['command']}` (with this Python, from the repository root)",
        "",
        f"Python {data['python_full']}, {data['machine']}; {data['rounds']} interleaved rounds"
        f"{pinned}; ratio = best time / baseline best time in the same round:"
        " median (min-max).",
        "",
        "| variant | " + " | ".join(data["ratios"]) + " |",
        "|---|" + "---|" * len(data["ratios"]),
    ]
    names = list(next(iter(data["ratios"].values())))
    for name in names:
        cells = [_spread(data["ratios"][w][name]) for w in data["ratios"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if data.get("memory"):
        base = data["memory"]["baseline"]["bytes_per_task"]
        lines.append("")
        lines.append(
            "| variant | bytes per live task | extra vs baseline | memory along 1M tasks (MB) |"
        )
        lines.append("|---|---|---|---|")
        for name, figures in data["memory"].items():
            points = " / ".join(f"{p / 1e6:.1f}" for p in figures["memory_after_250k_steps"])
            extra = figures["bytes_per_task"] - base
            lines.append(f"| {name} | {figures['bytes_per_task']:.0f} | {extra:+.0f} | {points} |")
    if data.get("startup"):
        lines.append("")
        lines.append("| start-up | median ms |")
        lines.append("|---|---|")
        for name, value in data["startup"].items():
            lines.append(f"| {name} | {value:.2f} |")
    table = folder / f"{tag}.md"
    table.write_text("\n".join(lines) + "\n")
    return table


def _write_pyperf(folder: Path, tag: str, times: dict[str, dict[str, list[list[float]]]]) -> None:
    """One pyperf suite per variant, so ``python -m pyperf compare_to`` works on them."""
    try:
        import pyperf
    except ImportError:
        return
    variants = next(iter(times.values())).keys()
    for name in variants:
        benchmarks = []
        for workload, by_variant in times.items():
            runs = [
                pyperf.Run(values, metadata={"name": workload, "loops": 1}, collect_metadata=False)
                for values in by_variant[name]
            ]
            benchmarks.append(pyperf.Benchmark(runs))
        path = folder / f"{tag}-{name}.pyperf.json"
        path.unlink(missing_ok=True)
        pyperf.BenchmarkSuite(benchmarks).dump(str(path))


def main() -> None:
    """Command line of the driver."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round (CI)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="in-process runs per child")
    parser.add_argument("--workloads", default="create_gather,fan_out_tree,echo_server")
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS))
    parser.add_argument("--output", type=Path, default=HERE / "results")
    parser.add_argument("--cpu", help="pin every timed child to this CPU (taskset -c)")
    parser.add_argument(
        "--other", action="append", default=[], help="NAME=PYTHON: that agent as a variant too"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip memory and start-up")
    options = parser.parse_args()
    if options.cpu is not None and shutil.which("taskset") is not None:
        PIN[:] = ["taskset", "-c", options.cpu]

    scale = 0.02 if options.smoke else 1.0
    rounds = 1 if options.smoke else options.rounds
    repeats = 1 if options.smoke else options.repeats
    wanted = options.variants.split(",")
    variants = [v for v in VARIANTS if v.name in wanted] + [Variant.other(o) for o in options.other]
    missing = [v.name for v in variants if not _available(v)]
    if missing:
        print(f"skipping variants that cannot run on this Python: {', '.join(missing)}")
    variants = [v for v in variants if v.name not in missing]
    workloads = options.workloads.split(",")

    tag = f"py{sys.version_info[0]}.{sys.version_info[1]}" + ("-smoke" if options.smoke else "")
    print(f"== {tag}: {', '.join(v.name for v in variants)}")
    times = measure(workloads, variants, rounds, repeats, scale)
    data: dict[str, Any] = {
        "python": tag,
        "python_full": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "rounds": rounds,
        "cpu": options.cpu if PIN else None,
        "load": LOAD,
        "command": "python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "times": times,
        "ratios": ratios(times),
    }
    # The timings first, in case a later step fails: minutes of rounds are not lost.
    options.output.mkdir(parents=True, exist_ok=True)
    (options.output / f"{tag}.partial.json").write_text(json.dumps(data, indent=1))
    if not options.smoke and not options.no_memory:
        extra = {Variant.other(o).name for o in options.other}
        data["memory"] = memory([v for v in variants if v.name in {"baseline", "agent", *extra}])
        data["startup"] = startup(repeats=40)
    table = write_results(options.output, data)
    print(table.read_text())


if __name__ == "__main__":
    main()
