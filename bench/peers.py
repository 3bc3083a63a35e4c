"""Peer blocking detectors switched on with the least code, for the benchmark workloads.

Owns how each peer is switched on and off (adapted from the team's peer study, which
found where each must be called and what it silently skips): aiocop 1.2.1 and pyleak
0.2.0 only work when enabled INSIDE the running loop (before it, aiocop patches nothing
and says nothing); aiodebug 2.3.0's ``log_slow_callbacks`` is process-wide and patches
``asyncio.events.Handle._run``, which uvloop never uses. Reports go nowhere here: the
benchmark measures what the detection costs, not what printing costs.

    stop = await enable_inside("aiocop")   # in a coroutine on the loop to watch
    ...
    stop()
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

PEERS = ("aiocop", "pyleak", "aiodebug")
THRESHOLD_S = 0.1
"""The same threshold as the agent's default and CPython debug mode's."""

Stop = Callable[[], None]

_aiocop_configured = False


def _enable_aiocop() -> Stop:
    """aiocop's four calls (its README's order); once per process, then re-activate."""
    global _aiocop_configured
    import aiocop

    if not _aiocop_configured:
        aiocop.patch_audit_functions()
        aiocop.start_blocking_io_detection()
        aiocop.detect_slow_tasks(threshold_ms=int(THRESHOLD_S * 1000), on_slow_task=None)
        _aiocop_configured = True
    aiocop.activate()  # patches the running loop's call_soon & co.
    stop: Stop = aiocop.deactivate
    return stop


def _drive(coro: Any) -> Any:
    """Run a coroutine that never suspends (pyleak's __aenter__/__aexit__) in place."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the coroutine suspended")


def _enable_pyleak() -> Stop:
    """pyleak's watchdog thread, with the thresholds that catch a 150 ms block (its
    defaults, 0.2 s and a ResourceWarning the default filters hide, catch nothing)."""
    from pyleak import no_event_loop_blocking

    log: Any = "log"  # pyleak's LeakAction.LOG (a str enum)
    manager = no_event_loop_blocking(action=log, threshold=THRESHOLD_S, check_interval=0.01)
    _drive(manager.__aenter__())

    def stop() -> None:
        _drive(manager.__aexit__(None, None, None))

    return stop


def _enable_aiodebug() -> Stop:
    import asyncio.events

    import aiodebug.log_slow_callbacks

    original = asyncio.events.Handle._run
    aiodebug.log_slow_callbacks.enable(THRESHOLD_S, lambda _handle, _seconds: None)

    def stop() -> None:
        asyncio.events.Handle._run = original  # type: ignore[method-assign]

    return stop


async def enable_inside(peer: str) -> Stop:
    """Switch ``peer`` on for the running loop; returns how to switch it off."""
    asyncio.get_running_loop()  # all three need (or are set up from) the running loop
    enablers = {"aiocop": _enable_aiocop, "pyleak": _enable_pyleak, "aiodebug": _enable_aiodebug}
    return enablers[peer]()


def available(peer: str) -> bool:
    """Whether ``peer`` imports here."""
    import importlib.util

    module = {"aiodebug": "aiodebug.log_slow_callbacks"}.get(peer, peer)
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


if __name__ == "__main__":
    print({peer: available(peer) for peer in PEERS}, file=sys.stderr)
