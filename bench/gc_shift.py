"""How much the agent moves CPython's automatic garbage collections in a program.

The agent allocates at start-up (its settings and import hook) and when the program
imports asyncio (its modules, structlog); allocations decide when the collector's
youngest generation runs, and so when garbage in reference cycles (a lost task in a
cycle, say) is freed. Objects freed by reference counting are not affected. This counts,
in a fresh process per variant, the young-generation collections and the youngest
generation's count at three points: the program's first line, right after
``import asyncio``, and after a small ``asyncio.run``.

    python bench/gc_shift.py          # writes bench/results/pyX.Y-gc.md

Deterministic (counts, not time): one run per variant is enough.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SITECUSTOMIZE = HERE.parent / "sitecustomize_example"

PROGRAM = """
import gc, json, sys
points = {"program start": (gc.get_stats()[0]["collections"], gc.get_count()[0])}
import asyncio
points["after import asyncio"] = (gc.get_stats()[0]["collections"], gc.get_count()[0])

async def main():
    await asyncio.gather(*[asyncio.create_task(asyncio.sleep(0)) for _ in range(1000)])

asyncio.run(main())
points["after asyncio.run"] = (gc.get_stats()[0]["collections"], gc.get_count()[0])
print(json.dumps(points))
"""

VARIANTS = {
    "plain": {},
    "sitecustomize, agent off": {"PYTHONPATH": str(SITECUSTOMIZE)},
    "agent on": {"PYTHONPATH": str(SITECUSTOMIZE), "ASYNCIO_AGENT": "1"},
}


def measure(extra: dict[str, str]) -> dict[str, list[int]]:
    """The points of one fresh process with ``extra`` in its environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ASYNCIO_AGENT", "OTEL_")) and k != "PYTHONPATH"
    }
    env.update(extra)
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True
    )
    points: dict[str, list[int]] = json.loads(done.stdout)
    return points


def main() -> None:
    """Measure every variant; print and write the table."""
    results = {name: measure(extra) for name, extra in VARIANTS.items()}
    points = list(next(iter(results.values())))
    lines = [
        f"`python bench/gc_shift.py`: Python {platform.python_version()}; young-generation "
        "collections so far / objects in the youngest generation, at each point.",
        "",
        "| variant | " + " | ".join(points) + " |",
        "|---|" + "---|" * len(points),
    ]
    for name, values in results.items():
        cells = [f"{values[p][0]} / {values[p][1]}" for p in points]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    version = ".".join(platform.python_version_tuple()[:2])
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"py{version}-gc.md").write_text(table)


if __name__ == "__main__":
    main()
