"""What an idle loop costs: process CPU time per second of ``asyncio.sleep``, per variant.

Owns the idle measurement of the blocking detectors: the agent's heartbeat wakes a
running loop three times per threshold, its watchdog thread about once or twice more;
the peers' watchdogs wake on their own schedules. Process CPU time (all threads), the
least of ``--processes`` fresh processes, each idle for ``--seconds``. A shared machine
adds its own noise: read it as an order of magnitude.

    python bench/idle.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from run import VARIANTS, Variant

HERE = Path(__file__).resolve().parent
MEASURED = (
    "baseline",
    "agent",
    "agent_no_blocking",
    "aiocop",
    "pyleak",
    "aiodebug",
    "uvloop_baseline",
    "uvloop_agent",
    "uvloop_agent_no_blocking",
)

CHILD = """\
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[3])


async def main(peer, seconds):
    if peer != "none":
        from peers import enable_inside

        await enable_inside(peer)
    await asyncio.sleep(0.3)
    start = time.process_time()
    await asyncio.sleep(seconds)
    print(json.dumps({"cpu_ms_per_s": (time.process_time() - start) * 1000 / seconds}))


peer, seconds = sys.argv[1], float(sys.argv[2])
if sys.argv[4] == "uvloop":
    import uvloop

    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
loop.run_until_complete(main(peer, seconds))
"""


def idle_cost(variant: Variant, seconds: float) -> float:
    """CPU milliseconds per idle second of one fresh process."""
    command = [sys.executable, "-c", CHILD, variant.peer, str(seconds), str(HERE), variant.loop]
    done = subprocess.run(
        command, env=variant.environment(), capture_output=True, text=True, check=True
    )
    value: float = json.loads(done.stdout.strip().splitlines()[-1])["cpu_ms_per_s"]
    return value


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    options = parser.parse_args()
    print(f"Reproduce: python bench/idle.py --processes {options.processes}", end="")
    print(f" --seconds {options.seconds}\n")
    print(f"Python {platform.python_version()}; least of {options.processes} processes.\n")
    print("| variant | idle CPU ms per second |")
    print("|---|---|")
    for variant in VARIANTS:
        if variant.name in MEASURED:
            best = min(idle_cost(variant, options.seconds) for _ in range(options.processes))
            print(f"| {variant.name} | {best:.2f} |", flush=True)


if __name__ == "__main__":
    main()
