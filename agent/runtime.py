"""The installed agent: builds the pieces from Settings, wires them, tears them down.

Owns the one process-wide installation. Imports asyncio never: loops are reached
through the post-import hook when the application imports asyncio or uvloop.
"""

from __future__ import annotations

import os
import sys
import threading
from types import ModuleType
from typing import Any, Optional

from agent.config import Settings, load_settings
from agent.importhook import PostImportHook
from agent.reporter import Reporter
from agent.sinks.events import EventSink


class Installation:
    """Everything ``install()`` created, so ``uninstall()`` can undo exactly that."""

    def __init__(self, settings: Settings) -> None:
        from agent.hooks import LoopPatcher
        from agent.sites import SiteRecorder

        self.settings = settings
        self.event_sink = EventSink(settings)
        self.reporter = Reporter([self.event_sink], settings.queue_size)
        self.recorder = SiteRecorder(settings.stack_depth, settings.skip_modules)
        self.patcher = LoopPatcher(self.recorder, self.reporter.submit)
        self.hook = PostImportHook(
            {"asyncio.base_events": self._asyncio_imported, "uvloop": self._uvloop_imported}
        )

    def _asyncio_imported(self, module: ModuleType) -> None:
        self.patcher.on_asyncio_imported(module)
        self.reporter.start()

    def _uvloop_imported(self, module: ModuleType) -> None:
        self.patcher.on_uvloop_imported(module)
        self.reporter.start()

    def start(self) -> None:
        self.hook.install()
        running = _running_loop()
        if running is not None:
            self.instrument_loop(running)

    def instrument_loop(self, loop: Any) -> bool:
        ok = self.patcher.patch_loop(loop)
        if ok:
            self.reporter.start()
        return ok

    def stop(self, timeout: float) -> None:
        self.hook.remove()
        self.patcher.unpatch_all()
        self.reporter.shutdown(timeout)


_lock = threading.Lock()
_current: Optional[Installation] = None


def _running_loop() -> Any:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def install(**options: Any) -> None:
    """See :func:`agent.install`."""
    global _current
    with _lock:
        if _current is not None:
            return
        installation = Installation(load_settings(os.environ, **options))
        _current = installation
        installation.start()


def uninstall(timeout: float = 5.0) -> None:
    """See :func:`agent.uninstall`."""
    global _current
    with _lock:
        installation, _current = _current, None
    if installation is not None:
        installation.stop(timeout)


def flush(timeout: float = 5.0) -> bool:
    """See :func:`agent.flush`."""
    installation = _current
    if installation is None:
        return True
    return installation.reporter.flush(timeout)


def instrument_loop(loop: Any) -> bool:
    """See :func:`agent.instrument_loop`."""
    installation = _current
    if installation is None:
        return False
    return installation.instrument_loop(loop)


def current() -> Optional[Installation]:
    """The active installation, or None."""
    return _current
