"""Fixtures for tests of the real Claude Code CLI: the pinned CLI from .tools/ and the stand-in Messages API."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from conftest import REQUIRE_SYSTEM, ROOT
from fake_anthropic import FakeAnthropic

CLAUDE = ROOT / ".tools" / "node_modules" / ".bin" / "claude"


def require_claude() -> Path:
    """The pinned CLI `.ci/run` installs into .tools/; skips with the reason when it is absent (fails in CI)."""
    if not os.access(CLAUDE, os.X_OK):
        why = f"the Claude Code CLI is not installed at {CLAUDE} (.ci/run installs the pinned version)"
        if REQUIRE_SYSTEM:
            pytest.fail(why + " but ORCHESTRATOR_REQUIRE_SYSTEM_TESTS=1")
        pytest.skip(why)
    return CLAUDE


@pytest.fixture
def fake_api():
    with FakeAnthropic() as api:
        yield api


def claude_env(api: FakeAnthropic, home: Path, max_retries: int = 2) -> dict[str, str]:
    """What the CLI needs to talk to the stand-in only: its url, a dummy key, no other traffic, a HOME in tmp
    (never the real ~/.claude), few retries (a rate-limited run ends in seconds)."""
    env = {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "dummy", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
           "CLAUDE_CODE_MAX_RETRIES": str(max_retries), "HOME": str(home), "DISABLE_AUTOUPDATER": "1"}
    if os.getuid() == 0:
        env["IS_SANDBOX"] = "1"  # the CLI refuses to skip permissions as root otherwise
    return env


def claude_command(api: FakeAnthropic, home: Path, max_retries: int = 2, extra: str = "") -> str:
    """An agent_command running the pinned CLI against the stand-in (assignments in the command: the panes' shell
    may not have the test's environment)."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in claude_env(api, home, max_retries).items())
    return (f"{env} {shlex.quote(str(require_claude()))} -p --output-format stream-json --verbose "
            f"--dangerously-skip-permissions {extra}< {{{{prompt_file}}}}")
