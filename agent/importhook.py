"""Post-import hooks: run a callback right after a named module has been executed.

Owns the ``sys.meta_path`` entry that lets the agent wait for ``asyncio``, ``uvloop``,
``structlog`` and OpenTelemetry instead of importing them. Never imports a watched
module itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from .notices import warn_once

# typing is not imported at run time (~6 ms): this module is imported at every start-up
# with the agent on, and its annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import importlib.machinery
    from typing import Any, Optional

Callback = Callable[[ModuleType], None]


def _run_callback(name: str, callback: Callback, module: ModuleType) -> None:
    try:
        callback(module)
    except Exception as exc:
        warn_once(f"hook:{name}", f"could not instrument {name} ({type(exc).__name__}: {exc})")


class _NotifyingLoader:
    """Wraps the real loader for one import, then hands the module back to it."""

    def __init__(self, loader: Any, name: str, callback: Callback) -> None:
        self._loader = loader
        self._name = name
        self._callback = callback

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        module: Optional[ModuleType] = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        # Put the real loader back first, so the module looks exactly as without us.
        module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._loader
        self._loader.exec_module(module)
        _run_callback(self._name, self._callback, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class PostImportHook:
    """Calls ``callbacks[name](module)`` once each watched module has been imported."""

    def __init__(self, callbacks: dict[str, Callback]) -> None:
        self._callbacks = dict(callbacks)
        self._searching: set[str] = set()

    def install(self) -> None:
        """Watch for the modules; those already imported get their callback now."""
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        for name, callback in self._callbacks.items():
            module = sys.modules.get(name)
            if module is not None:
                _run_callback(name, callback, module)

    def remove(self) -> None:
        """Stop watching."""
        while self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        """Find the module with the other finders and wrap its loader."""
        callback = self._callbacks.get(fullname)
        if callback is None or fullname in self._searching:
            return None
        self._searching.add(fullname)
        try:
            for finder in sys.meta_path:
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec: Optional[importlib.machinery.ModuleSpec] = find(fullname, path, target)
                if spec is None:
                    continue
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _NotifyingLoader(spec.loader, fullname, callback)  # type: ignore[assignment]  # duck-typed loader
                return spec
            return None
        finally:
            self._searching.discard(fullname)
