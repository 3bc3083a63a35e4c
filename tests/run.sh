#!/usr/bin/env bash
# Runs the test suite on every supported Python (pyenv's 3.10-3.13), each in its own
# fresh virtualenv under .venvs/, and prints one closing "N passed, N failed" line.
# On PYTHON_PATH_PYTHONS (default: the oldest and the newest) the suite runs twice more:
# with ASYNCIO_AGENT_SPEEDUPS=0, the agent's Python hot path, which runs wherever its
# compiled one (agent/interp/_speedups.c) was not built; and with
# ASYNCIO_AGENT_INTERP_SHAPE=3.14, the agent behaving as on Python 3.14+ (no task
# registry it can hook or read, live tasks pending only, no compiled path), which
# cannot be installed here.
# Usage: bash tests/run.sh [pytest args...]      PYTHONS="3.12.1 3.13.0" to choose.
set -uo pipefail
cd "$(dirname "$0")/.."

PYENV_ROOT="${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}"
PYTHONS="${PYTHONS:-3.10.13 3.11.7 3.12.1 3.13.0}"
PYTHON_PATH_PYTHONS="${PYTHON_PATH_PYTHONS:-3.10.13 3.13.0}"
mkdir -p .venvs/reports
status=0

for version in $PYTHONS; do
    python="$PYENV_ROOT/versions/$version/bin/python"
    if [ ! -x "$python" ]; then
        echo "!! Python $version not found at $python" >&2
        status=1
        continue
    fi
    venv=".venvs/py$version"
    echo "=== Python $version"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv" || { status=1; continue; }
        "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    fi
    # uvloop is in the test extra; where it does not install, install the rest alone.
    if ! "$venv/bin/python" -m pip install -q ".[test]" 2>"$venv/pip.log"; then
        echo "(uvloop did not install on $version; its tests will skip)"
        "$venv/bin/python" -m pip install -q . pytest pytest-xdist pytest-asyncio anyio \
            || { status=1; continue; }
    fi
    # OpenTelemetry tests: SDK, exporters, auto-instrumentation and the rotel collector.
    # Where the collector (or anything else) does not install, those tests skip.
    if ! "$venv/bin/python" -m pip install -q ".[otel-test]" 2>>"$venv/pip.log"; then
        echo "(rotel did not install on $version; the collector tests will skip)"
        "$venv/bin/python" -m pip install -q ".[otlp]" opentelemetry-instrumentation \
            opentelemetry-distro 2>>"$venv/pip.log" \
            || echo "(OpenTelemetry did not install on $version; its tests will skip)"
    fi
    runs="$version"
    case " $PYTHON_PATH_PYTHONS " in
        *" $version "*) runs="$runs $version-python-path $version-shape-3.14" ;;
    esac
    for report in $runs; do
        setting=()
        case "$report" in
            *-python-path)
                echo "=== Python $version, the agent's Python hot path (ASYNCIO_AGENT_SPEEDUPS=0)"
                setting=(ASYNCIO_AGENT_SPEEDUPS=0) ;;
            *-shape-3.14)
                echo "=== Python $version, in the shape of 3.14 (ASYNCIO_AGENT_INTERP_SHAPE=3.14)"
                setting=(ASYNCIO_AGENT_INTERP_SHAPE=3.14) ;;
        esac
        # The pytest script, not `python -m pytest`: that would put the checkout first
        # on sys.path, and the tests would import its agent/ (without the compiled
        # module pip built) instead of the installed package.
        env "${setting[@]}" "$venv/bin/pytest" -n 2 -q \
            -p no:cacheprovider --junitxml=".venvs/reports/$report.xml" "$@"
        code=$?
        if [ "$code" -eq 5 ]; then
            echo "!! Python $version: pytest collected no tests" >&2
            status=1
        elif [ "$code" -ne 0 ]; then
            status=1
        fi
        REPORTS="${REPORTS:-} $report"
    done
done

"$PYENV_ROOT/versions/3.11.7/bin/python" - "${REPORTS:-}" <<'PY' || status=1
import sys, xml.etree.ElementTree as ET
from pathlib import Path
passed = failed = skipped = 0
for report in sys.argv[1].split():
    path = Path(".venvs/reports") / f"{report}.xml"
    if not path.exists():
        failed += 1
        continue
    for suite in ET.parse(path).getroot().iter("testsuite"):
        total, errors = int(suite.get("tests", 0)), int(suite.get("errors", 0))
        fails, skips = int(suite.get("failures", 0)), int(suite.get("skipped", 0))
        failed += fails + errors
        skipped += skips
        passed += total - fails - errors - skips
print(f"all runs ({sys.argv[1].strip()}):")
print(f"{passed} passed, {failed} failed, {skipped} skipped")
PY
exit $status
