"""Build of the optional C hot path; everything else is in pyproject.toml.

``agent/_speedups.c`` becomes ``asyncio_agent._speedups`` (the folder ``agent/`` is
installed as the package ``asyncio_agent``).

The extension is optional: where it does not compile (no compiler, another Python
implementation), the package installs without it and the agent runs its Python code.
"""

import platform

from setuptools import Extension, setup

extensions = []
if platform.python_implementation() == "CPython":
    extensions.append(Extension("asyncio_agent._speedups", ["agent/_speedups.c"], optional=True))
    # The frameless prelude that lets the agent see never-awaited coroutines while
    # CPython's own warning stays exactly as it is (agent/interp/unfinished.py).
    extensions.append(Extension("asyncio_agent._prelude", ["agent/_prelude.c"], optional=True))

setup(ext_modules=extensions)
