"""The worker: reading vertex messages, running node functions as asyncio tasks,
applying completions, housekeeping, and the processes around it (supervisor,
health probe)."""
