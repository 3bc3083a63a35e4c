"""The interpreter's exit, from the inside: hooks before threads are joined, and the
exit status after an unhandled KeyboardInterrupt.

Owns the use of ``threading._register_atexit`` (runs before non-daemon threads are
joined, also in a multiprocessing child, which never runs ``atexit``) and the knowledge
of how CPython keeps "the program died of KeyboardInterrupt" for its exit status.
Never raises.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


def register_before_threads_join(callback: Callable[[], None]) -> bool:
    """Call ``callback`` when the interpreter starts to exit, before it joins threads.

    False where the interpreter has no such hook (then only ``atexit`` remains), or when
    it is already shutting down. There is no way to unregister: callers register one
    callback for the life of the process and decide inside it what to do.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is None:
        return False
    try:
        register(callback)
    except RuntimeError:  # already shutting down
        return False
    return True


def keep_keyboard_interrupt_exit_status() -> None:
    """After an unhandled KeyboardInterrupt, make the process still exit by SIGINT.

    CPython remembers "the main module died of KeyboardInterrupt" in a flag that any
    later ``exec()``/``eval()`` of a string clears (and imports such as dataclasses or
    namedtuple do exactly that): the exit status would become 1 instead of -SIGINT.
    The agent's work at exit (writing queued reports, exporting spans) may do that, so
    the flag is set again the only way Python code can: by a string that raises
    KeyboardInterrupt, run through ``exec``.
    """
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if type(last) is not KeyboardInterrupt:
        return
    try:
        exec("raise KeyboardInterrupt")
    except KeyboardInterrupt:
        pass
