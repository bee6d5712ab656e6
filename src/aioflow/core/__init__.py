"""The base every layer stands on: errors, the value codec, the clock, settings,
security primitives and small asyncio helpers. Imports nothing else of aioflow."""
