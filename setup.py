"""Build of the optional C hot path; everything else is in pyproject.toml.

``agent/interp/_speedups.c`` becomes ``asyncio_agent.interp._speedups`` (the folder
``agent/`` is installed as the package ``asyncio_agent``). The extension is optional:
where it does not compile, or is not meant to (not CPython, not Linux, not 3.10-3.13,
a free-threaded build), the package installs without it and the agent runs its Python
code, the same records more slowly.
"""

import platform
import sys
import sysconfig

from setuptools import Extension, setup

extensions = []
if platform.python_implementation() == "CPython":
    # The frameless prelude that lets the agent see never-awaited coroutines while
    # CPython's own warning stays exactly as it is (agent/interp/unfinished.py). It
    # reads no internals: every CPython version and build.
    extensions.append(
        Extension("asyncio_agent.interp._prelude", ["agent/interp/_prelude.c"], optional=True)
    )
if (
    platform.python_implementation() == "CPython"
    and sys.platform.startswith("linux")  # task ages: CLOCK_MONOTONIC is time.monotonic()
    and (3, 10) <= sys.version_info[:2] <= (3, 13)  # the frame layouts it knows
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
):
    extensions.append(
        Extension("asyncio_agent.interp._speedups", ["agent/interp/_speedups.c"], optional=True)
    )

setup(ext_modules=extensions)
