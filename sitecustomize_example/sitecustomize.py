"""Switches the asyncio agent on when ``ASYNCIO_AGENT=1``; put this folder on PYTHONPATH.

Then, always, runs your own ``sitecustomize`` if one is further down ``sys.path``: also
when the agent is off, not installed for this interpreter, or fails to start. This file
imports nothing of the agent's unless ``ASYNCIO_AGENT`` asks for it, and nothing heavy.
"""

import os
import sys

_OFF = ("", "0", "false", "no", "off")


def _activate_agent() -> None:
    raw = os.environ.get("ASYNCIO_AGENT")
    if raw is None or raw.strip().lower() in _OFF:
        return
    try:
        from asyncio_agent.startup import activate_from_environment
    except Exception as exc:  # not installed for this Python, or broken: run without it
        if isinstance(exc, ImportError) and exc.name in ("asyncio_agent", "asyncio_agent.startup"):
            why = "is not installed"
        else:
            why = f"could not be imported ({type(exc).__name__}: {exc})"
        if sys.stderr is not None:
            sys.stderr.write(
                f"asyncio-agent: warning: ASYNCIO_AGENT={raw} but the asyncio_agent package "
                f"{why} for {sys.executable}; running without it\n"
            )
        return
    activate_from_environment()


def _run_next_sitecustomize() -> None:
    """Run the ``sitecustomize`` this one shadows on ``sys.path``, if there is one.

    Python imports only the first ``sitecustomize`` it finds; a user's own one further
    down ``sys.path`` would silently stop working. Errors in it are printed the way
    ``site.py`` prints them, and never stop the program.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    # A few stat calls first, so that the common case (no other sitecustomize) costs
    # microseconds, not the import machinery's full search.
    if not any(_may_hold_sitecustomize(entry) for entry in others):
        return

    import importlib.machinery  # cheap; importlib.util would pull in contextlib & co.

    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is None or spec.loader is None or spec.origin is None:
        return
    if os.path.realpath(spec.origin) == os.path.realpath(__file__):
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


try:
    _activate_agent()
finally:
    _run_next_sitecustomize()
