"""What the never-awaited, left-over and stuck-task features cost where they do work.

Owns three measurements, each in child processes, printed and written as a Markdown
table (``bench/results/pyXY-findings.md``); never asserts a time:

1. never-awaited coroutines: time per coroutine created and dropped without being
   awaited (warnings ignored), without the agent, with it (rate limit at its default:
   most are counted, not written), and with every one written (no rate limit);
2. the stuck-task check: time of one check against the number of live pending tasks;
3. the pytest plugin: wall time of a suite of 300 small tests (half pytest-asyncio),
   plain, ``--asyncio-agent``, ``--asyncio-agent-pending=warn`` and both.

    taskset -c 1 python bench/findings_cost.py          # writes bench/results/pyXY-findings.md
    python bench/findings_cost.py --quick                # fewer repeats

The per-task and per-coroutine hot paths are measured by bench/run.py (wall time) and
bench/instructions.py (instructions): origin tracking is the variants
``agent_origin_1`` and ``agent_origin_8``, the periodic stuck check ``agent_stuck``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SITECUSTOMIZE = HERE.parent / "sitecustomize_example"

NEVER_AWAITED = """
import time, warnings
warnings.simplefilter("ignore")

async def fetch():
    pass

def drop(count):
    for _ in range(count):
        fetch()

drop(1000)  # warm-up
start = time.perf_counter()
drop(COUNT)
print((time.perf_counter() - start) / COUNT)
"""

STUCK_CHECK = """
import asyncio, json, time
import asyncio_agent
from asyncio_agent import runtime
from asyncio_agent.stuck import StuckDetector

asyncio_agent.install(output="/dev/null")

async def wait(event):
    await event.wait()

async def main():
    event = asyncio.Event()
    tasks = []
    for site in range(10):  # ten sites, COUNT tasks in all
        tasks += [asyncio.create_task(wait(event)) for _ in range(COUNT // 10)]
    await asyncio.sleep(0)
    detector = StuckDetector(1.0, runtime.current().recorder, lambda finding: None)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        detector.find()
        times.append(time.perf_counter() - start)
    event.set()
    await asyncio.gather(*tasks)
    print(min(times))

asyncio.run(main())
"""

SUITE = """
import asyncio
import pytest

async def helper():
    await asyncio.sleep(0)

@pytest.mark.parametrize("n", range(150))
@pytest.mark.asyncio
async def test_async(n):
    await asyncio.gather(*[asyncio.create_task(helper()) for _ in range(5)])

@pytest.mark.parametrize("n", range(150))
def test_sync(n):
    assert n >= 0
"""


def _environment(agent: bool, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCIO_AGENT")}
    env.pop("PYTHONPATH", None)
    if agent:
        env.update({"PYTHONPATH": str(SITECUSTOMIZE), "ASYNCIO_AGENT": "1"})
        env["ASYNCIO_AGENT_OUTPUT"] = os.devnull
    env.update(extra)
    return env


def _child(source: str, env: dict[str, str]) -> float:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def never_awaited(repeats: int) -> dict[str, float]:
    """Microseconds per never-awaited coroutine, median of ``repeats`` children."""
    source = NEVER_AWAITED.replace("COUNT", "100_000")
    setups = {
        "no agent": _environment(False),
        "agent (rate limit 1000/s per site: most counted)": _environment(True),
        "agent, every one written (ASYNCIO_AGENT_RATE_LIMIT=0)": _environment(
            True, ASYNCIO_AGENT_RATE_LIMIT="0"
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(repeats):
        for name, env in setups.items():
            samples[name].append(_child(source, env) * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def stuck_check(counts: list[int]) -> dict[int, float]:
    """Milliseconds of one stuck check against live pending tasks."""
    return {
        count: _child(STUCK_CHECK.replace("COUNT", str(count)), _environment(False)) * 1000
        for count in counts
    }


def plugin(repeats: int) -> dict[str, float]:
    """Seconds of a 300-test suite under each plugin mode, median of ``repeats``."""
    modes = {
        "plain": [],
        "--asyncio-agent": ["--asyncio-agent"],
        "--asyncio-agent-pending=warn": ["--asyncio-agent-pending=warn"],
        "both": ["--asyncio-agent", "--asyncio-agent-pending=warn"],
    }
    samples: dict[str, list[float]] = {name: [] for name in modes}
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "test_suite.py").write_text(SUITE)
        Path(folder, "pytest.ini").write_text(
            "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        )
        for _ in range(repeats):
            for name, args in modes.items():
                command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
                start = time.perf_counter()
                subprocess.run(
                    command, cwd=folder, env=_environment(False), capture_output=True, check=True
                )
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    """Measure, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repeat each")
    parser.add_argument("--output", default=str(HERE / "results"))
    options = parser.parse_args()
    repeats = 1 if options.quick else 5
    coroutines = never_awaited(repeats)
    checks = stuck_check([1_000, 10_000, 100_000])
    suite = plugin(1 if options.quick else 3)
    command = "taskset -c 1 python bench/findings_cost.py"
    lines = [
        f"`{command}` — Python {platform.python_version()}, {platform.machine()}; "
        f"medians of {repeats} runs.",
        "",
        "| never-awaited coroutine (created and dropped, warnings ignored) | µs each |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in coroutines.items()),
        "",
        "| stuck-task check (10 sites) | ms per check |",
        "|---|---|",
        *(f"| {count:,} live pending tasks | {value:.1f} |" for count, value in checks.items()),
        "",
        "| pytest, 300 tests (150 pytest-asyncio) | seconds | vs plain |",
        "|---|---|---|",
        *(
            f"| {name} | {value:.2f} | {value / suite['plain']:.2f}x |"
            for name, value in suite.items()
        ),
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    version = ".".join(platform.python_version_tuple()[:2])
    (output / f"py{version}-findings.md").write_text(table)
    (output / f"py{version}-findings.json").write_text(
        json.dumps({"never_awaited_us": coroutines, "stuck_check_ms": checks, "pytest_s": suite})
    )


if __name__ == "__main__":
    main()
