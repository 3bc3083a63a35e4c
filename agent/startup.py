"""Start-up activation: what a ``sitecustomize`` or ``.pth`` line runs.

Owns reading ``ASYNCIO_AGENT`` at interpreter start and chaining to the next
``sitecustomize`` on ``sys.path``. With the agent off it imports nothing more.
"""

from __future__ import annotations

import os
import sys


def activate_from_environment() -> bool:
    """Install the agent if ``ASYNCIO_AGENT`` asks for it; never raises."""
    raw = os.environ.get("ASYNCIO_AGENT")
    if raw is None or raw.strip().lower() in ("", "0", "false", "no", "off"):
        return False
    try:
        from agent.config import is_enabled

        if not is_enabled(os.environ):
            return False
        import agent

        agent.install()
        return True
    except Exception as exc:  # the host program must start regardless
        from agent.notices import warn_once

        warn_once("startup", f"could not start ({type(exc).__name__}: {exc}); running without it")
        return False


def run_next_sitecustomize(this_file: str) -> None:
    """Run the ``sitecustomize`` that ours shadows on ``sys.path``, if there is one.

    Python imports only the first ``sitecustomize`` it finds; a user's own one further
    down ``sys.path`` would silently stop working. Errors in it are printed the way
    ``site.py`` prints them, and never stop the program.
    """
    here = os.path.dirname(os.path.abspath(this_file))
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    # A few stat calls first, so that the common case (no other sitecustomize) costs
    # microseconds, not the import machinery's full search.
    if not any(_may_hold_sitecustomize(entry) for entry in others):
        return

    import importlib.machinery  # cheap; importlib.util would pull in contextlib & co.

    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None or spec.origin is None:
        return
    if os.path.realpath(spec.origin) == os.path.realpath(this_file):
        return
    module = spec.loader.create_module(spec) or type(sys)(spec.name)
    module.__spec__ = spec
    module.__loader__ = spec.loader
    module.__file__ = spec.origin
    ours = sys.modules.get("sitecustomize")
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        if ours is not None:
            sys.modules["sitecustomize"] = ours
        sys.stderr.write(
            f"Error in sitecustomize ({spec.origin}); set PYTHONVERBOSE for traceback:\n"
            f"{type(exc).__name__}: {exc}\n"
        )


def _may_hold_sitecustomize(entry: str) -> bool:
    folder = entry or os.curdir
    if not os.path.isdir(folder):
        return os.path.isfile(folder)  # an existing zip archive: let importlib look inside
    return any(
        os.path.exists(os.path.join(folder, name))
        for name in ("sitecustomize.py", "sitecustomize.pyc", "sitecustomize")
    )
