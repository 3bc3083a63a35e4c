"""The ``python -m asyncio_agent`` command line: parses arguments and hands over to one tool.

Owns the argument syntax of ``run``, ``report`` and ``doctor``. Imports a tool's module
only when that tool is chosen, so ``run`` starts the program with nothing extra loaded.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional

from ..config import FORMATS

_RUN_USAGE = (
    "python -m asyncio_agent run [--output FILE] [--format json|console] script.py [args...]\n"
    "       python -m asyncio_agent run [--output FILE] [--format json|console] -m module [args...]"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m asyncio_agent",
        description="asyncio-agent tools: run a program with the agent, read its events, "
        "check the set-up.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{run,report,doctor}")
    commands.required = True

    run = commands.add_parser(
        "run",
        usage=_RUN_USAGE,
        help="run a script or module with the agent switched on",
        description="Run a program as `python script.py` / `python -m module` would, with "
        "the agent on (no sitecustomize needed). Other settings come from ASYNCIO_AGENT_*.",
    )
    run.add_argument("--output", help="stderr, stdout or a file (JSON lines, appended)")
    run.add_argument("--format", choices=FORMATS, help="json (default) or console")
    run.add_argument("-m", dest="module", help="run a library module as a script")

    report = commands.add_parser(
        "report",
        help="summarize event files by creation site",
        description="Read agent event files (JSON lines, from any number of processes; "
        "'-' is stdin) and print the anomalies grouped by creation site.",
    )
    report.add_argument("files", nargs="+", help="event files (JSON lines)")
    report.add_argument(
        "--format", choices=("table", "json", "markdown"), default="table", dest="style"
    )

    doctor = commands.add_parser(
        "doctor",
        help="say whether and how the agent would run here",
        description="Activation, settings (and their warnings), loop types and Python "
        "features found, and where output and traces would go.",
    )
    doctor.add_argument("--format", choices=("text", "json"), default="text", dest="style")
    return parser


def _split_run(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Split ``run``'s own options from the program and its arguments.

    Everything from the script (or ``-m module``) on belongs to the program, options
    included, exactly as with ``python``.
    """
    index = 0
    while index < len(arguments):
        item = arguments[index]
        if item == "-m":
            return arguments[: index + 2], arguments[index + 2 :]
        if item == "--":
            return arguments[:index], arguments[index + 1 :]
        if item in ("--output", "--format"):
            index += 2
            continue
        if item.startswith("-") and item != "-":
            index += 1
            continue
        return arguments[:index], arguments[index:]
    return arguments, []


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one tool; returns the process exit code."""
    import sys

    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    program: list[str] = []
    if arguments and arguments[0] == "run":
        own, program = _split_run(arguments[1:])
        arguments = ["run", *own]
    options = parser.parse_args(arguments)

    if options.command == "run":
        from ..cli.run import run_program

        if options.module is None and not program:
            parser.error("run: give a script (or -m module) to run")
        script = None if options.module is not None else program[0]
        args = program if options.module is not None else program[1:]
        return run_program(
            script=script,
            module=options.module,
            args=args,
            output=options.output,
            format=options.format,
        )
    if options.command == "report":
        from ..cli.report import report_files

        return report_files(options.files, options.style)
    from ..cli.doctor import doctor

    return doctor(options.style)
