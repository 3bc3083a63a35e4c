"""Settings: environment variables and ``install()`` keywords into one frozen value.

Owns every ``ASYNCIO_AGENT_*`` name and its default. A bad value never raises: it
becomes one warning naming the variable and the value used instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from .notices import warn_once

# typing is not imported at run time: it costs ~6 ms, and this module is imported at
# every start-up with the agent on (the annotations are strings).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Optional

ENV_PREFIX = "ASYNCIO_AGENT"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
FORMATS = ("json", "console")


class Settings:
    """Everything the agent can be told, after validation (immutable).

    Each field below is a name, its type and its default. A plain class rather than a
    frozen dataclass or a NamedTuple: importing dataclasses or typing would add 6-15 ms
    to every start-up with the agent on.
    """

    output: str = "stderr"
    """``stderr``, ``stdout``, or a file path (JSON lines, appended)."""
    format: str = "json"
    """``json`` or ``console``; a file always gets ``json``."""
    stack_depth: int = 8
    """Frames kept in ``creation_stack`` (the creation site is always kept)."""
    queue_size: int = 10_000
    """Reports waiting to be written; beyond this they are dropped and counted."""
    skip_modules: tuple[str, ...] = ()
    """Extra module-name prefixes never taken as a creation site (e.g. ``anyio``)."""
    rate_limit: int = 1000
    """Reports written per creation site and kind per second (0: no limit); the rest
    are counted in ``asyncio.agent.reports_suppressed`` events."""
    redact: bool = False
    """Replace exception messages (and the traceback's exception line) by the type."""
    path_root: Optional[str] = None
    """File paths under this folder are written relative to it."""

    dump_signal: str = ""
    """Signal name (``SIGUSR1``) that writes a task snapshot event; empty = off."""
    snapshot_interval: float = 0.0
    """Seconds between task snapshot events; 0 = off."""
    block_ms: int = 100
    """A loop that does not run for longer than this many milliseconds is reported in an
    ``asyncio.loop.blocked`` event; 0 = off (no heartbeat, no watchdog thread)."""
    speedups: bool = True
    """Use the compiled hot path (``asyncio_agent.interp._speedups``) where it was built;
    ``False`` runs the same logic in Python."""
    coroutine_origin: int = 0
    """Frames of each coroutine's creation recorded by CPython (its origin tracking) for
    ``asyncio.coroutine.never_awaited`` events; 0 = off (it costs on every coroutine)."""
    stuck_s: float = 0.0
    """Seconds a task must be pending before it can be reported as stuck (far longer
    than its siblings from the same site); 0 = off."""

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - set(_fields())
        if unknown:
            raise TypeError(f"Settings() got unknown field(s): {', '.join(sorted(unknown))}")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Settings are immutable")

    def _asdict(self) -> dict[str, Any]:
        """Every field and its value, in declaration order."""
        return {name: getattr(self, name) for name in _fields()}

    def __repr__(self) -> str:
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in self._asdict().items()) + ")"


def _fields() -> tuple[str, ...]:
    return tuple(name for name in Settings.__annotations__ if not name.startswith("_"))


# Environment variable suffix -> Settings field.
_ENV_FIELDS = {
    "OUTPUT": "output",
    "FORMAT": "format",
    "STACK_DEPTH": "stack_depth",
    "QUEUE_SIZE": "queue_size",
    "SKIP_MODULES": "skip_modules",
    "RATE_LIMIT": "rate_limit",
    "REDACT": "redact",
    "PATH_ROOT": "path_root",
    "DUMP_SIGNAL": "dump_signal",
    "SNAPSHOT_INTERVAL": "snapshot_interval",
    "SPEEDUPS": "speedups",
    "COROUTINE_ORIGIN": "coroutine_origin",
    "STUCK_S": "stuck_s",
    "BLOCK_MS": "block_ms",
}
# Names that are read elsewhere, and so are not unknown: activation, and the development
# setting that simulates another interpreter's shape (agent.interp.shape).
_OTHER_KNOWN = frozenset({ENV_PREFIX, "ASYNCIO_AGENT_INTERP_SHAPE"})


def is_enabled(environ: Mapping[str, str]) -> bool:
    """Whether ``ASYNCIO_AGENT`` asks for the agent; an unknown value means on."""
    raw = environ.get(ENV_PREFIX)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _FALSE:
        return False
    if value not in _TRUE:
        warn_once(
            ENV_PREFIX,
            f"{ENV_PREFIX}={raw!r} is not one of 1/true/yes/on or 0/false/no/off; "
            "using 1 (the agent is on)",
        )
    return True


def _whole_number(name: str, raw: object, default: int, low: int, high: int) -> int:
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = int(str(raw).strip()) if not isinstance(raw, int) else raw
    except ValueError:
        warn_once(name, f"{name}={raw!r} is not a whole number; using {default}")
        return default
    if value < low:
        warn_once(name, f"{name}={raw!r} is below {low}; using {low}")
        return low
    if value > high:
        warn_once(name, f"{name}={raw!r} is above {high}; using {high}")
        return high
    return value


def _output(name: str, raw: object) -> str:
    value = str(raw).strip()
    if not value:
        warn_once(name, f"{name}={raw!r} is empty; using 'stderr'")
        return "stderr"
    return value


def _format(name: str, raw: object) -> str:
    value = str(raw).strip().lower()
    if value not in FORMATS:
        warn_once(name, f"{name}={raw!r} is not 'json' or 'console'; using 'json'")
        return "json"
    return value


def _modules(name: str, raw: object) -> tuple[str, ...]:
    items = [str(item) for item in raw] if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return tuple(item.strip() for item in items if item.strip())


def _redact(name: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in _TRUE:
        return True
    if not value:
        warn_once(name, f"{name}={raw!r} is empty; using 0 (messages are kept)")
        return False
    if value not in _FALSE:
        # Unclear about privacy: err on the side of redacting.
        warn_once(name, f"{name}={raw!r} is not one of 1/true/yes/on or 0/false/no/off; using 1")
        return True
    return False


def _speedups(name: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in _FALSE and value:
        return False
    if value not in _TRUE:
        warn_once(name, f"{name}={raw!r} is not one of 1/true/yes/on or 0/false/no/off; using 1")
    return True


MIN_BLOCK_MS = 10
"""The smallest blocking threshold: the heartbeat runs every quarter of it."""


def _block_ms(name: str, raw: object) -> int:
    value = _whole_number(name, raw, 100, 0, 3_600_000)
    if 0 < value < MIN_BLOCK_MS:
        warn_once(name, f"{name}={raw!r} is below {MIN_BLOCK_MS}; using {MIN_BLOCK_MS}")
        return MIN_BLOCK_MS
    return value


def _path_root(name: str, raw: object) -> Optional[str]:
    if raw is None:
        return None
    value = str(raw).strip()
    if not value:
        warn_once(name, f"{name}={raw!r} is empty; using none (paths are kept as they are)")
        return None
    if not os.path.isabs(value):
        absolute = os.path.abspath(value)
        warn_once(name, f"{name}={raw!r} is not an absolute path; using {absolute!r}")
        return absolute
    return os.path.normpath(value)


def _signal_name(name: str, raw: object) -> str:
    import signal

    text = str(raw).strip().upper()
    if not text or text.lower() in _FALSE:
        return ""
    full = text if text.startswith("SIG") else "SIG" + text
    if not isinstance(getattr(signal, full, None), signal.Signals) or full in (
        "SIGKILL",
        "SIGSTOP",
    ):
        warn_once(name, f"{name}={raw!r} is not a signal that can be caught here; using '' (off)")
        return ""
    return full


def _seconds(name: str, raw: object) -> float:
    import math

    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(str(raw).strip() or "0")
    except ValueError:
        warn_once(name, f"{name}={raw!r} is not a number of seconds; using 0 (off)")
        return 0.0
    if not math.isfinite(value) or value < 0:
        warn_once(name, f"{name}={raw!r} is not a finite number >= 0; using 0 (off)")
        return 0.0
    if 0 < value < 0.1:
        warn_once(name, f"{name}={raw!r} is below 0.1; using 0.1")
        return 0.1
    if value > 86_400:
        warn_once(name, f"{name}={raw!r} is above 86400 (a day); using 86400")
        return 86_400.0
    return value


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "output": _output,
    "format": _format,
    "stack_depth": lambda name, raw: _whole_number(name, raw, 8, 0, 256),
    "queue_size": lambda name, raw: _whole_number(name, raw, 10_000, 1, 10_000_000),
    "skip_modules": _modules,
    "rate_limit": lambda name, raw: _whole_number(name, raw, 1000, 0, 10_000_000),
    "redact": _redact,
    "path_root": _path_root,
    "dump_signal": _signal_name,
    "snapshot_interval": _seconds,
    "speedups": _speedups,
    "coroutine_origin": lambda name, raw: _whole_number(name, raw, 0, 0, 64),
    "stuck_s": _seconds,
    "block_ms": _block_ms,
}


def load_settings(environ: Mapping[str, str], **options: Any) -> Settings:
    """Build :class:`Settings` from the environment, overridden by ``options``.

    Unknown ``ASYNCIO_AGENT_*`` variables are named in a warning (likely typos);
    unknown keyword options raise :class:`TypeError`, as any Python call would.
    """
    unknown = sorted(set(options) - set(_PARSERS))
    if unknown:
        raise TypeError(f"install() got unexpected keyword argument(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX + "_"):
            continue
        suffix = key[len(ENV_PREFIX) + 1 :]
        field = _ENV_FIELDS.get(suffix)
        if field is None:
            if key not in _OTHER_KNOWN:
                known = ", ".join(f"{ENV_PREFIX}_{s}" for s in _ENV_FIELDS)
                warn_once(key, f"{key} is not a setting of the agent (known: {known}); ignored")
            continue
        values[field] = _PARSERS[field](key, environ[key])
    for field, raw in options.items():
        values[field] = _PARSERS[field](f"install({field}=...)", raw)
    return Settings(**values)
