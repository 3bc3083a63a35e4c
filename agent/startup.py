"""Start-up activation: what a ``sitecustomize`` or ``.pth`` line runs.

Owns reading ``ASYNCIO_AGENT`` at interpreter start. With the agent off it imports
nothing more. (Chaining to a user's own ``sitecustomize`` is the job of the shipped
``sitecustomize_example/sitecustomize.py`` itself, so that it happens even where this
package is not installed.)
"""

from __future__ import annotations

import os


def activate_from_environment() -> bool:
    """Install the agent if ``ASYNCIO_AGENT`` asks for it; never raises."""
    raw = os.environ.get("ASYNCIO_AGENT")
    if raw is None or raw.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    try:
        from .config import is_enabled

        if not is_enabled(os.environ):
            return False
        from . import runtime

        runtime.install()
        return True
    except Exception as exc:  # the host program must start regardless
        from .notices import warn_once

        warn_once("startup", f"could not start ({type(exc).__name__}: {exc}); running without it")
        return False
