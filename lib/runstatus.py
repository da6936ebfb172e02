"""How a repo's run ended: a leaf (standard library only), so the tables (lib.views) and the runs (lib.batch)
both name it without importing each other."""
from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """How a repo's run ended (build, test, workflows, test-all, foreach); the value is what state files and JSON
    say."""

    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"
    ERROR = "error"
