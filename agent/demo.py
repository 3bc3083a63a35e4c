"""``python -m asyncio_agent.demo``: watch the agent catch both kinds of lost work.

Writes a small, unmodified asyncio service into a temporary folder, runs it twice in a
subprocess (without and with ``ASYNCIO_AGENT=1``) and shows what each run tells you.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

APP = """\
import asyncio
import gc


async def refresh_cache():
    await asyncio.Event().wait()  # waits for a signal that never comes


async def send_welcome_email(user):
    await asyncio.sleep(0)
    raise ConnectionError(f"SMTP server refused mail for {user}")


def schedule_refresh():
    asyncio.create_task(refresh_cache())  # no reference kept: the loop holds tasks weakly


async def handle_signup(user):
    schedule_refresh()
    asyncio.create_task(send_welcome_email(user))  # fire and forget: nobody awaits it
    await asyncio.sleep(0.05)
    return f"welcome, {user}"


async def main():
    print(await handle_signup("ada"))
    gc.collect()  # sooner or later the garbage collector runs in a real service
    await asyncio.sleep(0)


asyncio.run(main())
"""

# The same two lines a user would put in a sitecustomize.py or a .pth file.
SITECUSTOMIZE = "import asyncio_agent.autoinstall\n"


def _run(folder: str, agent_on: bool, output_format: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCIO_AGENT")}
    env["PYTHONPATH"] = folder + os.pathsep + env.get("PYTHONPATH", "")
    if agent_on:
        env["ASYNCIO_AGENT"] = "1"
        env["ASYNCIO_AGENT_OUTPUT"] = "stdout"
        env["ASYNCIO_AGENT_FORMAT"] = output_format
    env["PYTHONUNBUFFERED"] = "1"  # keep the program's prints and the events in order
    return subprocess.run(
        [sys.executable, os.path.join(folder, "app.py")],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _section(title: str, text: str) -> None:
    print(f"\n--- {title} ---")
    print(text.rstrip() or "(nothing)")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns 0 when the agent caught both anomalies."""
    parser = argparse.ArgumentParser(prog="python -m asyncio_agent.demo", description=__doc__)
    parser.add_argument(
        "--format", choices=("console", "json"), default="console", help="event format"
    )
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="asyncio-agent-demo-") as folder:
        with open(os.path.join(folder, "app.py"), "w", encoding="utf-8") as file:
            file.write(APP)
        with open(os.path.join(folder, "sitecustomize.py"), "w", encoding="utf-8") as file:
            file.write(SITECUSTOMIZE)
        print("asyncio-agent demo: a signup handler that loses two tasks.\n")
        for number, line in enumerate(APP.splitlines(), start=1):
            print(f"    {number:2} | {line}")

        plain = _run(folder, agent_on=False, output_format=options.format)
        print("=" * 72)
        print("1) python app.py                    (what you get today)")
        _section("stdout", plain.stdout)
        _section("stderr: CPython's log, no word of who created the tasks", plain.stderr)

        watched = _run(folder, agent_on=True, output_format=options.format)
        print("=" * 72)
        print("2) ASYNCIO_AGENT=1 ASYNCIO_AGENT_OUTPUT=stdout ASYNCIO_AGENT_FORMAT=console \\")
        print(
            "   PYTHONPATH=<folder with a sitecustomize.py: 'import asyncio_agent.autoinstall'> \\"
        )
        print("   python app.py                    (same code, agent on)")
        _section("stderr: CPython's log, unchanged", watched.stderr)
        _section("stdout: the program's output and the agent's events", watched.stdout)

    caught = [
        name
        for name in ("asyncio.task.destroyed_pending", "asyncio.task.exception_unretrieved")
        if name in watched.stdout
    ]
    print("=" * 72)
    print(f"caught {len(caught)} of 2 anomalies: {', '.join(caught) or 'none'}")
    return 0 if len(caught) == 2 and watched.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
