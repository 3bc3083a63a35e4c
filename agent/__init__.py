"""asyncio-agent: finds the asyncio tasks your program loses, and says who created them.

Public API only. Importing this package is cheap: nothing here imports asyncio,
structlog or threads until :func:`install` is called.

PYTEST_DONT_REWRITE: the start-up hook imports this package before pytest starts, and
pytest marks the packages of every distribution with a pytest plugin for assertion
rewriting; this marker keeps it from warning that it is already imported (which
``filterwarnings = error`` would turn into a crash at start-up).
"""

from __future__ import annotations

# typing is not imported at run time: it costs ~15 ms, and this module is imported at
# every interpreter start-up by the sitecustomize, agent on or off.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["flush", "install", "instrument_loop", "is_installed", "snapshot", "uninstall"]
__version__ = "0.1.0"


def install(**options: Any) -> None:
    """Switch the agent on for this process (idempotent).

    Options override the ``ASYNCIO_AGENT_*`` environment variables (the README's
    Settings table): ``output`` (``"stderr"``, ``"stdout"`` or a file path), ``format``
    (``"json"`` or ``"console"``), ``stack_depth``, ``queue_size``, ``skip_modules``,
    ``rate_limit``, ``redact``, ``path_root``, ``dump_signal``, ``snapshot_interval``,
    ``block_ms`` (loop stalls longer than this are reported; 0 = off).
    A bad value gives one warning on stderr and its default; an unknown option is a
    TypeError.
    Loops are patched when asyncio or uvloop is imported, or now if they already are.
    """
    from . import runtime

    runtime.install(**options)


def uninstall(timeout: float = 5.0) -> None:
    """Flush what is queued, then undo every patch: later loops are plain loops."""
    from . import runtime

    runtime.uninstall(timeout)


def flush(timeout: float = 5.0) -> bool:
    """Block until every report queued so far is written; False if ``timeout`` passed.

    Also done automatically at interpreter exit.
    """
    from . import runtime

    return runtime.flush(timeout)


def instrument_loop(loop: Any) -> bool:
    """Make sure ``loop`` is instrumented, whatever its class; False if impossible.

    Loops deriving from ``asyncio.BaseEventLoop`` or ``uvloop.Loop`` are covered
    without this; it is for other loop implementations.
    """
    from . import runtime

    return runtime.instrument_loop(loop)


def snapshot() -> Any:
    """The live tasks of every loop and thread, grouped by creation site, largest first.

    Returns a frozen :class:`asyncio_agent.snapshot.Snapshot` (``.to_dict()`` for JSON): per
    site the count, oldest age, states, coroutines, example names and where pending
    tasks are waiting. Keeps no task alive after it returns. Works without
    :func:`install` too, but then no task has a creation site.
    """
    from . import runtime

    return runtime.snapshot()


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    from . import runtime

    return runtime.current() is not None
