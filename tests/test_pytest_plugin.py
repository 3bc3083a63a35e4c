"""The pytest plugin, run on real test files with ``pytester`` in a subprocess.

Each test writes a small test module (plain ``asyncio.run``, pytest-asyncio or anyio)
and runs pytest on it in its own process, as a user would.
"""

from __future__ import annotations

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
        """,
        "--asyncio-agent",
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_app.py::test_count_exceeded - asyncio-agent: 1 task(s) lost*",
            "FAILED test_app.py::test_other_kind_still_fails*",
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
