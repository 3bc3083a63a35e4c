"""How long a thread of this process has run on a CPU, and waited for one (Linux).

Owns reading ``/proc/self/task/<tid>/schedstat``. A thread that waits for the GIL, a
lock or I/O sleeps and is in neither count; a thread that is ready to run but gets no
CPU (an overloaded machine) adds to the waiting count. Never raises: where the file
does not exist (another system, a thread that ended) the answer is None.
"""

from __future__ import annotations

import os
from typing import Optional

_AVAILABLE = os.path.exists("/proc/self/schedstat")


def cpu_times(native_id: int) -> Optional[tuple[float, float]]:
    """(seconds on a CPU, seconds ready but waiting for a CPU) of a thread, or None."""
    if not _AVAILABLE:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/schedstat", "rb") as stream:
            fields = stream.read().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None
