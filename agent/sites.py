"""Creation sites: which line of the application created a task, and its stack.

Owns the hot path run for every new task. It must stay tiny: a few frame steps, one
dict lookup, one clock read, one write to the record table (asyncio_agent.records), no string
work. Strings are built once per distinct site and caller, and cached. The same hot
path is compiled in agent/interp/_speedups.c, which calls ``_record_slow`` here on a miss.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, Optional

from . import records
from .interp.compiled import compiled as compiled_speedups
from .interp.frames import getframe

_getframe = getframe
_monotonic = time.monotonic

# Module-name prefixes whose frames are never a creation site: asyncio itself, the loop
# implementations that call back into asyncio, and instrumentations that wrap
# create_task for the caller (OpenTelemetry's asyncio instrumentation).
INTERNAL_MODULES: tuple[str, ...] = ("asyncio", "uvloop", "opentelemetry.instrumentation.asyncio")

PACKAGE_DIR = os.path.dirname(__file__) + os.sep
"""The agent's own files are recognised by where they are, never by a module name: an
application's own ``agent`` or ``agent.tasks`` module is application code."""

LAUNCHER_FILES: set[str] = set()
"""Other files of the agent's that run the program: the ``asyncio-agent`` console script
(``python -m asyncio_agent run``'s frames are in the package already)."""

MAX_SITES = 16_384
"""Distinct creation sites remembered; tasks from further sites get no site."""

SPAN_ATTR = "_asyncio_agent_span"
"""Attribute set on a task when a span probe is active and returned something."""

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

    def __init__(
        self, stack_depth: int, skip_modules: tuple[str, ...] = (), *, speedups: bool = True
    ) -> None:
        self.stack_depth = stack_depth
        self._prefixes = tuple(INTERNAL_MODULES) + tuple(skip_modules)
        # Caches are keyed by ids, never by code objects: hashing a code object hashes
        # its bytecode and constants (over 100 ns) on every lookup.
        # ids of code objects known to be internal (asyncio, the agent, configured
        # modules). The code objects are kept in _internal_codes, so an id in this set
        # always names the code it was added for.
        self._internal_ids: set[int] = set()
        self._internal_codes: list[CodeType] = []
        # id(code) -> code, for code objects known to be application code.
        self._external: dict[int, CodeType] = {}
        # What the hot path serves: id(code) + offset -> [code, offset, record, record
        # valid until (monotonic seconds), parent code, parent offset], for the
        # (site, caller) pair that created a task last. Every field is compared on a
        # hit, so a colliding key or another caller is only a cache miss.
        self._sites: dict[int, list[Any]] = {}
        # (id(code), offset, id(parent code), parent offset) -> (site index, code,
        # parent code); the code objects are kept so that the ids stay theirs.
        self._site_index: dict[tuple[int, int, int, int], tuple[int, CodeType, Any]] = {}
        self._site_list = _SITE_LIST
        self._span_probe: Optional[Callable[[], object]] = None
        compiled = compiled_speedups() if speedups else None
        table = records.use_table(compiled)  # the compiled Table, or a dict
        self.accelerator: Any = None
        """The compiled ``Recorder`` (agent/interp/_speedups.c) in use, or None."""
        if compiled is not None:
            self.accelerator = compiled.Recorder(
                self._internal_ids,
                self._record_slow,
                table,
                records.RECORD_ATTR,
                records.maybe_sweep,
                _TIME_BITS,
                SPAN_ATTR,
            )
        self.record_task: Callable[[Any], None] = (
            self.accelerator if self.accelerator is not None else self._make_record_task()
        )
        """``record_task(task)``: record the site of the caller's caller (the code that
        called the patched ``create_task``) for ``task``. The hot path of the agent,
        compiled or in Python; both give the same records (the compiled one's cache
        keeps site indexes instead of expiring each millisecond)."""

    @property
    def span_probe(self) -> Optional[Callable[[], object]]:
        """Set by a tracing integration: returns what to keep of the span current at
        task creation (stored as ``task._asyncio_agent_span``), or None. Must be cheap
        and must not keep the span or its context alive (ids only)."""
        return self._span_probe

    @span_probe.setter
    def span_probe(self, probe: Optional[Callable[[], object]]) -> None:
        self._span_probe = probe
        if self.accelerator is not None:
            self.accelerator.span_probe = probe  # read there by the compiled wrapper

    def _is_internal(self, frame: FrameType) -> bool:
        code = frame.f_code
        if id(code) in self._internal_ids:
            return True
        if self._external.get(id(code)) is code:
            return False
        module = frame.f_globals.get("__name__")
        filename = code.co_filename
        internal = (
            filename.startswith(PACKAGE_DIR)
            or filename in LAUNCHER_FILES
            or (
                isinstance(module, str)
                and any(
                    module == prefix or module.startswith(prefix + ".") for prefix in self._prefixes
                )
            )
        )
        if len(self._external) + len(self._internal_codes) < MAX_SITES * 4:
            if internal:
                self._internal_codes.append(code)
                self._internal_ids.add(id(code))
            else:
                self._external[id(code)] = code
        return internal

    def _make_record_task(self) -> Callable[[Any], None]:
        # Everything the hot path touches is a local of this closure: no attribute
        # lookups on self, no helper calls on a cache hit.
        getframe = _getframe
        monotonic = _monotonic
        internal_ids = self._internal_ids
        sites_get = self._sites.get
        table = records.TABLE
        slow = self._record_slow

        def record_task(task: Any) -> None:
            frame: Any = getframe(2)
            code = frame.f_code
            while id(code) in internal_ids:
                frame = frame.f_back
                code = frame.f_code
            offset = frame.f_lasti
            parent = frame.f_back
            entry = sites_get(id(code) + offset)
            now = monotonic()
            if (
                entry is not None
                and entry[0] is code
                and entry[1] == offset
                and now < entry[3]
                and parent is not None
                and parent.f_code is entry[4]
                and parent.f_lasti == entry[5]
            ):
                record = entry[2]
            else:
                record = slow(frame, now)
            if records.registry_hooked:
                table[id(task)] = record
            else:
                setattr(task, records.RECORD_ATTR, record)

        return record_task

    def _record_slow(self, frame: Optional[FrameType], now: float) -> int:
        """The record for the first application frame at or above ``frame``.

        The cache-miss half of ``record_task``: classifies frames never seen before,
        finds or resolves the site for this frame and its caller, and makes it the
        one the hot path serves for the rest of this millisecond.
        """
        if self.accelerator is None:
            # The Python path's table check: here, not per task (at most once per site
            # and millisecond). The compiled path checks each time its table has
            # gained 4,096 entries.
            records.maybe_sweep()
        while frame is not None and self._is_internal(frame):
            frame = frame.f_back
        millis = int(now * 1000)
        if frame is None:
            return millis & _TIME_MASK
        code = frame.f_code
        offset = frame.f_lasti
        parent = frame.f_back
        # The caller is part of the site's identity: one helper (``spawn(coro)``)
        # called from two places gets two sites, each with its own stack.
        if parent is None:
            parent_code, parent_offset = None, -1
        else:
            parent_code, parent_offset = parent.f_code, parent.f_lasti
        key = (id(code), offset, id(parent_code), parent_offset)
        known = self._site_index.get(key)
        if known is not None and known[1] is code and known[2] is parent_code:
            index: int = known[0]
        elif len(self._site_index) < MAX_SITES:
            index = self._new_site(frame)
            if not index:
                return millis & _TIME_MASK
            self._site_index[key] = (index, code, parent_code)
        else:
            return millis & _TIME_MASK
        record = (index << _TIME_BITS) | (millis & _TIME_MASK)
        if parent is not None and self.accelerator is None:
            # The Python hot path's cache (the compiled one keeps its own slots). A new
            # list, not an update in place: another thread may be reading the old one.
            self._sites[id(code) + offset] = [
                code,
                offset,
                record,
                (millis + 1) * _MS,
                parent_code,
                parent_offset,
            ]
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
