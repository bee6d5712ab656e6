"""Runs as the outside sees them: submitting (one or in bulk), waiting, reading
state, steering, reruns, schedules and the registry of served flow versions.
Shared by the client, the gateway and the worker (which submits scheduled runs)."""
