"""``python -m asyncio_agent run``: a program run as ``python`` would, with the agent on.

Owns the ``__main__``/``sys.argv``/``sys.path`` set-up and the exit code. Installs the
agent before the program's first line, and leaves the program's own output untouched.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from types import TracebackType
from typing import Any, Optional

# runpy's frames are named "<frozen runpy>" on 3.11+, where it is a frozen module.
_RUNPY_FILES = frozenset({os.path.normcase(runpy.__file__), "<frozen runpy>"})
_PACKAGE_DIR = os.path.normcase(os.path.dirname(os.path.dirname(__file__))) + os.sep


_LAUNCHERS: set[str] = set()  # the console script, when it is what runs us


def _is_launcher(filename: str) -> bool:
    """Whether a frame of this file is runpy's or the agent's (the launcher's)."""
    name = os.path.normcase(filename)
    return name in _RUNPY_FILES or name.startswith(_PACKAGE_DIR) or name in _LAUNCHERS


def _program_traceback(tb: Optional[TracebackType]) -> Optional[TracebackType]:
    # The program's traceback starts at its own first frame, as under `python script.py`.
    while tb is not None and _is_launcher(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return tb


class _ProgramExceptHook:
    """``sys.excepthook`` for one exception that leaves ``python -m asyncio_agent run``:
    shows the program's traceback without the launcher's frames, as ``python`` would."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self, kind: Any, value: BaseException, tb: Optional[TracebackType]) -> None:
        sys.excepthook = self.original
        tb = _program_traceback(tb)
        self.original(kind, value.with_traceback(tb), tb)


def _install(output: Optional[str], format: Optional[str]) -> None:
    from .. import runtime
    from ..config import load_settings
    from ..sites import LAUNCHER_FILES

    # The console script (bin/asyncio-agent) runs below every frame of the program.
    launcher = sys.argv[0] if sys.argv else ""
    if launcher and not _is_launcher(launcher):
        LAUNCHER_FILES.add(launcher)
        _LAUNCHERS.add(os.path.normcase(launcher))

    # runpy's frames sit above every frame of the program: never part of its stacks.
    skip = load_settings(os.environ).skip_modules
    options: dict[str, Any] = {"skip_modules": (*skip, "runpy")}
    if output is not None:
        options["output"] = output
    if format is not None:
        options["format"] = format
    try:
        runtime.install(**options)
    except Exception as exc:  # the program runs regardless, as with sitecustomize
        from ..notices import warn_once

        warn_once("cli:run", f"could not start ({type(exc).__name__}: {exc}); running without it")


def run_program(
    *,
    script: Optional[str],
    module: Optional[str],
    args: list[str],
    output: Optional[str],
    format: Optional[str],
) -> int:
    """Install the agent, run ``script`` or ``module`` as ``__main__``; its exit code."""
    _install(output, format)
    try:
        if module is not None:
            # `python -m` puts the working directory first; `python -m asyncio_agent` already did.
            sys.argv = [module, *args]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            assert script is not None
            if not os.path.exists(script):
                sys.stderr.write(
                    f"{sys.executable}: can't open file {os.path.abspath(script)!r}: "
                    "[Errno 2] No such file or directory\n"
                )
                return 2
            sys.argv = [script, *args]
            # `python script.py` puts the script's folder first, not the working directory.
            sys.path[0] = os.path.dirname(os.path.realpath(script))
            if os.path.isfile(script) and not _is_zip(script):
                _run_source_file(script)
            else:  # a folder or zip file with a __main__.py
                runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except ImportError as exc:
        if module is not None and _program_traceback(exc.__traceback__) is None:
            # runpy could not find the module: say it as `python -m` does.
            sys.stderr.write(f"{sys.executable}: {exc}\n")
            return 1
        _print_uncaught(exc)
        return 1
    except KeyboardInterrupt:
        # Left to propagate: after an unhandled KeyboardInterrupt CPython itself ends
        # the process by SIGINT (a shell sees an interrupted program, not status 130).
        sys.excepthook = _ProgramExceptHook(sys.excepthook)
        raise
    except BaseException as exc:
        _print_uncaught(exc)
        return 1
    return 0


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _run_source_file(script: str) -> None:
    """Execute ``script`` as the ``__main__`` module, the way ``python script.py`` does.

    Not runpy.run_path: that sets ``sys.argv[0]`` to its own argument and restores the
    previous ``__main__`` afterwards, where Python keeps ``argv[0]`` as typed and the
    module for atexit handlers and pickling.
    """
    import importlib.machinery
    import types

    path = os.path.abspath(script)  # __file__ and code filenames are absolute since 3.9
    with open(path, "rb") as stream:
        source = stream.read()
    code = compile(source, path, "exec", dont_inherit=True)
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    module.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = module
    exec(code, module.__dict__)


def _print_uncaught(exc: BaseException) -> None:
    tb = _program_traceback(exc.__traceback__)
    try:
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
    except Exception:
        traceback.print_exception(type(exc), exc, tb)
