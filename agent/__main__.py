"""``python -m asyncio_agent``: the command-line tools (run, report, doctor).

Owns nothing but the entry point; the tools live in :mod:`asyncio_agent.cli`. Its frame
is the agent's own file, so creation stacks of a program run by ``run`` leave it out.
"""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
