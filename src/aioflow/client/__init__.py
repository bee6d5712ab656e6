"""The Python client: the same methods straight through Redis or over HTTP."""
