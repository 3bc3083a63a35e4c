"""Outputs: one module per destination. A sink receives Reports and knows nothing of asyncio."""
