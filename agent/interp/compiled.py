"""The compiled modules: the hot path (``_speedups.c``) and the frameless prelude.

Owns loading it and deciding whether it may run. It reads CPython's frame records, whose
layout is private to each CPython version, so before it is used its walk is checked
against ``sys._getframe`` on a known chain of calls; on any difference the Python path
runs and one notice says why. It is optional: the package installs without it where it
does not compile, and ``ASYNCIO_AGENT_SPEEDUPS=0`` switches it off. Either way the agent
runs the same logic in Python (``SiteRecorder.record_task`` and the wrappers), slower.
"""

from __future__ import annotations

import importlib
import sys
from types import CodeType, FrameType, ModuleType
from typing import Any, Optional

from ..notices import warn_once
from .shape import simulated

_loaded: Optional[ModuleType] = None
_why_not: Optional[str] = None
_CHECK_DEPTH = 4


def compiled() -> Optional[ModuleType]:
    """The compiled module if it was built for this Python and its frame walk checks
    out here, else None."""
    global _loaded, _why_not
    if _loaded is None and _why_not is None:
        if simulated() is not None:
            _why_not = f"not used in the simulated {simulated()} shape"
            return None
        try:
            module = importlib.import_module("._speedups", __package__)
        except ImportError as error:
            _why_not = str(error) or type(error).__name__
            return None
        mismatch = _walk_differs(module)
        if mismatch:
            _why_not = f"its frame walk does not match this interpreter ({mismatch})"
            warn_once("speedups-check", f"the compiled hot path is not used: {_why_not}")
            return None
        _loaded = module
    return _loaded


def _walk_differs(module: ModuleType) -> str:
    """What differs between the compiled walk and ``sys._getframe``'s, or ""."""
    try:
        return _outer(module)
    except Exception as error:
        return f"{type(error).__name__}: {error}"


def _outer(module: ModuleType) -> str:
    return _middle(module)


def _middle(module: ModuleType) -> str:
    return _inner(module)


def _inner(module: ModuleType) -> str:
    # Both walks from this frame: first the compiled one, then sys._getframe's, each
    # describing the same frames at the same instructions (the call of each walk is
    # one instruction apart only in this frame, which is compared by code alone).
    chain = module.frame_chain(_CHECK_DEPTH)
    walker: Optional[FrameType] = sys._getframe()
    expected: list[tuple[CodeType, int]] = []
    while walker is not None and len(expected) < _CHECK_DEPTH:
        expected.append((walker.f_code, walker.f_lasti))
        walker = walker.f_back
    if len(chain) != len(expected):
        return f"{len(chain)} frames, not {len(expected)}"
    if chain[0][0] is not expected[0][0]:
        return "the current frame's code differs"
    for got, want in zip(chain[1:], expected[1:], strict=True):
        if got[0] is not want[0] or got[1] != want[1]:
            return f"{getattr(want[0], 'co_name', '?')} at {got[1]}, not {want[1]}"
    return ""


def status(enabled: bool = True) -> str:
    """One line for people (``doctor``): which hot path the agent uses, and why."""
    if compiled() is None:
        return f"Python (the compiled module is not available: {_why_not})"
    if not enabled:
        return "Python (ASYNCIO_AGENT_SPEEDUPS=0)"
    return "compiled (asyncio_agent.interp._speedups)"


def prelude_type() -> Any:
    """``Prelude`` of the compiled ``asyncio_agent.interp._prelude`` (a callable that runs
    a prelude, then its target, adding no frame: agent.interp.unfinished), or None."""
    try:
        return importlib.import_module("._prelude", __package__).Prelude
    except Exception:
        return None
