"""Does the agent catch a 150 ms ``time.sleep``, and with what? The peers' scenario, for us.

Owns the agent's rows of the detection table in docs/blocking.md: the two scenarios of
the team's peer study (a task that sleeps 150 ms, a ``call_soon`` callback that does),
each run ``--runs`` times in a fresh process on asyncio's loop and on uvloop, with the
agent's defaults (100 ms). The start of the block has a random phase of 50-150 ms, so
that the heartbeat is not phase-locked with it. Prints a Markdown table.

    python bench/blocking_detection.py --runs 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SITECUSTOMIZE = HERE.parent / "sitecustomize_example"

SCENARIO = """\
import asyncio, random, sys, time

BLOCK_S = 0.15


async def blocker():
    time.sleep(BLOCK_S)  # SLEEP-TASK


def slow():
    time.sleep(BLOCK_S)  # SLEEP-CALLBACK


async def main(kind):
    await asyncio.sleep(random.uniform(0.05, 0.15))
    if kind == "task":
        await asyncio.create_task(blocker(), name="blocker-task")  # CREATE-TASK
    else:
        asyncio.get_running_loop().call_soon(slow)  # CALL-SOON
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.05)


loop_kind, kind = sys.argv[1], sys.argv[2]
if loop_kind == "uvloop":
    import uvloop

    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
loop.run_until_complete(main(kind))
loop.close()
"""


def _line(marker: str) -> int:
    return next(n for n, text in enumerate(SCENARIO.splitlines(), 1) if marker in text)


def run_once(folder: Path, loop: str, kind: str) -> dict[str, object]:
    """One fresh process; what its events said about the block."""
    script = folder / "scenario.py"
    script.write_text(SCENARIO)
    events = folder / "events.jsonl"
    events.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCIO_AGENT")}
    env.update(PYTHONPATH=str(SITECUSTOMIZE), ASYNCIO_AGENT="1", ASYNCIO_AGENT_OUTPUT=str(events))
    subprocess.run([sys.executable, str(script), loop, kind], env=env, check=True)
    found = (
        [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    )
    blamed = [e for e in found if e.get("blocked_in") in ("task", "callback")]
    sleep_line = f"scenario.py:{_line('SLEEP-TASK' if kind == 'task' else 'SLEEP-CALLBACK')}"
    one = blamed[0] if len(blamed) == 1 else {}
    stack = one.get("blocking_stack") or []
    return {
        "caught": len(blamed) == 1,
        "blocking_line": any(sleep_line in str(frame) for frame in stack),
        "creation_site": one.get("creation_line") == _line("CREATE-TASK"),
        "named": one.get("task_name") == "blocker-task"
        if kind == "task"
        else one.get("callback") == "slow",
        "duration": one.get("duration_s"),
    }


def main() -> None:
    """Run every cell and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    options = parser.parse_args()
    loops = ["asyncio"]
    if subprocess.run([sys.executable, "-c", "import uvloop"], check=False).returncode == 0:
        loops.append("uvloop")
    print(f"Python {platform.python_version()}; {options.runs} fresh processes per cell.\n")
    columns = ["loop", "scenario", "caught", "blocking line", "creation site"]
    columns += ["task / callback named", "duration_s (min-max)"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for loop in loops:
            for kind in ("task", "callback"):
                results = [run_once(Path(folder), loop, kind) for _ in range(options.runs)]

                def count(key: str, rows: list[dict[str, object]] = results) -> str:
                    return f"{sum(1 for r in rows if r[key])}/{len(rows)}"

                durations = [float(str(r["duration"])) for r in results if r["duration"]]
                spread = f"{min(durations):.3f}-{max(durations):.3f}" if durations else "-"
                site = count("creation_site") if kind == "task" else "n/a"
                print(
                    f"| {loop} | {kind} | {count('caught')} | {count('blocking_line')} | "
                    f"{site} | {count('named')} | {spread} |"
                )


if __name__ == "__main__":
    main()
