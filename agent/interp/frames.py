"""Frames: how the agent reads the stack of the code creating a task.

Owns the use of ``sys._getframe`` (CPython's frame access; PyPy has it too). The frame
attributes read elsewhere (``f_code``, ``f_lasti``, ``f_back``, ``f_lineno``,
``f_globals``) are the documented ones.
"""

from __future__ import annotations

import sys

getframe = sys._getframe
"""``getframe(depth)``: the frame ``depth`` calls above the caller."""
