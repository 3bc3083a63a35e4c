"""The compiled hot path (``asyncio_agent._speedups``, built from ``agent/_speedups.c``).

Optional: the package installs without it where it does not compile, and
``ASYNCIO_AGENT_SPEEDUPS=0`` switches it off. Either way the agent runs the same
logic in Python (``SiteRecorder.record_task`` and the wrappers in asyncio_agent.hooks), only
slower per task.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

_loaded: Optional[ModuleType] = None
_why_not: Optional[str] = None


def compiled() -> Optional[ModuleType]:
    """``asyncio_agent._speedups`` if it was built for this Python, else None."""
    global _loaded, _why_not
    if _loaded is None and _why_not is None:
        try:
            _loaded = importlib.import_module("._speedups", __package__)
        except ImportError as error:
            _why_not = str(error) or type(error).__name__
    return _loaded


def status(enabled: bool = True) -> str:
    """One line for people (``doctor``): which hot path the agent uses, and why."""
    if compiled() is None:
        return f"Python (the compiled module is not available: {_why_not})"
    if not enabled:
        return "Python (ASYNCIO_AGENT_SPEEDUPS=0)"
    return "compiled (asyncio_agent._speedups)"
