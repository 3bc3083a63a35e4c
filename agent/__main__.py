"""``python -m agent``: the command-line tools (run, report, doctor).

Owns nothing but the entry point; the tools live in :mod:`agent.cli`.
"""

from __future__ import annotations

import sys

from agent.cli import main

if __name__ == "__main__":
    # Named as the agent's module from here on, so that creation stacks of the program
    # run by `python -m agent run` leave this launcher frame out (they skip "agent.*").
    __name__ = "agent.__main__"
    sys.exit(main())
