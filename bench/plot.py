"""Draws bench/results/overhead.png from the JSON results of ``bench/run.py``.

Owns the picture only: one panel per Python, one group of bars per workload, the
median ratio against the baseline with the min-max range as an error bar.

    python bench/plot.py                              # bench/results/overhead.png
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


def main() -> None:
    """Plot every full (non-smoke) result file found (in the folder given, if any)."""
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
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
