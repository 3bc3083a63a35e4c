"""Creation sites: which line of the application created a task, and its stack.

Owns the hot path run for every new task. It must stay tiny: a few frame steps, one
dict lookup, no string work, no allocation on a cache hit. Strings are built once per
distinct call site and cached.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, Optional

_getframe = sys._getframe
_monotonic = time.monotonic

# Module-name prefixes whose frames are never a creation site: asyncio itself, the
# agent, and the loop implementations that call back into asyncio.
INTERNAL_MODULES: tuple[str, ...] = ("asyncio", "agent", "uvloop")

MAX_SITES = 16_384
"""Distinct creation sites remembered; tasks from further sites get no site."""

SPAN_ATTR = "_asyncio_agent_span"
"""Attribute set on a task when a span probe is active and returned something."""

RECORD_ATTR = "_asyncio_agent_record"
"""Attribute set on each task: an int packing the site's index and the creation time.

Kept on the task itself because in a cyclic collection weak references are cleared
before finalizers run: a side table would already be empty when the report arrives.
An int, not a tuple: an object the garbage collector does not track, so the task's
attribute dict stays untracked too and the host's collections do not slow down.
"""

_TIME_BITS = 42  # milliseconds of time.monotonic(): 139 years
_TIME_MASK = (1 << _TIME_BITS) - 1
_MS = 0.001


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


# Every Site ever resolved, shared by all installations so that a record made before
# an uninstall/install cycle still decodes to its own site. Index 0: no site known.
_SITE_LIST: list[Optional[Site]] = [None]
_SITE_LIST_LOCK = threading.Lock()  # taken on a cache miss only, never in a finalizer


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
        # (id(site code), site offset, id(parent code), parent offset) -> entry:
        # [site code, parent code, site index, current record, record valid until].
        # The parent tells apart one helper called from two places.
        self._sites: dict[tuple[int, int, int, int], list[Any]] = {}
        self._site_list = _SITE_LIST
        self.span_probe: Optional[Callable[[], object]] = None
        """Set by a tracing integration: returns what to keep of the span current at
        task creation (stored as ``task._asyncio_agent_span``), or None. Must be cheap
        and must not keep the span or its context alive (ids only)."""

    def _is_internal(self, frame: FrameType) -> bool:
        code = frame.f_code
        known = self._internal.get(id(code))
        if known is not None and known[0] is code:
            return known[1]
        module = frame.f_globals.get("__name__")
        internal = isinstance(module, str) and any(
            module == prefix or module.startswith(prefix + ".") for prefix in self._prefixes
        )
        if len(self._internal) < MAX_SITES * 4:
            self._internal[id(code)] = (code, internal)
        return internal

    def record(self, skip: int) -> int:
        """The record for a task created by the caller ``skip`` frames above this call.

        Called once per created task. Tasks created at one site within the same
        millisecond share one record object, so a cache hit allocates nothing.
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
        now = _monotonic()
        if frame is None:
            return int(now * 1000) & _TIME_MASK
        parent = frame.f_back
        if parent is None:
            parent_code = None
            key = (id(code), frame.f_lasti, 0, -1)
        else:
            parent_code = parent.f_code
            key = (id(code), frame.f_lasti, id(parent_code), parent.f_lasti)
        entry = self._sites.get(key)
        if entry is not None and entry[0] is code and entry[1] is parent_code:
            if now < entry[4]:
                record: int = entry[3]
                return record
            index = entry[2]
        else:
            entry = None
            index = self._new_site(frame)
        millis = int(now * 1000)
        record = (index << _TIME_BITS) | (millis & _TIME_MASK)
        if entry is not None:
            entry[3] = record
            entry[4] = (millis + 1) * _MS
        elif index and len(self._sites) < MAX_SITES:
            self._sites[key] = [code, parent_code, index, record, (millis + 1) * _MS]
        return record

    def _new_site(self, frame: FrameType) -> int:
        if len(self._site_list) > MAX_SITES:
            return 0
        site = self._resolve(frame)
        with _SITE_LIST_LOCK:  # append and index must agree across threads
            self._site_list.append(site)
            return len(self._site_list) - 1

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

    def decode(self, record: object) -> tuple[Optional[Site], Optional[float]]:
        """The site and ``time.monotonic()`` creation time packed in ``record``.

        Safe in a finalizer: two integer operations and a list index.
        """
        if type(record) is not int:
            return None, None
        index = record >> _TIME_BITS
        site = self._site_list[index] if 0 < index < len(self._site_list) else None
        return site, (record & _TIME_MASK) * _MS

    def site_count(self) -> int:
        """How many distinct sites are known (at most :data:`MAX_SITES`)."""
        return len(self._site_list) - 1
