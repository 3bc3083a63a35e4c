"""Creation sites: which line of the application created a task, and its stack.

Owns the hot path run for every new task. It must stay tiny: two frame steps, one
dict lookup, no string work. Strings are built once per distinct call site and cached.
"""

from __future__ import annotations

import sys
import time
from types import CodeType, FrameType
from typing import Any, Optional

_getframe = sys._getframe
_monotonic = time.monotonic

# Module-name prefixes whose frames are never a creation site: asyncio itself, the
# agent, and the loop implementations that call back into asyncio.
INTERNAL_MODULES: tuple[str, ...] = ("asyncio", "agent", "uvloop")

_MAX_SITES = 4096
_SHARE_RECORD_S = 0.001

Record = tuple[Optional["Site"], float]

RECORD_ATTR = "_asyncio_agent_record"
"""Attribute set on each task: ``(Site or None, creation time from time.monotonic())``.

Kept on the task itself because in a cyclic collection weak references are cleared
before finalizers run: a side table would already be empty when the report arrives.
"""


class Site:
    """Where a task was created: the first application frame and a short stack."""

    __slots__ = ("filename", "function", "lineno", "stack")

    def __init__(self, filename: str, lineno: int, function: str, stack: tuple[str, ...]):
        self.filename = filename
        self.lineno = lineno
        self.function = function
        self.stack = stack
        """``"file:line in function"`` strings, outermost first, the site last."""

    def __repr__(self) -> str:
        return f"Site({self.filename}:{self.lineno} in {self.function})"


class SiteRecorder:
    """Finds and caches creation sites, skipping asyncio's and the agent's frames."""

    def __init__(self, stack_depth: int, skip_modules: tuple[str, ...] = ()) -> None:
        self.stack_depth = stack_depth
        self._prefixes = tuple(INTERNAL_MODULES) + tuple(skip_modules)
        # Both caches are keyed by id(code), never by the code object: hashing a code
        # object hashes its bytecode and constants (over 100 ns) on every lookup. The
        # code object is kept in the value and compared by identity, so a recycled id
        # is never mistaken for the code it replaced.
        # id(code) -> (code, is it internal: asyncio, the agent, or configured?)
        self._internal: dict[int, tuple[CodeType, bool]] = {}
        # (id(site code), site offset, id(parent code), parent offset). The parent
        # tells apart one helper called from two places.
        #   -> [site code, parent code, Site, the record tasks share right now]
        self._sites: dict[tuple[int, int, int, int], list[Any]] = {}

    def _is_internal(self, frame: FrameType) -> bool:
        code = frame.f_code
        known = self._internal.get(id(code))
        if known is not None and known[0] is code:
            return known[1]
        module = frame.f_globals.get("__name__")
        internal = isinstance(module, str) and any(
            module == prefix or module.startswith(prefix + ".") for prefix in self._prefixes
        )
        if len(self._internal) < _MAX_SITES * 4:
            self._internal[id(code)] = (code, internal)
        return internal

    def record(self, skip: int) -> Record:
        """The record for a task created by the caller ``skip`` frames above this call.

        Called once per created task, so it is written for speed: no string work, no
        allocation on a cache hit. Tasks created at one site within the same
        millisecond share one record tuple; ``task_age_s`` is exact to that millisecond.
        """
        frame: Optional[FrameType] = _getframe(skip + 1)
        internal = self._internal
        while frame is not None:
            code = frame.f_code
            known = internal.get(id(code))
            if known is None or known[0] is not code:
                if not self._is_internal(frame):
                    break
            elif not known[1]:
                break
            frame = frame.f_back
        if frame is None:
            return (None, _monotonic())
        code = frame.f_code
        parent = frame.f_back
        if parent is None:
            parent_code = None
            key = (id(code), frame.f_lasti, 0, -1)
        else:
            parent_code = parent.f_code
            key = (id(code), frame.f_lasti, id(parent_code), parent.f_lasti)
        now = _monotonic()
        entry = self._sites.get(key)
        if entry is not None and entry[0] is code and entry[1] is parent_code:
            shared: Record = entry[3]
            if now - shared[1] < _SHARE_RECORD_S:
                return shared
            shared = (entry[2], now)
            entry[3] = shared
            return shared
        site = self._resolve(frame)
        shared = (site, now)
        if len(self._sites) < _MAX_SITES or entry is not None:
            self._sites[key] = [code, parent_code, site, shared]
        return shared

    def _resolve(self, frame: FrameType) -> Site:
        code = frame.f_code
        function = getattr(code, "co_qualname", code.co_name)
        lines: list[str] = []
        walker: Optional[FrameType] = frame
        while walker is not None and len(lines) < self.stack_depth:
            if walker is frame or not self._is_internal(walker):
                wcode = walker.f_code
                wname = getattr(wcode, "co_qualname", wcode.co_name)
                lines.append(f"{wcode.co_filename}:{walker.f_lineno} in {wname}")
            walker = walker.f_back
        lines.reverse()
        return Site(code.co_filename, frame.f_lineno, function, tuple(lines))

    def site_count(self) -> int:
        """How many distinct sites are cached (bounded)."""
        return len(self._sites)
