"""Live tasks: where each Python version keeps its registry of tasks, and how to read it.

Owns the version-specific knowledge of asyncio's task registries. Reads them only: it
never registers, unregisters or keeps a task alive beyond the list it returns.
"""

from __future__ import annotations

import sys
from typing import Any

# Where the registries live:
# - 3.10, 3.11: ``asyncio.tasks._all_tasks``, a WeakSet of every task not yet collected.
# - 3.12, 3.13: ``asyncio.tasks._scheduled_tasks`` (WeakSet) plus ``_eager_tasks`` (a
#   plain set of tasks that started eagerly and are still running their first step).
# - Anything else (a future Python that moved them, an alternative implementation):
#   ``asyncio.all_tasks()`` of the loop running in the calling thread, if any. That
#   fallback sees one loop only and no finished tasks; SOURCE_FALLBACK names it.
SOURCE_ALL_TASKS = "asyncio.tasks._all_tasks"
SOURCE_SCHEDULED = "asyncio.tasks._scheduled_tasks+_eager_tasks"
SOURCE_FALLBACK = "asyncio.all_tasks(running loop)"
SOURCE_NONE = "asyncio not imported"

_RETRIES = 100


def _copy(container: Any) -> list[Any]:
    # Another thread may add or remove tasks while we copy; asyncio.all_tasks() does
    # the same retry. list() of a WeakSet holds strong references only in our list.
    for _ in range(_RETRIES):
        try:
            return list(container)
        except RuntimeError:
            continue
    return []


def registry_source() -> str:
    """Which registry :func:`live_tasks` reads on this interpreter (for ``doctor``)."""
    tasks_module = sys.modules.get("asyncio.tasks")
    if tasks_module is None:
        try:
            import asyncio.tasks as tasks_module
        except Exception:
            return SOURCE_NONE
    if hasattr(tasks_module, "_scheduled_tasks"):
        return SOURCE_SCHEDULED
    if hasattr(tasks_module, "_all_tasks"):
        return SOURCE_ALL_TASKS
    return SOURCE_FALLBACK


def live_tasks() -> tuple[list[Any], str]:
    """Every task not yet collected, across all loops and threads, and where from.

    Includes finished tasks something still references. The caller must drop the list
    when done: it is the only strong reference this module ever makes.
    """
    tasks_module = sys.modules.get("asyncio.tasks")
    if tasks_module is None:
        return [], SOURCE_NONE
    scheduled = getattr(tasks_module, "_scheduled_tasks", None)
    if scheduled is not None:
        eager = getattr(tasks_module, "_eager_tasks", None) or ()
        found = _copy(scheduled)
        seen = {id(task) for task in found}
        found.extend(task for task in _copy(eager) if id(task) not in seen)
        return found, SOURCE_SCHEDULED
    every = getattr(tasks_module, "_all_tasks", None)
    if every is not None:
        return _copy(every), SOURCE_ALL_TASKS
    try:
        asyncio = sys.modules["asyncio"]
        return list(asyncio.all_tasks()), SOURCE_FALLBACK
    except Exception:
        return [], SOURCE_FALLBACK
