"""Process-wide hooks of the installation: at exit, before threads are joined, after fork.

Owns the agent's registrations with ``atexit``, ``threading`` and ``os.register_at_fork``.
They are made by ``install()`` (never by importing a module) and undone by
``uninstall()``: the ``atexit`` one is unregistered; the other two cannot be removed from
the interpreter, so each is registered once per process, at the first install, as a
trampoline that calls the current installation's hook and does nothing without one.
"""

from __future__ import annotations

import atexit
import os

from .interp.process import register_before_threads_join

# typing is not imported at run time (~6 ms): this module is imported at every start-up
# with the agent on, and its annotations are strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


class ProcessHooks:
    """What an installation does at these moments (it must never raise). The base does
    nothing; agent.runtime.Installation is the one subclass."""

    def before_threads_join(self) -> None:
        """At exit, before non-daemon threads are joined (also in a multiprocessing
        child, which leaves through ``os._exit`` and never runs ``atexit``)."""

    def at_exit(self) -> None:
        """At exit, among the ``atexit`` handlers."""

    def after_fork_in_child(self) -> None:
        """In the child of ``os.fork()``, before it runs anything else."""


_current: Optional[ProcessHooks] = None
_trampolines = False


def _before_threads_join() -> None:
    hooks = _current
    if hooks is not None:
        hooks.before_threads_join()


def _after_fork_in_child() -> None:
    hooks = _current
    if hooks is not None:
        hooks.after_fork_in_child()


def _at_exit() -> None:
    hooks = _current
    if hooks is not None:
        hooks.at_exit()


def attach(hooks: ProcessHooks) -> None:
    """Make ``hooks`` the ones called at exit and after fork (one installation at a time)."""
    global _current, _trampolines
    _current = hooks
    if not _trampolines:
        _trampolines = True
        os.register_at_fork(after_in_child=_after_fork_in_child)
        register_before_threads_join(_before_threads_join)
    atexit.unregister(_at_exit)  # never twice
    atexit.register(_at_exit)


def detach(hooks: ProcessHooks) -> None:
    """Stop calling ``hooks``; the ``atexit`` registration is removed."""
    global _current
    if _current is hooks:
        _current = None
        atexit.unregister(_at_exit)
