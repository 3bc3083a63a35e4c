"""Never-awaited coroutines: each one CPython warns about becomes a NeverAwaited value.

Owns the callback run by the unawaited-coroutine hook (asyncio_agent.interp.unfinished)
and the optional coroutine origin tracking. The callback runs inside the coroutine's
finalizer, in any thread, possibly during a collection or at interpreter teardown: no
I/O, no locks, no imports. It reads the coroutine's name and origin, asks the rate
limit, builds one small value and queues it. CPython's own warning is left to CPython.

One value per call of the hook, whatever the warnings filter: CPython calls the hook
for every coroutine finalized without having started, and the filter is applied
inside it (the default filter prints one line per source line, ``-W error`` makes each
an unraisable exception, ``-W ignore`` prints none). So the count is the one
``-W always::RuntimeWarning`` would print, under ``-W ignore`` too.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Optional, Union

from .findings import NEVER_AWAITED, NeverAwaited
from .interp.compiled import prelude_type
from .interp.unfinished import (
    Location,
    OriginTracking,
    UnawaitedHook,
    current_thread_name,
)
from .report import Report, Suppressed
from .sites import MAX_SITES, Site

Submit = Callable[[Union[Report, Suppressed, NeverAwaited]], None]
Admit = Callable[[tuple[Optional[Site], str]], bool]
ProbeGetter = Callable[[], Optional[Callable[[], object]]]

_is_finalized = gc.is_finalized
_is_finalizing = sys.is_finalizing
_wall = time.time
_getpid = os.getpid


def _same_line(where: Location, origin_frame: tuple[str, int, str]) -> bool:
    # cr_origin names functions by co_name; ``where`` by qualified name where it can.
    return (
        where[0] == origin_frame[0]
        and where[1] == origin_frame[1]
        and where[2].rpartition(".")[2] == origin_frame[2]
    )


class NeverAwaitedDetector:
    """Installs the hook (and origin tracking, if asked) and queues what it sees."""

    def __init__(
        self,
        submit: Submit,
        admit: Admit,
        span_probe: ProbeGetter,
        *,
        compiled: bool,
        origin_depth: int,
    ) -> None:
        self._submit = submit
        self._admit = admit
        self._span_probe = span_probe
        prelude = prelude_type() if compiled else None
        self.hook = UnawaitedHook(self._on_unawaited, prelude)
        self.origin = OriginTracking(origin_depth) if origin_depth > 0 else None
        # Innermost origin frame -> Site: the rate limit's keys and the held-back
        # counts' sites. Bounded like task sites; beyond it, coroutines share "unknown".
        self._sites: dict[tuple[str, int, str], Site] = {}

    def start(self) -> bool:
        """Install the hook and raise the origin depth; False if the hook is off."""
        if self.origin is not None:
            self.origin.install()
        return self.hook.install()

    def on_asyncio_imported(self, module: Any) -> None:
        """Origin tracking in every thread that runs a loop."""
        if self.origin is not None:
            self.origin.on_asyncio_imported(module)

    def stop(self) -> None:
        """Remove the hook and the origin tracking."""
        self.hook.uninstall()
        if self.origin is not None:
            self.origin.uninstall()

    def _site(self, frame: tuple[str, int, str]) -> Optional[Site]:
        site = self._sites.get(frame)
        if site is None and len(self._sites) < MAX_SITES:
            site = Site(frame[0], frame[1], frame[2], ())
            self._sites[frame] = site  # a racing thread may make its twin: harmless
        return site

    def _on_unawaited(self, coro: Any, where: Optional[Location]) -> None:
        # Inside the coroutine's finalizer: read, build, queue. Never raises.
        try:
            name = getattr(coro, "__qualname__", None)
            if not isinstance(name, str):
                name = type(coro).__qualname__
            origin = getattr(coro, "cr_origin", None)
            if not origin:
                origin = None
            site = self._site(origin[0]) if origin is not None else None
            at_shutdown = _is_finalizing()
            if not self._admit((site, NEVER_AWAITED)):
                self._submit(Suppressed(NEVER_AWAITED, site, name, at_shutdown))
                return
            garbage_collected = _is_finalized(coro)
            span = None
            if (
                origin is not None
                and where is not None
                and not garbage_collected
                and _same_line(where, origin[0])
            ):
                # Its last reference went at the very line that created it: the
                # context current now is the one it was created in.
                probe = self._span_probe()
                if probe is not None:
                    span = probe()
            self._submit(
                NeverAwaited(
                    coroutine=name,
                    origin=origin,
                    site=site,
                    collected=where,
                    garbage_collected=garbage_collected,
                    at_shutdown=at_shutdown,
                    timestamp=_wall(),
                    pid=_getpid(),
                    thread=current_thread_name(),
                    span=span,
                )
            )
        except Exception:
            pass


class NeverAwaitedTally:
    """Never-awaited coroutines counted by coroutine and creation site, for snapshots.

    A reporter listener (reporter thread only): counts each written finding and each
    one the rate limit held back. At most :data:`MAX_KEYS` distinct keys; the rest are
    counted under coroutine ``other``.
    """

    MAX_KEYS = 1_000

    def __init__(self) -> None:
        self._counts: dict[tuple[str, Optional[str]], int] = {}

    def on_report(self, item: object) -> None:
        """Listener: count ``item`` if it is a never-awaited coroutine."""
        if getattr(item, "kind", None) != NEVER_AWAITED:
            return
        site = getattr(item, "site", None)
        where = f"{site.filename}:{site.lineno} in {site.function}" if site is not None else None
        key = (str(getattr(item, "coroutine", None)), where)
        if key not in self._counts and len(self._counts) >= self.MAX_KEYS:
            key = ("other", None)
        self._counts[key] = self._counts.get(key, 0) + 1

    def top(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most frequent keys: ``coroutine``, ``creation_site`` (or None), ``count``."""
        ranked = sorted(self._counts.items(), key=lambda item: -item[1])[:limit]
        return [
            {"coroutine": coroutine, "creation_site": where, "count": count}
            for (coroutine, where), count in ranked
        ]
