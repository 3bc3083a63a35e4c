"""The pytest plugin, run on real test files with ``pytester`` in a subprocess.

Each test writes a small test module (plain ``asyncio.run``, pytest-asyncio or anyio)
and runs pytest on it in its own process, as a user would.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""

LEAKY_AND_CLEAN = """
import asyncio
import pytest

async def boom():
    raise ValueError("lost work")

def test_loses_a_task():
    async def main():
        asyncio.create_task(boom())  # SITE
        await asyncio.sleep(0.01)
    asyncio.run(main())

def test_awaits_its_task():
    async def main():
        with pytest.raises(ValueError):
            await asyncio.create_task(boom())
    asyncio.run(main())
"""


def _line(source: str, marker: str) -> int:
    """Line of ``marker`` in the file pytester writes (it strips the first newline)."""
    lines = source.strip("\n").splitlines()
    return next(number for number, line in enumerate(lines, 1) if marker in line)


def _run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makeini(INI)
    pytester.makepyfile(test_app=source)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_plugin_does_nothing_unless_asked(pytester: pytest.Pytester) -> None:
    result = _run(pytester, LEAKY_AND_CLEAN)
    result.assert_outcomes(passed=2)


def test_lost_task_fails_its_test_with_creation_site_and_traceback(
    pytester: pytest.Pytester,
) -> None:
    result = _run(pytester, LEAKY_AND_CLEAN, "--asyncio-agent")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*asyncio-agent: 1 task(s) lost during this test*",
            "*asyncio.task.exception_unretrieved: task 'Task-*' (coroutine boom)*",
            # (3.10 has no qualified names for code: "main" there)
            f"*created at *test_app.py:{_line(LEAKY_AND_CLEAN, '# SITE')} in *main",
            "*ValueError: lost work",
            "*@pytest.mark.asyncio_agent_allow(kind='exception_unretrieved', coroutine='boom')",
            "FAILED test_app.py::test_loses_a_task*",
        ]
    )
    assert "test_awaits_its_task FAILED" not in result.stdout.str()


def test_error_and_warn_modes(pytester: pytest.Pytester) -> None:
    errors = _run(pytester, LEAKY_AND_CLEAN, "--asyncio-agent", "--asyncio-agent-mode=error")
    errors.assert_outcomes(passed=2, errors=1)
    errors.stdout.fnmatch_lines(["ERROR test_app.py::test_loses_a_task*"])
    warns = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--asyncio-agent", "--asyncio-agent-mode=warn"
    )
    warns.assert_outcomes(passed=2, warnings=1)
    warns.stdout.fnmatch_lines(["*PytestWarning: asyncio-agent: 1 task(s) lost*"])


def test_ini_option_switches_it_on(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI + "asyncio_agent = true\n")
    pytester.makepyfile(test_app=LEAKY_AND_CLEAN)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, failed=1)


def test_allow_marker_accepts_declared_losses_only(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import asyncio, gc
        import pytest

        async def boom():
            raise ValueError("expected")

        async def forever():
            await asyncio.get_running_loop().create_future()

        def lose(*functions):
            async def main():
                for function in functions:
                    asyncio.create_task(function())
                await asyncio.sleep(0.01)
                gc.collect()
            asyncio.run(main())

        @pytest.mark.asyncio_agent_allow(kind="exception_unretrieved", coroutine="bo*")
        def test_allowed_by_kind_and_glob():
            lose(boom, boom)

        @pytest.mark.asyncio_agent_allow("destroyed_pending", count=1)
        def test_count_exceeded():
            lose(forever, forever)

        @pytest.mark.asyncio_agent_allow(kind="destroyed_pending")
        def test_other_kind_still_fails():
            lose(boom)

        @pytest.mark.asyncio_agent_allow(coroutine="other*")
        def test_other_coroutine_still_fails():
            lose(boom)

        @pytest.mark.asyncio_agent_allow(kind="exception_unretrieved", coroutine="boom", count=2)
        def test_all_three_filters_together():
            lose(boom, boom)
        """,
        "--asyncio-agent",
    )
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_app.py::test_count_exceeded - asyncio-agent: 1 task(s) lost*",
            "FAILED test_app.py::test_other_kind_still_fails*",
            "FAILED test_app.py::test_other_coroutine_still_fails*",
        ]
    )


def test_leak_is_blamed_on_the_test_that_caused_it(pytester: pytest.Pytester) -> None:
    # The lost task is cyclic garbage: nothing collects it until the plugin's teardown gc.
    result = _run(
        pytester,
        """
        import asyncio, gc

        gc.disable()

        async def forever():
            await asyncio.get_running_loop().create_future()

        def test_first_loses_one():
            async def main():
                asyncio.create_task(forever())
                await asyncio.sleep(0)
            loop = asyncio.new_event_loop()
            loop.run_until_complete(main())

        def test_second_is_clean():
            assert True
        """,
        "--asyncio-agent",
        "-v",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines_random(
        ["*test_first_loses_one FAILED*", "*test_second_is_clean PASSED*"]
    )


def test_works_with_pytest_asyncio(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import asyncio, gc
        import pytest

        async def boom():
            raise ValueError("lost in pytest-asyncio")

        async def forever():
            await asyncio.get_running_loop().create_future()

        @pytest.mark.asyncio
        async def test_unretrieved():
            asyncio.create_task(boom())
            await asyncio.sleep(0.01)

        @pytest.mark.asyncio
        async def test_destroyed_pending():
            asyncio.create_task(forever())
            await asyncio.sleep(0)
            gc.collect()

        @pytest.mark.asyncio
        async def test_clean():
            await asyncio.sleep(0)
        """,
        "--asyncio-agent",
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*ValueError: lost in pytest-asyncio",
            "*asyncio.task.destroyed_pending: task 'Task-*' (coroutine forever)*",
        ]
    )


def test_works_with_anyio(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
        import asyncio
        import pytest

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        async def boom():
            raise ValueError("lost in anyio")

        @pytest.mark.anyio
        async def test_unretrieved():
            asyncio.get_running_loop().create_task(boom())
            await asyncio.sleep(0.01)

        @pytest.mark.anyio
        async def test_clean():
            await asyncio.sleep(0)
        """,
        "--asyncio-agent",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*ValueError: lost in anyio"])


# -- pytest with warnings as errors, the agent switched on before pytest starts --------

STRICT_INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
"""
STRICT_INI_WITHOUT_PLUGINS = STRICT_INI.replace(
    "asyncio_default_fixture_loop_scope = function\n", ""
)


def _switched_on(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, route: str
) -> list[str]:
    """Switch the agent on for pytest's process as a user would; the command to run."""
    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("ASYNCIO_AGENT", "1")
    monkeypatch.setenv("ASYNCIO_AGENT_OUTPUT", str(pytester.path / "events.jsonl"))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    command = [sys.executable, "-m", "pytest"]
    if route == "sitecustomize":
        monkeypatch.setenv("PYTHONPATH", str(repo / "sitecustomize_example"))
    elif route == "pth":
        # A .pth line (or the user's own sitecustomize) with the autoinstall import.
        site = pytester.mkdir("user_site")
        (site / "sitecustomize.py").write_text("import asyncio_agent.autoinstall\n")
        monkeypatch.setenv("PYTHONPATH", str(site))
    else:  # opentelemetry-instrument loads the agent through its instrumentor entry point
        instrument = Path(sys.executable).parent / "opentelemetry-instrument"
        if not instrument.exists():
            pytest.skip("needs opentelemetry-instrumentation (the otel-test extra)")
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
        command = [str(instrument), *command]
    return command


@pytest.mark.parametrize("route", ["sitecustomize", "pth", "opentelemetry-instrument"])
@pytest.mark.parametrize(
    "plugin", ["autoloaded", "disabled with -p no:", "autoload disabled", "asked for"]
)
def test_pytest_with_warnings_as_errors_starts_whichever_way_the_agent_is_on(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, route: str, plugin: str
) -> None:
    # pytest marks the packages of every distribution with a pytest11 entry point for
    # assertion rewriting, and warns when one is already imported: the start-up hook
    # had imported asyncio_agent, so `filterwarnings = error` ended pytest at start-up.
    command = _switched_on(pytester, monkeypatch, route)
    ini = STRICT_INI
    args = ["-p", "no:cacheprovider"]
    if plugin == "disabled with -p no:":
        args += ["-p", "no:asyncio_agent"]
    elif plugin == "autoload disabled":
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        ini = STRICT_INI_WITHOUT_PLUGINS  # pytest-asyncio's option would be unknown
    elif plugin == "asked for":
        args += ["--asyncio-agent"]
    pytester.makeini(ini)
    pytester.makepyfile(test_app=LEAKY_AND_CLEAN)
    result = pytester.run(*command, *args, timeout=120)
    output = result.stdout.str() + result.stderr.str()
    assert "Warning" not in output, output
    if plugin == "asked for":
        result.assert_outcomes(passed=1, failed=1)
        site = f"test_app.py:{_line(LEAKY_AND_CLEAN, '# SITE')} in "
        assert (
            site + ("main" if sys.version_info < (3, 11) else "test_loses_a_task.<locals>.main")
            in output
        )
    else:
        result.assert_outcomes(passed=2)


def test_plugin_asked_for_by_name_when_autoload_is_disabled(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = _switched_on(pytester, monkeypatch, "sitecustomize")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeini(STRICT_INI_WITHOUT_PLUGINS)
    pytester.makepyfile(test_app=LEAKY_AND_CLEAN)
    result = pytester.run(
        *command,
        "-p",
        "no:cacheprovider",
        "-p",
        "asyncio_agent.pytest_plugin",
        "--asyncio-agent",
        timeout=120,
    )
    assert "Warning" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1, failed=1)


BLOCKING = """
import asyncio, time
import pytest

async def render():
    time.sleep(0.6)  # BLOCK

def test_blocks_its_loop():
    async def main():
        await asyncio.create_task(render())  # SITE
    asyncio.run(main())

@pytest.mark.asyncio_agent_allow(kind="blocked")
def test_blocks_on_purpose():
    asyncio.run(render())

def test_never_blocks():
    async def main():
        await asyncio.sleep(0.3)
    asyncio.run(main())
"""


def test_block_limit_fails_a_test_that_blocks_its_loop_with_the_blocking_line(
    pytester: pytest.Pytester,
) -> None:
    plain = _run(pytester, BLOCKING, "--asyncio-agent")
    plain.assert_outcomes(passed=3)  # opt-in: without a limit, blocking fails nothing
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--asyncio-agent", "--asyncio-agent-block-ms=200"
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*asyncio-agent: the event loop was blocked 1 time(s) for longer than 200 ms*",
            "*blocked for * s in task 'Task-*' (coroutine render)",
            f"*test_app.py:{_line(BLOCKING, '# BLOCK')} in render",
            f"*task created at *test_app.py:{_line(BLOCKING, '# SITE')} in *main",
            "FAILED test_app.py::test_blocks_its_loop*",
        ]
    )


def test_block_limit_from_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI + "asyncio_agent = true\nasyncio_agent_block_ms = 200\n")
    pytester.makepyfile(test_app=BLOCKING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
