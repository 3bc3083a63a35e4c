"""``python -m asyncio_agent doctor``: would the agent activate here, and how would it run?

Owns the checks and their text/JSON rendering. Reads the environment and imports
modules to look at them; never installs the agent and never changes a setting.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.metadata
import importlib.util
import io
import json
import os
import site
import sys
from typing import Any, Optional

from ..interp.compiled import status as hot_path_status


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.read()
    except OSError:
        return ""


def _activation() -> dict[str, Any]:
    from ..config import is_enabled

    raw = os.environ.get("ASYNCIO_AGENT")
    with contextlib.redirect_stderr(io.StringIO()):
        enabled = is_enabled(os.environ)
    hooks: list[str] = []
    spec = importlib.util.find_spec("sitecustomize") if "sitecustomize" not in sys.modules else None
    module = sys.modules.get("sitecustomize")
    origin = getattr(module, "__file__", None) or (spec.origin if spec is not None else None)
    if origin and os.path.exists(origin) and "asyncio_agent" in _read(origin):
        hooks.append(f"sitecustomize: {origin}")
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "*.pth"))):
            if "asyncio_agent.autoinstall" in _read(path):
                hooks.append(f".pth: {path}")
    if not enabled:
        verdict = "no: ASYNCIO_AGENT is not set to 1/true/yes/on"
    elif hooks:
        verdict = "yes: ASYNCIO_AGENT is on and a start-up hook is in place"
    else:
        verdict = (
            "not at start-up: ASYNCIO_AGENT is on but no sitecustomize/.pth hook was found "
            "(use `python -m asyncio_agent run`, PYTHONPATH=.../sitecustomize_example, "
            "or a .pth line)"
        )
    return {"ASYNCIO_AGENT": raw, "would_activate": verdict, "start_up_hooks": hooks}


def _settings() -> tuple[dict[str, Any], list[str]]:
    from .. import notices
    from ..config import load_settings

    # Fresh "already said" memory: a start-up activation may have said them all before.
    said, notices._already_said = notices._already_said, set()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            settings = load_settings(os.environ)
    finally:
        notices._already_said = said
    warnings = [line for line in captured.getvalue().splitlines() if line.strip()]
    return settings._asdict(), warnings


def _output(settings: dict[str, Any]) -> dict[str, Any]:
    target = str(settings.get("output", "stderr"))
    if target.lower() in ("stderr", "stdout"):
        where = f"{target.lower()} ({settings.get('format')})"
    else:
        folder = os.path.dirname(os.path.abspath(target)) or "."
        if os.path.exists(target):
            writable = os.access(target, os.W_OK)
        else:
            writable = os.access(folder, os.W_OK)
        where = (
            f"{os.path.abspath(target)} (JSON lines, {'writable' if writable else 'NOT writable'})"
        )
    otel = {key: os.environ[key] for key in sorted(os.environ) if key.startswith("OTEL_")}
    return {
        "events": where,
        "opentelemetry_sdk": _version("opentelemetry-sdk"),
        "otel_environment": otel,
    }


def _capabilities() -> dict[str, Any]:
    """What the seam (agent.interp) finds in this interpreter's asyncio."""
    import asyncio.base_events
    import asyncio.tasks

    from ..interp.loops import keyword_only_signature
    from ..interp.shape import SIMULATE_VARIABLE, probe, simulated

    shape = probe(asyncio.tasks)
    create_task = asyncio.base_events.BaseEventLoop.create_task
    keywords = keyword_only_signature(getattr(create_task, "__wrapped__", create_task))
    return {
        "shape": shape.name,
        "simulated": f"{SIMULATE_VARIABLE}={simulated()}" if simulated() else None,
        "task_registry": (
            f"asyncio.tasks.{shape.registry_name} (hookable: every task enters it)"
            if shape.registry is not None
            else "none the agent can hook: each task keeps its record as an attribute"
        ),
        "live_tasks": shape.live_tasks_source,
        "live_tasks_complete": shape.complete,
        "create_task_signature": (
            f"(coro, *, {', '.join(keywords)})" if keywords else "other: forwarded untouched"
        ),
    }


def _features() -> dict[str, Any]:
    import asyncio

    uvloop_found = importlib.util.find_spec("uvloop") is not None
    return {
        "python": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "executable": sys.executable,
        "asyncio_loop_classes": ["asyncio.BaseEventLoop (selector, proactor)"]
        + (["uvloop.Loop"] if uvloop_found else []),
        "uvloop": _version("uvloop") if uvloop_found else None,
        "eager_tasks": hasattr(asyncio, "eager_task_factory"),
        "task_group": hasattr(asyncio, "TaskGroup"),
        "capabilities": _capabilities(),
        "structlog": _version("structlog"),
        "asyncio_debug_env": os.environ.get("PYTHONASYNCIODEBUG"),
    }


def _never_awaited_hook(speedups: bool) -> str:
    from ..interp.compiled import prelude_type

    if not speedups:
        return "Python twin of CPython's function (ASYNCIO_AGENT_SPEEDUPS=0)"
    if prelude_type() is None:
        return "Python twin of CPython's function (asyncio_agent.interp._prelude is not built)"
    return "compiled prelude (asyncio_agent.interp._prelude)"


def collect() -> dict[str, Any]:
    """Everything ``doctor`` reports, as plain values."""
    settings, warnings = _settings()
    features = _features()
    features["hot_path"] = hot_path_status(bool(settings.get("speedups", True)))
    features["never_awaited_hook"] = _never_awaited_hook(bool(settings.get("speedups", True)))
    return {
        "agent_version": _version("asyncio-agent"),
        "activation": _activation(),
        "settings": settings,
        "setting_warnings": warnings,
        "output": _output(settings),
        "features": features,
    }


def _yes(value: object) -> str:
    if value is True:
        return "yes"
    if value is False or value is None:
        return "no"
    return str(value)


def render_text(facts: dict[str, Any]) -> str:
    """The doctor's findings for a person."""
    activation, output, features = facts["activation"], facts["output"], facts["features"]
    lines = [f"asyncio-agent {facts['agent_version'] or '(not installed as a package)'}", ""]
    lines.append("Activation")
    lines.append(f"  ASYNCIO_AGENT        {activation['ASYNCIO_AGENT']!r}")
    lines.append(f"  would activate       {activation['would_activate']}")
    for hook in activation["start_up_hooks"] or ["(none found)"]:
        lines.append(f"  start-up hook        {hook}")
    lines += ["", "Settings (from ASYNCIO_AGENT_* variables)"]
    for name, value in facts["settings"].items():
        lines.append(f"  {name:<20} {value!r}")
    for warning in facts["setting_warnings"]:
        lines.append(f"  ! {warning}")
    lines += ["", "Output"]
    lines.append(f"  events               {output['events']}")
    lines.append(f"  opentelemetry-sdk    {output['opentelemetry_sdk'] or 'not installed'}")
    for key, value in output["otel_environment"].items():
        lines.append(f"  {key:<20} {value}")
    if not output["otel_environment"]:
        lines.append("  OTEL_* variables     (none set)")
    lines += ["", "Python and asyncio"]
    lines.append(f"  python               {features['python']} ({features['implementation']})")
    lines.append(f"  executable           {features['executable']}")
    lines.append(f"  loop classes patched {', '.join(features['asyncio_loop_classes'])}")
    lines.append(f"  uvloop               {features['uvloop'] or 'not importable'}")
    lines.append(f"  eager tasks          {_yes(features['eager_tasks'])}")
    lines.append(f"  TaskGroup            {_yes(features['task_group'])}")
    capabilities = features["capabilities"]
    lines.append(f"  asyncio shape        {capabilities['shape']}")
    if capabilities["simulated"]:
        lines.append(f"  simulated by         {capabilities['simulated']}")
    lines.append(f"  task registry        {capabilities['task_registry']}")
    complete = capabilities["live_tasks_complete"]
    lines.append(
        f"  live tasks           {'all' if complete else 'PENDING ONLY'}: "
        f"{capabilities['live_tasks']}"
    )
    lines.append(f"  create_task          {capabilities['create_task_signature']}")
    lines.append(f"  structlog            {features['structlog'] or 'MISSING (required)'}")
    lines.append(f"  hot path             {features['hot_path']}")
    lines.append(f"  never-awaited hook   {features['never_awaited_hook']}")
    if features["asyncio_debug_env"]:
        lines.append(f"  PYTHONASYNCIODEBUG   {features['asyncio_debug_env']} (slow: debug mode)")
    return "\n".join(lines) + "\n"


def doctor(style: str) -> int:
    """Print the findings; always 0 (a finding is not a failure)."""
    facts = collect()
    if style == "json":
        sys.stdout.write(json.dumps(facts, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(render_text(facts))
    return 0
