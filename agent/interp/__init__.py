"""Interpreter internals: the one place that knows private names of asyncio, uvloop and CPython."""
