"""The one seam for interpreter internals: what asyncio, uvloop, CPython (and the
OpenTelemetry API) keep private, and the agent reads.

No module outside this package touches a private name of those. Each module here answers
questions for the others ("the live tasks, and are they all of them?", "the coroutine of
this task", "what is it waiting on", "can the registry be hooked?") and never raises.
What the running interpreter has is probed once, when the program imports asyncio
(agent.interp.shape), by looking at what the modules hold, not at version numbers. A new
CPython means reading this package.

Every private name the agent uses, per interpreter shape:

- every shape:
  ``Task._coro`` (falls back to ``get_coro()``), ``Task._fut_waiter``,
  ``Task._exception`` (read without retrieving it), ``Task._source_traceback`` (debug
  mode), ``BaseEventLoop._task_factory``, ``._debug``, ``._thread_id``,
  ``threading._active``, ``threading._register_atexit``, ``sys._getframe``, CPython's
  "unhandled KeyboardInterrupt" exit flag (re-set with ``exec``), ``WeakSet.data``;
  OpenTelemetry: ``opentelemetry.context._RUNTIME_CONTEXT._current_context``,
  ``opentelemetry.trace.propagation._SPAN_KEY``, ``opentelemetry.trace._TRACER_PROVIDER``,
  ``._set_tracer_provider``, and the SDK's internal logger names (otel_api);
  blocking detection (running): ``asyncio._set_running_loop`` (wrapped: every loop
  calls it as it starts and stops; uvloop reads it at its import),
  ``sys._current_frames()``, ``asyncio.events.Handle._run`` (its code and its ``self``),
  ``Handle._callback``, and ``asyncio.current_task(loop)`` asked from another thread.
- 3.10-3.11: ``asyncio.tasks._all_tasks`` (= ``_asyncio._all_tasks``), hooked by an
  instance attribute ``add`` (C tasks call ``add`` by name).
- 3.12-3.13: ``asyncio.tasks._scheduled_tasks`` (= ``_asyncio._scheduled_tasks``), hooked
  the same way, and ``_eager_tasks``; the compiled module reads
  ``_PyInterpreterFrame`` (``internal/pycore_frame.h``) and ``tstate->cframe`` /
  ``tstate->current_frame``.
- 3.14+ (3.14t, 3.15): ``_asyncio`` exports no registry (native tasks live in
  per-thread lists): nothing is hooked, each task keeps its record as an attribute, and
  live tasks are ``asyncio.all_tasks(loop)`` (public; pending only) over the loops the
  agent has seen create tasks. The compiled module is not built there.
"""
