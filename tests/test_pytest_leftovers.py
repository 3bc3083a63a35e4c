"""The pytest plugin's left-over mode (``--asyncio-agent-pending``) and its
never-awaited coroutines, run on real test files with ``pytester`` in a subprocess:
plain ``asyncio.run``, a loop of the test's own, pytest-asyncio with function-,
module- and session-scoped loops, and anyio's plugin.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""

HELPERS = """
import asyncio
import pytest

keep = []

async def heartbeat():
    while True:
        await asyncio.sleep(10)  # AWAITING
"""

LEFT_BEHIND = (
    HELPERS
    + """
def test_asyncio_run_cancels_it():
    async def main():
        asyncio.create_task(heartbeat())  # SITE-RUN
        await asyncio.sleep(0)
    asyncio.run(main())

def test_own_loop_leaves_it_pending():
    loop = asyncio.new_event_loop()
    async def main():
        keep.append(asyncio.create_task(heartbeat()))
        await asyncio.sleep(0)
    loop.run_until_complete(main())

@pytest.mark.asyncio
async def test_pytest_asyncio_function_loop():
    asyncio.create_task(heartbeat())
    await asyncio.sleep(0)

@pytest.mark.asyncio
async def test_cancels_and_awaits_its_task():
    task = asyncio.create_task(heartbeat())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

def test_finished_tasks_are_fine():
    async def main():
        await asyncio.gather(*[asyncio.create_task(asyncio.sleep(0)) for _ in range(3)])
    asyncio.run(main())

@pytest.mark.asyncio_agent_allow(kind="left_pending", coroutine="heart*")
def test_allowed():
    async def main():
        asyncio.create_task(heartbeat())
        await asyncio.sleep(0)
    asyncio.run(main())
"""
)


def _run(pytester: pytest.Pytester, files: dict[str, str], *args: str) -> pytest.RunResult:
    pytester.makeini(INI)
    pytester.makepyfile(**files)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def _line(source: str, marker: str) -> int:
    lines = source.strip("\n").splitlines()
    return next(number for number, line in enumerate(lines, 1) if marker in line)


def test_left_behind_tasks_fail_their_test_with_site_and_await_chain(
    pytester: pytest.Pytester,
) -> None:
    result = _run(pytester, {"test_app": LEFT_BEHIND}, "--asyncio-agent-pending=fail")
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_app.py::test_asyncio_run_cancels_it - asyncio-agent*",
            "FAILED test_app.py::test_own_loop_leaves_it_pending - *",
            "FAILED test_app.py::test_pytest_asyncio_function_loop - *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*asyncio.task.left_pending: task 'Task-*' (coroutine heartbeat) cancelled only "
            "by its loop's shutdown*",
            f"*created at *test_app.py:{_line(LEFT_BEHIND, '# SITE-RUN')} in *main",
            "*awaiting (outermost first):",
            f"*test_app.py:{_line(LEFT_BEHIND, '# AWAITING')} in heartbeat",
            "*-> Future",
            "*@pytest.mark.asyncio_agent_allow(kind='left_pending', coroutine='heartbeat')",
        ]
    )
    result.stdout.fnmatch_lines(["*(coroutine heartbeat) still pending at teardown*"])


def test_off_by_default_and_warn_mode_and_ini(pytester: pytest.Pytester) -> None:
    _run(pytester, {"test_app": LEFT_BEHIND}).assert_outcomes(passed=6)
    warned = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--asyncio-agent-pending=warn")
    warned.assert_outcomes(passed=6, warnings=3)
    warned.stdout.fnmatch_lines(["*PytestWarning: asyncio-agent: 1 task(s) left behind*"])
    pytester.makeini(INI + "asyncio_agent_pending = fail\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=3, failed=3)


def test_blame_is_per_test_with_module_and_session_scoped_loops(
    pytester: pytest.Pytester,
) -> None:
    module = (
        HELPERS
        + """
@pytest_asyncio.fixture(scope="module", loop_scope="{scope}")
async def server():
    # A module-scoped async fixture: its task is its own, never a test's.
    task = asyncio.create_task(heartbeat())  # FIXTURE-SITE
    yield task

@pytest.mark.asyncio(loop_scope="{scope}")
async def test_first_leaves_one(server):
    keep.append(asyncio.create_task(heartbeat()))

@pytest.mark.asyncio(loop_scope="{scope}")
async def test_second_is_clean(server):
    await asyncio.sleep(0)

@pytest.mark.asyncio(loop_scope="{scope}")
async def test_third_is_clean():
    await asyncio.sleep(0)
"""
    )
    module = module.replace("import pytest\n", "import pytest\nimport pytest_asyncio\n", 1)
    files = {
        "test_module_loop": module.replace("{scope}", "module"),
        "test_session_loop": module.replace("{scope}", "session"),
    }
    result = _run(pytester, files, "--asyncio-agent-pending=fail", "-v")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*test_module_loop.py::test_first_leaves_one FAILED*",
            "*test_module_loop.py::test_second_is_clean PASSED*",
            "*test_module_loop.py::test_third_is_clean PASSED*",
            "*test_session_loop.py::test_first_leaves_one FAILED*",
            "*test_session_loop.py::test_second_is_clean PASSED*",
            "*test_session_loop.py::test_third_is_clean PASSED*",
        ]
    )
    # The fixture's tasks are shown apart, cancelled when their loop shut down.
    result.stdout.fnmatch_lines(
        [
            "*asyncio-agent: tasks left behind outside tests*",
            "*left behind outside tests (by fixtures of a wider scope)*",
        ]
    )
    assert "still pending at teardown" in result.stdout.str()


def test_anyio_plugin_runner_task_is_nobodys(pytester: pytest.Pytester) -> None:
    source = (
        HELPERS
        + """
@pytest.fixture
def anyio_backend():
    return "asyncio"

@pytest.mark.anyio
async def test_leaves_one():
    asyncio.get_running_loop().create_task(heartbeat())
    await asyncio.sleep(0)

@pytest.mark.anyio
async def test_clean():
    await asyncio.sleep(0)

@pytest.mark.anyio
async def test_clean_too():
    await asyncio.sleep(0)
"""
    )
    result = _run(pytester, {"test_app": source}, "--asyncio-agent-pending=fail", "-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines_random(
        ["*test_leaves_one FAILED*", "*test_clean PASSED*", "*test_clean_too PASSED*"]
    )
    assert "tasks left behind outside tests" not in result.stdout.str()


def test_never_awaited_coroutine_fails_its_test_unless_allowed(
    pytester: pytest.Pytester,
) -> None:
    source = """
import pytest

async def fetch():
    pass

def test_forgets_await():
    fetch()  # FORGOT

@pytest.mark.asyncio_agent_allow(kind="never_awaited", coroutine="fetch")
def test_allowed():
    fetch()

def test_clean():
    pass
"""
    result = _run(pytester, {"test_app": source}, "--asyncio-agent")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*asyncio-agent: 1 coroutine(s) never awaited during this test",
            "*asyncio.coroutine.never_awaited: coroutine 'fetch' was never awaited",
            "*created at: unknown (set ASYNCIO_AGENT_COROUTINE_ORIGIN=8 to record it)",
            f"*collected at *test_app.py:{_line(source, '# FORGOT')} in test_forgets_await",
            "*@pytest.mark.asyncio_agent_allow(kind='never_awaited', coroutine='fetch')",
            "FAILED test_app.py::test_forgets_await*",
        ]
    )


def test_a_run_interrupted_by_a_base_exception_says_so(pytester: pytest.Pytester) -> None:
    source = """
import asyncio
import pytest

async def crash():
    raise SystemExit(3)

def test_interrupted():
    async def main():
        asyncio.create_task(crash())
        await asyncio.sleep(10)
    with pytest.raises(SystemExit):
        asyncio.run(main())
"""
    result = _run(pytester, {"test_app": source}, "--asyncio-agent-pending=fail")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*(coroutine test_interrupted.<locals>.main) cancelled only by its loop's shutdown "
            "(the run was interrupted by SystemExit)*",
        ]
    )
