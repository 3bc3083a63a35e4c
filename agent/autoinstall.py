"""``import asyncio_agent.autoinstall``: switch the agent on if ``ASYNCIO_AGENT`` says so.

For a ``.pth`` line or an existing ``sitecustomize``. Does nothing else.
"""

from .startup import activate_from_environment

activate_from_environment()
