"""A hostile review of issue 17 items 6-8 (the original's configs, in_progress issues resumed first, --workers 0,
idle workers, worktree_base inside a repository): can it lose work or lie?"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, git
from workers_fixtures import monitor_env, project, tmux_socket  # noqa: F401

PACKAGE = ROOT / "scripts" / "proof-workers"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=PACKAGE, env=monitor_env(env),
                          capture_output=True, text=True, timeout=120)


def issue_of(doc: dict, number: int) -> dict:
    return next(i for i in doc["projects"][0]["issues"] if i["number"] == number)


def row_of(doc: dict, number: int) -> str:
    from orchestrator.report import status_lines

    return next(line for line in "\n".join(status_lines(doc)).splitlines() if line.startswith(f"#{number} "))


# --- a resumed issue whose dependencies are not complete ----------------------------------------------------


@pytest.mark.parametrize("dependency,state", [("failed", "blocked"), ("pending", "waiting")])
def test_an_issue_left_in_progress_behind_an_unfinished_dependency_is_not_shown_as_running(project, dependency,
                                                                                          state):
    """Broke: status showed `in_progress (resuming at write_tests)` for an issue that cannot be resumed while its
    dependency is failed (the monitor had exited: `done` stayed false, and no failure named it) or still pending."""
    from orchestrator.monitor import _finished
    from orchestrator.report import status_document
    from orchestrator.run import open_run

    project([{"number": 1, "title": "dep", "status": dependency},
             {"number": 2, "title": "left", "status": "in_progress", "assigned_worker": 1, "pipeline_stage": 1,
              "depends_on": [1]}])
    run = open_run()
    doc = status_document(run)
    left = issue_of(doc, 2)
    assert (left["status"], left["state"], left["resuming_at"]) == ("in_progress", state, "write_tests")
    assert f"{state} (resuming at write_tests)" in row_of(doc, 2)
    if dependency == "failed":
        assert left["blocked_by"] == [1]
        assert {"issue": 2, "reason": "waits on failed #1"}.items() <= next(
            f for f in doc["failures"] if f["issue"] == 2).items()
        assert doc["done"] and _finished(run)  # the monitor stops here, and status agrees
    else:
        assert not doc["done"] and not _finished(run)  # #1 still runs first

