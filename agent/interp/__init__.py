"""Private names of CPython, asyncio and test runners: one module per subject, none elsewhere."""
