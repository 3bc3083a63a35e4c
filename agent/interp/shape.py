"""What the running interpreter's asyncio is made of, found out once, by looking.

Owns the probe of asyncio's task registry: is there a registry that every task enters
through a Python-level ``add`` (which the agent can hook, and which lists every task not
yet collected), or only ``asyncio.all_tasks(loop)``, which lists a loop's pending tasks
(3.14 and later keep native tasks in per-thread lists)? The answer comes from what the
modules hold, never from a version number. Never imports asyncio: it is given the
modules once the program has imported them.

``ASYNCIO_AGENT_INTERP_SHAPE=3.14`` (a development setting, for CI) makes the probe
answer as on 3.14 whatever the interpreter: no hookable registry, live tasks pending
only, no compiled hot path. The whole test suite runs in that shape on 3.10 and 3.13.
"""

from __future__ import annotations

import os
import sys

# typing is not imported at run time (~6 ms): this module is imported at every start-up
# with the agent on, and its annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Optional

SIMULATE_VARIABLE = "ASYNCIO_AGENT_INTERP_SHAPE"
SIMULATED_SHAPES = ("3.14",)

# Where the registry lives, by the names the modules export:
# - 3.10, 3.11: asyncio.tasks._all_tasks, a WeakSet every task enters (C tasks call its
#   add() by name), also exported by _asyncio as _all_tasks.
# - 3.12, 3.13: asyncio.tasks._scheduled_tasks (WeakSet, same rule) plus _eager_tasks, a
#   set of eager tasks still in their first step (they enter it by PySet_Add).
# - 3.14+: _asyncio exports neither: native tasks live in per-thread lists that only
#   asyncio.all_tasks(loop) reads (pending tasks of that loop). asyncio.tasks still has a
#   _scheduled_tasks WeakSet, which stays empty for native tasks.
_REGISTRY_NAMES = ("_scheduled_tasks", "_all_tasks")
_EAGER_NAME = "_eager_tasks"


class Shape:
    """The answers of the probe (see :func:`probe`)."""

    __slots__ = ("compiled_allowed", "complete", "eager", "name", "registry", "registry_name")

    def __init__(
        self,
        name: str,
        *,
        registry: Any,
        registry_name: str,
        eager: Any,
        complete: bool,
        compiled_allowed: bool,
    ) -> None:
        self.name = name
        """For people: ``3.10-3.11``, ``3.12-3.13``, ``3.14+`` or ``3.14 (simulated)``."""
        self.registry = registry
        """The WeakSet every task registers with, if it is hookable, else None."""
        self.registry_name = registry_name
        """``asyncio.tasks.<name>`` of ``registry`` ("" without one)."""
        self.eager = eager
        """The set of eager tasks in their first step (3.12+), or None."""
        self.complete = complete
        """True: every task not yet collected can be listed (finished ones too). False:
        only the pending tasks of the loops the agent has seen (asyncio.all_tasks)."""
        self.compiled_allowed = compiled_allowed
        """Whether the compiled hot path may run in this shape."""

    @property
    def live_tasks_source(self) -> str:
        """Where live tasks come from, for people (snapshots, doctor)."""
        if self.complete:
            eager = f"+{_EAGER_NAME}" if self.eager is not None else ""
            return f"asyncio.tasks.{self.registry_name}{eager}"
        return "asyncio.all_tasks(loop) over the loops the agent has seen (pending only)"


def simulated() -> Optional[str]:
    """The shape ``ASYNCIO_AGENT_INTERP_SHAPE`` asks to simulate, or None."""
    value = os.environ.get(SIMULATE_VARIABLE, "").strip()
    return value if value in SIMULATED_SHAPES else None


def probe(tasks_module: Optional[ModuleType]) -> Shape:
    """Look at ``asyncio.tasks`` (and ``_asyncio``, if asyncio uses it) and say what it has."""
    if tasks_module is None:
        return _no_registry("unknown", compiled_allowed=False)
    if simulated() == "3.14":
        return _no_registry("3.14 (simulated)", compiled_allowed=False)
    import weakref  # (already imported by asyncio)

    native = sys.modules.get("_asyncio")
    native_tasks = native is not None and getattr(tasks_module, "Task", None) is getattr(
        native, "Task", object()
    )
    for name in _REGISTRY_NAMES:
        registry = getattr(tasks_module, name, None)
        if not isinstance(registry, weakref.WeakSet):
            continue
        # Native tasks enter the registry _asyncio holds; where it holds none (3.14+),
        # they never enter asyncio.tasks' WeakSet, which then lists Python tasks only.
        if native_tasks and getattr(native, name, None) is not registry:
            break
        eager = getattr(tasks_module, _EAGER_NAME, None)
        if native_tasks and eager is not None and getattr(native, _EAGER_NAME, None) is not eager:
            eager = None
        return Shape(
            "3.12-3.13" if name == "_scheduled_tasks" else "3.10-3.11",
            registry=registry,
            registry_name=name,
            eager=eager if isinstance(eager, set) else None,
            complete=True,
            compiled_allowed=True,
        )
    return _no_registry("3.14+", compiled_allowed=True)


def _no_registry(name: str, compiled_allowed: bool) -> Shape:
    return Shape(
        name,
        registry=None,
        registry_name="",
        eager=None,
        complete=False,
        compiled_allowed=compiled_allowed,
    )
