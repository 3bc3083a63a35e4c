"""Switches the asyncio agent on when ``ASYNCIO_AGENT=1``; put this folder on PYTHONPATH.

Then runs your own ``sitecustomize`` if one is further down ``sys.path``.
"""

try:
    from agent.startup import activate_from_environment, run_next_sitecustomize
except ImportError:  # the agent package is not installed in this interpreter
    pass
else:
    activate_from_environment()
    run_next_sitecustomize(__file__)
