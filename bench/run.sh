#!/usr/bin/env bash
# Regenerates the benchmark results, tables and plot: bench/results/.
# Usage: bash bench/run.sh [--smoke] [run.py options...]   PYTHONS="3.13.0" to choose.
set -euo pipefail
cd "$(dirname "$0")/.."
PYENV_ROOT="${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}"
PYTHONS="${PYTHONS:-3.11.7 3.13.0}"
for version in $PYTHONS; do
    venv=".venvs/bench-$version"
    if [ ! -x "$venv/bin/python" ]; then
        "$PYENV_ROOT/versions/$version/bin/python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q ".[bench]"
    "$venv/bin/python" bench/run.py "$@"
done
if [[ " $* " != *" --smoke "* ]]; then
    "$venv/bin/python" bench/plot.py
fi
