"""The orchestrator's shared library: every front door (tasks.py, scripts/, make) calls into it."""
