"""The watchdog thread: notices a loop whose heartbeat is late and samples what blocks it.

Owns the registry of running loops' beats (agent.heartbeat), the one thread that
watches them, the stack sample taken while a loop is still blocked, and turning a stall
that ended into one :class:`~asyncio_agent.stall.Stall` on the reporter's queue (or a
rate-limited count). It sleeps until the next moment a beat could be late, and forever
while no loop runs. It never changes a loop's state (it only asks ``is_running()`` and
``current_task(loop)``), and keeps no frame or task once a sample is made: samples are
plain strings.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, Optional, Union

from .detect import Admit, Decoder
from .heartbeat import TICK_CODE, Beat
from .interp import running as interp
from .interp.tasks import coroutine_name, task_name
from .records import record_of
from .report import Suppressed
from .sites import INTERNAL_MODULES, PACKAGE_DIR, SPAN_ATTR, Site
from .stall import (
    BLOCKED,
    IN_CALLBACK,
    IN_TASK,
    NOT_SAMPLED,
    NOT_SCHEDULED,
    OUTSIDE_CALLBACKS,
    Stall,
)
from .threadstat import cpu_times

_monotonic = time.monotonic
_wall = time.time

MAX_FRAMES = 48
"""Frames kept in ``blocking_stack`` (the innermost: where it blocks)."""
_MAX_WALK = 512
STARVED = 0.5
"""A stall whose loop thread spent more than this share of the time from the watchdog's
last look before it to its end waiting for a CPU is the machine's, not the running
code's."""
_LOOP_MODULES = (*INTERNAL_MODULES, "selectors")
"""Frames of these modules are the loop's own code, not a callback's."""

Submit = Callable[[Union[Stall, Suppressed]], None]
CpuTimes = Optional[tuple[float, float]]
Ended = tuple[Beat, float, float, CpuTimes, Optional["Sample"]]


FIRST_LOOK = 0.75
"""The watchdog first samples a loop whose heartbeat is late by this share of the
threshold (a stall that ends just past the threshold still has a stack), then again at
the threshold (closer to what blocks at the end)."""


def interval_for(threshold: float) -> float:
    """The heartbeat interval for a threshold: a third of it, within 5-250 ms.

    A stall is measured from the moment a tick was due, so it may have begun up to one
    interval earlier: with a third, every stall longer than 4/3 of the threshold is
    caught, and an idle loop wakes 3 times per threshold (30 times a second at 100 ms).
    """
    return min(max(threshold / 3, 0.005), 0.25)


class Sample:
    """What the loop thread was doing while blocked (plain values only)."""

    __slots__ = (
        "blocked_in",
        "callback",
        "coroutine",
        "cpu",
        "due",
        "site",
        "span",
        "stack",
        "taken",
        "task_name",
    )

    def __init__(self, due: float) -> None:
        self.due = due
        """The beat's ``due`` this sample belongs to: one stall."""
        self.taken = 0
        self.blocked_in = OUTSIDE_CALLBACKS
        self.stack: tuple[str, ...] = ()
        self.task_name: Optional[str] = None
        self.coroutine: Optional[str] = None
        self.site: Optional[Site] = None
        self.span: object = None
        self.callback: Optional[str] = None
        self.cpu: Optional[tuple[float, float, float]] = None
        """(when, seconds on a CPU, seconds waiting for one) of the loop thread at the
        watchdog's last look before the stall, to tell a thread that computes or sleeps
        from one that gets no CPU."""


def _is_loop_code(frame: FrameType) -> bool:
    code = frame.f_code
    if code.co_filename.startswith(PACKAGE_DIR):
        return True
    module = frame.f_globals.get("__name__")
    return isinstance(module, str) and any(
        module == prefix or module.startswith(prefix + ".") for prefix in _LOOP_MODULES
    )


def _describe(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {getattr(code, 'co_qualname', code.co_name)}"


class Watchdog:
    """One thread watching the heartbeats of every running instrumented loop."""

    def __init__(self, threshold_ms: int, decode: Decoder, submit: Submit, admit: Admit) -> None:
        self.threshold = threshold_ms / 1000.0
        self.interval = interval_for(self.threshold)
        self._decode = decode
        self._submit = submit
        self._admit = admit
        self._lock = threading.Lock()
        self._beats: dict[int, Beat] = {}  # id(loop) -> its beat, while it runs
        # thread id -> the beat started by asyncio's "running loop" call in that thread
        self._by_thread: dict[int, Beat] = {}
        self._ended: collections.deque[Ended] = collections.deque()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._stopped = False
        self._run_codes: frozenset[CodeType] = frozenset()

    # -- loop threads --------------------------------------------------------------

    def _start(self, loop: Any, outer_depth: int, joined: bool) -> Optional[Beat]:
        """Start ``loop``'s heartbeat (in its thread); None if it already has one or
        cannot take a timer (a closed loop raises its own error right after)."""
        if self._stopped:
            return None
        try:
            with self._lock:
                old = self._beats.get(id(loop))
                if old is not None and old.loop is loop:
                    if old.running and not old.joined:
                        return None  # seen both ways (a wrapper and asyncio's call)
                    old.running = False
                beat = Beat(loop, self.interval, self.threshold, self._stall_ended, outer_depth)
                beat.joined = joined
                self._beats[id(loop)] = beat
                first = len(self._beats) == 1
            self._ensure_thread()
            if first or joined:
                self._wake.set()  # the thread sleeps without a time-out while no loop runs
            return beat
        except Exception:
            return None

    def loop_entered(self, loop: Any, outer_depth: int) -> None:
        """``loop`` starts running in this thread (asyncio's own call, see
        agent.interp.running.RunningLoopHook)."""
        beat = self._start(loop, outer_depth, joined=False)
        if beat is not None:
            self._by_thread[beat.thread_id] = beat

    def loop_left(self) -> None:
        """The loop running in this thread stops."""
        beat = self._by_thread.pop(threading.get_ident(), None)
        if beat is not None:
            self.loop_stopped(beat)

    def loop_starting(self, loop: Any, outer_depth: int) -> Optional[Beat]:
        """A wrapped ``run_forever`` begins (agent.heartbeat.RunForeverPatch)."""
        return self._start(loop, outer_depth, joined=False)

    def join_running(self, loop: Any) -> None:
        """Start the heartbeat of a loop already running in this thread (install()
        called inside a loop): it is dropped once the loop is seen stopped."""
        self._start(loop, 0, joined=True)

    def loop_stopped(self, beat: Beat) -> None:
        """``run_forever`` returns or raises (loop thread): stop the heartbeat."""
        try:
            beat.stop()
            with self._lock:
                if self._beats.get(id(beat.loop)) is beat:
                    del self._beats[id(beat.loop)]
        except Exception:
            pass

    def _stall_ended(self, beat: Beat, due: float, ended: float, cpu: CpuTimes) -> None:
        # Loop thread, rarely (a stall longer than the threshold just ended). The sample
        # goes with it: the watchdog may sample the loop's next stall before it gets to
        # this one.
        self._ended.append((beat, due, ended, cpu, beat.sample))
        self._wake.set()

    # -- any thread ----------------------------------------------------------------

    def drain(self) -> None:
        """Queue every stall that has ended (before a flush: the thread may sleep)."""
        ended = self._ended
        while True:
            try:
                beat, due, end, cpu, sample = ended.popleft()
            except IndexError:
                return
            try:
                self._finish(beat, due, end, cpu, sample)
            except Exception:
                pass

    def blocked_now(self) -> list[dict[str, Any]]:
        """Each running loop's thread and how long it has been blocked (0 if not)."""
        with self._lock:
            beats = list(self._beats.values())
        now = _monotonic()
        return [
            {"loop_thread": beat.thread_name, "blocked_s": round(max(0.0, now - beat.due), 3)}
            for beat in beats
            if beat.running
        ]

    def stop(self) -> None:
        """Stop watching (uninstall): beats stop ticking, the thread ends."""
        self._stopped = True
        with self._lock:
            for beat in self._beats.values():
                beat.running = False
            self._beats.clear()
            self._by_thread.clear()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)
        self.drain()

    # -- the watchdog thread -------------------------------------------------------

    def start(self) -> None:
        """Start the thread now, outside any loop (when asyncio is imported): starting a
        thread waits for it, which must not happen while a loop runs."""
        if not self._stopped:
            self._ensure_thread()

    def _ensure_thread(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        thread = threading.Thread(target=self._run, name="asyncio-agent-watchdog", daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        wake = self._wake
        while not self._stopped:
            wake.clear()  # before looking: a stall ending meanwhile wakes the next wait
            # Sample first: a loop blocked now (which may hold the GIL again soon) is
            # the one thing that cannot wait; a stall that ended keeps its sample.
            try:
                timeout = self._look()
            except Exception:
                timeout = 1.0
            self.drain()
            wake.wait(timeout)

    def _look(self) -> Optional[float]:
        """Sample every loop that is late; seconds until a loop could next be late."""
        with self._lock:
            beats = list(self._beats.values())
        if not beats:
            return None
        threshold = self.threshold
        first = threshold * FIRST_LOOK
        now = _monotonic()
        wake_at = now + 1.0
        for beat in beats:
            due = beat.due
            late = now - due
            sample = beat.sample
            taken = sample.taken if sample is not None and sample.due == due else 0
            if late < first:
                # Not late: note its thread's CPU times, to judge a stall that begins now.
                beat.cpu_mark = _cpu_now(beat)
                wake_at = min(wake_at, due + first)
                continue
            if beat.joined and not _is_running(beat.loop):
                self._forget(beat)
                continue
            # Sampled twice per stall: at FIRST_LOOK (in case it ends before we look
            # again) and at the threshold (closer to what blocks at the end).
            if taken == 0 or (taken == 1 and late >= threshold):
                new = self._sample(beat, due)
                if new is not None and beat.due == due:  # still the same stall
                    new.taken = taken + 1
                    new.cpu = sample.cpu if taken and sample is not None else beat.cpu_mark
                    beat.sample = new
            if late < threshold:
                wake_at = min(wake_at, due + threshold)
            # Else: the end is signalled by the loop (a tick, or run_forever returning).
        return max(0.0, wake_at - _monotonic())

    def _forget(self, beat: Beat) -> None:
        beat.running = False
        with self._lock:
            if self._beats.get(id(beat.loop)) is beat:
                del self._beats[id(beat.loop)]

    def _sample(self, beat: Beat, due: float) -> Optional[Sample]:
        """What the loop thread is doing now, as plain values; None if it is our tick."""
        if not self._run_codes:
            self._run_codes = interp.handle_run_codes()
        frame = interp.thread_frame(beat.thread_id)
        task = interp.running_task(beat.loop)
        frames: list[FrameType] = []
        try:
            walker = frame
            while walker is not None and len(frames) < _MAX_WALK:
                frames.append(walker)  # innermost first
                walker = walker.f_back
            return self._classify(frames, task, due, beat.outer_depth)
        except Exception:
            return None
        finally:
            del frame, frames, task  # no frame or task outlives the sample

    def _classify(
        self, frames: list[FrameType], task: Any, due: float, outer_depth: int
    ) -> Optional[Sample]:
        if any(frame.f_code is TICK_CODE for frame in frames):
            return None  # the stall is over: the loop is running its heartbeat
        # frames[:boundary] run inside the loop (all of them if that is not known).
        known = 0 < outer_depth <= len(frames)
        boundary = len(frames) - outer_depth if known else len(frames)
        sample = Sample(due)
        if task is not None:
            sample.blocked_in = IN_TASK
            sample.task_name = task_name(task)
            sample.coroutine = coroutine_name(task)
            sample.site, _created = self._decode(record_of(task))
            sample.span = getattr(task, SPAN_ATTR, None)
        else:
            inside = frames[:boundary]
            run_frame = next((f for f in inside if f.f_code in self._run_codes), None)
            if run_frame is not None:
                sample.blocked_in = IN_CALLBACK
                sample.callback = interp.callback_name(interp.handle_callback(run_frame))
            elif known:
                # uvloop (a compiled loop): the outermost application frame inside the
                # loop's run is the callback's own.
                user = [f for f in inside if not _is_loop_code(f)]
                if user:
                    code = user[-1].f_code
                    sample.blocked_in = IN_CALLBACK
                    sample.callback = getattr(code, "co_qualname", code.co_name)
        shown = [f for f in reversed(frames) if not _is_loop_code(f)]
        if sample.blocked_in == OUTSIDE_CALLBACKS or not shown:
            # Where the loop itself waited is the story: keep its frames (not ours).
            shown = [
                f for f in reversed(frames) if not f.f_code.co_filename.startswith(PACKAGE_DIR)
            ]
        sample.stack = tuple(_describe(f) for f in shown[-MAX_FRAMES:])
        return sample

    def _finish(
        self, beat: Beat, due: float, end: float, cpu: CpuTimes, sample: Optional[Sample] = None
    ) -> None:
        """Queue the Stall of ``beat`` that was due at ``due`` and ended at ``end``
        (``sample``: the beat's sample when it ended, if any)."""
        if sample is None or sample.due != due:
            sample = beat.sample  # written just as the stall ended
        if sample is None or sample.due != due:
            sample = Sample(due)
            sample.blocked_in = NOT_SAMPLED
        elif _starved(sample.cpu, end, cpu, self.threshold):
            # Ready to run, but no CPU: what happened to be running is not to blame.
            starved = Sample(due)
            starved.blocked_in = NOT_SCHEDULED
            starved.stack = sample.stack
            sample = starved
        site = sample.site
        if not self._admit((site, BLOCKED)):
            self._submit(Suppressed(BLOCKED, site, sample.coroutine, False))
            return
        self._submit(
            Stall(
                duration_s=end - due,
                threshold_s=self.threshold,
                blocked_in=sample.blocked_in,
                blocking_stack=sample.stack,
                task_name=sample.task_name,
                coroutine=sample.coroutine,
                site=site,
                callback=sample.callback,
                loop_thread=beat.thread_name,
                pid=os.getpid(),
                timestamp=_wall() - (_monotonic() - end),
                span=sample.span,
            )
        )

    def after_fork_in_child(self) -> None:
        """In a forked child (agent.lifecycle, through the installation): only the
        forking thread exists there; keep its loop's beat, if any, and a new thread."""
        me = threading.get_ident()
        self._lock = threading.Lock()
        self._ended = collections.deque()
        self._wake = threading.Event()
        self._beats = {key: b for key, b in self._beats.items() if b.thread_id == me}
        self._by_thread = {key: b for key, b in self._by_thread.items() if key == me}
        self._thread = None
        if not self._stopped:
            self._ensure_thread()


def _cpu_now(beat: Beat) -> Optional[tuple[float, float, float]]:
    times = cpu_times(beat.native_id)
    return None if times is None else (_monotonic(), times[0], times[1])


def _starved(
    mark: Optional[tuple[float, float, float]], end: float, cpu: CpuTimes, threshold: float
) -> bool:
    """Whether, from the last look before the stall (``mark``) to its end, the loop thread
    mostly waited for a CPU (ready to run, not running: an overloaded machine) and ran
    too little to have blocked the loop itself. A thread that computes is to blame
    even on a busy machine; one that sleeps (``time.sleep``, blocking I/O) neither runs
    nor waits for a CPU, and is to blame too."""
    if mark is None or cpu is None:
        return False
    wall = end - mark[0]
    if wall < threshold / 2:
        return False  # looked at too briefly (the look itself may have had to wait)
    ran, waited = cpu[0] - mark[1], cpu[1] - mark[2]
    return waited > STARVED * wall and ran < threshold / 2


def _is_running(loop: Any) -> bool:
    try:
        return bool(loop.is_running())
    except Exception:
        return False
