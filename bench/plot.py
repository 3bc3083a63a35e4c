"""Draws bench/results/overhead.png and live-tasks.png from the JSON results.

Owns the pictures only. overhead.png (``bench/run.py``): one panel per Python, one
group of bars per workload, the median ratio against the baseline with the min-max
range as an error bar. live-tasks.png (``bench/live_tasks.py``): the ratio against the
number of tasks alive at once, one line per Python and variant, the same spread.

    python bench/plot.py                              # bench/results/*.png
    python bench/plot.py bench/results/blocking       # that folder's overhead.png
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"


def live_tasks() -> None:
    """live-tasks.png from every ``pyX.Y-live-tasks.json`` found (if any)."""
    files = sorted(RESULTS.glob("py*-live-tasks.json"))
    if not files:
        return
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    markers = {"agent": "o", "agent_python_path": "s"}
    for path in files:
        result = json.loads(path.read_text())
        sizes = [int(size) for size in result["ratios"]]
        variants = [name for name in result["ratios"][str(sizes[0])] if name != "baseline"]
        for variant in variants:
            values = [result["ratios"][str(size)][variant] for size in sizes]
            medians = [statistics.median(v) for v in values]
            low = [m - min(v) for m, v in zip(medians, values, strict=True)]
            high = [max(v) - m for m, v in zip(medians, values, strict=True)]
            axis.errorbar(
                sizes,
                medians,
                yerr=[low, high],
                marker=markers.get(variant, "^"),
                capsize=3,
                label=f"Python {result['python']}, {variant}",
            )
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.axhline(1.10, color="grey", linewidth=0.8, linestyle="--", label="1.10x budget")
    axis.set_xscale("log")
    axis.set_xlabel("tasks alive at once (create-and-gather)")
    axis.set_ylabel("wall time / baseline (median, min-max)")
    axis.set_title("Agent overhead against live tasks (pinned, interleaved rounds)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    out = RESULTS / "live-tasks.png"
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    """Plot every full (non-smoke) result file found (in the folder given, if any)."""
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    if folder == RESULTS:
        live_tasks()
    files = sorted(
        p for p in folder.glob("py*.json") if "smoke" not in p.name and "-" not in p.stem
    )
    if not files:
        sys.exit("no results: run bench/run.py first")
    data = [json.loads(path.read_text()) for path in files]
    figure, axes = plt.subplots(1, len(data), figsize=(7 * len(data), 4.8), squeeze=False)
    for axis, result in zip(axes[0], data, strict=True):
        workloads = list(result["ratios"])
        variants = list(result["ratios"][workloads[0]])
        width = 0.8 / len(variants)
        for index, variant in enumerate(variants):
            medians, low, high = [], [], []
            for workload in workloads:
                values = result["ratios"][workload][variant]
                median = statistics.median(values)
                medians.append(median)
                low.append(median - min(values))
                high.append(max(values) - median)
            positions = [
                w + (index - len(variants) / 2 + 0.5) * width for w in range(len(workloads))
            ]
            axis.bar(positions, medians, width, yerr=[low, high], label=variant, capsize=2)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_yscale("log")
        axis.set_xticks(range(len(workloads)), workloads)
        axis.set_ylabel("time / baseline (log scale)")
        axis.set_title(f"Python {result['python_full']} ({result['machine']})")
        axis.legend(fontsize=7, ncols=2)
    figure.tight_layout()
    out = folder / "overhead.png"
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
