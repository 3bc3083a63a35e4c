"""One-line warnings from the agent to the person running the program.

Owns the ``asyncio-agent: warning: ...`` lines on stderr. Never raises, and never
goes through :mod:`warnings` (``-W error`` would turn a bad setting into a crash).
"""

from __future__ import annotations

import contextlib
import os
import sys

_already_said: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Write ``message`` to stderr once per ``key`` for the life of the process."""
    if key in _already_said:
        return
    _already_said.add(key)
    line = f"asyncio-agent: warning: {message}\n"
    try:
        stream = sys.stderr
        if stream is not None:
            stream.write(line)
            stream.flush()
            return
    except Exception:
        pass
    with contextlib.suppress(Exception):
        os.write(2, line.encode("utf-8", "replace"))
