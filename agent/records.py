"""Where each task's creation record is kept: a table keyed by the task's id.

Why not an attribute on the task: the first attribute gives a C task a ``__dict__``,
one more garbage-collected allocation per task (every collection of the host program
runs more often) and, on 3.13, 304 bytes. A weak reference per task costs the same.
The table holds plain integers (key and value), which the collector never sees: on the
compiled path a ``Table`` (agent/interp/_speedups.c: two machine words per entry in
one array: no int object per task, one cache line per task where a dict touches three,
and that line is loaded ahead while its write waits in a short queue, which every
read applies first), on the Python path a dict. :func:`use_table` picks the kind.

Why the table is exact although ids are reused once a task dies:

- A dead task's entry stays until its address is taken again, so the finalizer of a
  task collected in a reference cycle (weak references are cleared before finalizers
  run) still finds it.
- Every asyncio task registers itself with asyncio's task registry while it is being
  built (the WeakSet agent.interp.shape finds: ``_scheduled_tasks``, ``_all_tasks``
  before 3.12). :class:`RegistryHook` sees that call and drops the entry a dead task left
  at the same id, so a task created without our ``create_task`` (``asyncio.Task(...)``
  called directly) has no record rather than a stale one. ``create_task`` then writes
  the new task's record.
- An eager task that already finished inside ``create_task`` never registers; it keeps
  its record as an attribute (``RECORD_ATTR``), as does every task where the interpreter
  has no registry to hook (3.14+: native tasks live in per-thread lists).

The table stays bounded without any per-task work: addresses are reused, and
:func:`sweep` drops the entries of dead tasks once the table holds half again as many
entries as there are live tasks (plus :data:`SWEEP_SLACK`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Optional, Protocol

from .interp.compiled import compiled as compiled_speedups
from .interp.shape import Shape
from .interp.tasks import weak_references

RECORD_ATTR = "_asyncio_agent_record"
"""The attribute holding the record of a task the table does not hold (see above)."""


class RecordTable(Protocol):
    """What the agent asks of :data:`TABLE`: a dict, or the compiled ``Table``."""

    def get(self, key: int, /) -> Optional[int]: ...
    def pop(self, key: int, default: None, /) -> Optional[int]: ...
    def __setitem__(self, key: int, record: int, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def clear(self) -> None: ...


TABLE: RecordTable = {}
"""``id(task) -> record`` for tasks created through a patched ``create_task``."""

SWEEP_SLACK = 4_096
"""Entries the table may hold beyond one and a half times the live tasks."""

registry_hooked = False
"""True while records go to :data:`TABLE`: the registry hook is installed."""


def use_table(speedups: Optional[ModuleType]) -> RecordTable:
    """Make :data:`TABLE` the compiled ``Table`` of ``speedups`` (agent/interp/_speedups.c),
    or a dict if None, and return it. Called when a SiteRecorder is built, before the
    registry hook is installed; a table of the other kind is replaced (with its
    records: uninstall has forgotten them already)."""
    global TABLE
    kind: Any = dict if speedups is None else speedups.Table
    if type(TABLE) is not kind:
        TABLE = kind()
    return TABLE


_hooked: Optional[Shape] = None  # the shape whose registry is hooked


def record_of(task: Any) -> Optional[int]:
    """The creation record of a live ``task``, or None. Safe in a finalizer."""
    try:
        record = getattr(task, RECORD_ATTR, None)
    except Exception:
        record = None
    if record is None:
        record = TABLE.get(id(task))
    return record if type(record) is int else None


def keep_on_task(task: Any) -> None:
    """Move ``task``'s record from the table onto the task (it will never register)."""
    record = TABLE.pop(id(task), None)
    if record is not None:
        setattr(task, RECORD_ATTR, record)


class RegistryHook:
    """Drops a dead task's stale entry when a new task registers at the same id."""

    def __init__(self, accelerator: Any = None) -> None:
        self._accelerator = accelerator  # the compiled Recorder: wrap with RegistryAdd
        self._registry: Any = None
        self._before: Any = None  # the instance attribute "add" found, if any

    def install(self, shape: Shape) -> bool:
        """Wrap the registry's ``add`` on the instance; False where ``shape`` has no
        hookable registry (then every task keeps its record as an attribute)."""
        global registry_hooked, _hooked
        if self._registry is not None:
            return True
        registry = shape.registry
        if registry is None:
            return False
        # Never read registry.__dict__ (nor vars()): that turns the WeakSet's inline
        # attribute values into a real dict for good, and every task's add and removal
        # then looks its attributes up the slow way (~5 dict lookups per task).
        add = registry.add
        inherited = getattr(add, "__self__", None) is registry and getattr(
            add, "__func__", None
        ) is getattr(type(registry), "add", None)
        self._before = None if inherited else add  # an instance attribute to put back
        speedups = compiled_speedups() if self._accelerator is not None else None
        wrapper: Any
        if speedups is not None and type(TABLE) is speedups.Table:
            wrapper = speedups.RegistryAdd(TABLE, add)
        else:
            table_pop = TABLE.pop

            def wrapper(task: Any) -> None:
                # Called by every task's constructor (C or Python). The id cannot
                # belong to a live recorded task: this one owns it now.
                table_pop(id(task), None)
                add(task)

        # An instance attribute wins over the class's method, also for C's lookup.
        try:
            registry.add = wrapper
        except (AttributeError, TypeError):  # no instance attributes: nothing to hook
            return False
        self._registry = registry
        registry_hooked = True
        _hooked = shape
        if self._accelerator is not None:
            self._accelerator.use_table = 1
        return True

    def uninstall(self) -> None:
        """Remove the wrapper and forget every record.

        Without the hook, a task created later could take a dead task's id and be read
        as that task; a record lost on uninstall only costs a site.
        """
        global registry_hooked, _hooked
        registry, self._registry = self._registry, None
        if self._accelerator is not None:
            self._accelerator.use_table = 0
        if registry is not None:
            if self._before is None:
                try:
                    del registry.add
                except AttributeError:
                    pass
            else:
                registry.add = self._before
        registry_hooked = False
        _hooked = None
        TABLE.clear()


def sweep() -> int:
    """Drop the entries of tasks that no longer exist; return how many were dropped.

    Called from the creating thread, never from a finalizer. A task that registered
    after the registry was read keeps its entry: only ids absent from both readings
    are dropped, and each is checked again right before it goes.
    """
    shape = _hooked
    if shape is None:
        return 0
    registry = shape.registry
    eager: Any = shape.eager if shape.eager is not None else set()
    table: Any = TABLE
    if type(table) is not dict:
        # The compiled Table sweeps itself in C, in one step that no other thread can
        # interleave with: it keeps the entries of the referents of the WeakSet's weak
        # references and of the eager tasks, in a new array.
        refs = weak_references(registry)
        if type(refs) is not set or type(eager) is not set:
            return 0
        count: int = table.sweep(refs, eager)
        return count
    before = table.copy()  # one step, whatever other threads do
    try:
        tasks = list(registry)
        tasks.extend(eager)
    except Exception:
        return 0
    live = {id(task) for task in tasks}
    dropped = 0
    for key, record in before.items():
        if key not in live and table.get(key) is record:
            # A live task at this id would be in ``live``, unless it was created after
            # the registry was read; then it wrote its own record object, and the
            # ``is`` check above keeps it (records of one site and millisecond are
            # shared, so a task of the same site and millisecond is dropped: it loses
            # its site, never gets a wrong one).
            table.pop(key, None)
            dropped += 1
    del tasks
    return dropped


def maybe_sweep() -> None:
    """Sweep once the table holds half again as many entries as there are live tasks.

    Called on a site cache miss of the Python path (at most once per site and
    millisecond), and by the compiled one each time its table has gained 4,096
    entries since the last check, never per task (a task that takes a dead task's
    address replaces that entry and adds none). Between two sweeps at least half the
    live tasks' count of entries is added, so a sweep costs a few table writes per
    entry added.
    """
    size = len(TABLE)
    if size <= SWEEP_SLACK:
        return
    shape = _hooked
    try:
        live = len(shape.registry) if shape is not None else 0
    except Exception:
        return
    if size > live + live // 2 + SWEEP_SLACK:
        sweep()
