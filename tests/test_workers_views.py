"""status --json and the dashboard: one document, blocked dependents, titles kept as data."""
from __future__ import annotations

import io
import json
import subprocess
import sys

from rich.console import Console

from conftest import ROOT
from workers_fixtures import monitor_env, project, tmux_socket  # noqa: F401
from workers_fixtures import orchestrator_cli as orchestrator  # noqa: E402

from orchestrator.dashboard import render, run_dashboard  # noqa: E402

PACKAGE = ROOT / "scripts" / "proof-workers"
TITLE = "[bold red]not markup[/] \"q\"; $(x)\nline two ✓"


def test_status_shows_blocked_waiting_and_next_eligible_and_the_dashboard_draws_the_same(project):
    project([{"number": 1, "title": "done", "status": "completed"},
             {"number": 2, "title": "broke", "status": "failed"},
             {"number": 3, "title": TITLE, "depends_on": [2]},
             {"number": 4, "title": "ready", "depends_on": [1]},
             {"number": 5, "title": "later", "depends_on": [4]},
             {"number": 6, "title": "behind the blocked one", "depends_on": [3, 4]}])
    result = orchestrator("status", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    states = {i["number"]: i["state"] for i in doc["projects"][0]["issues"]}
    assert states == {1: "completed", 2: "failed", 3: "blocked", 4: "pending", 5: "waiting", 6: "blocked"}
    assert doc["projects"][0]["issues"][5]["blocked_by"] == [2]
    assert doc["projects"][0]["issues"][2]["blocked_by"] == [2]
    assert doc["next_eligible"] == [{"project": "demo", "number": 4}] and not doc["done"]
    text = orchestrator("status")
    assert "blocked" in text.stdout and "worker-1" in text.stdout
    screen = io.StringIO()
    Console(file=screen, width=200, color_system=None).print(render(doc))
    drawn = screen.getvalue()
    assert "[bold red]not markup[/]" in drawn and "next eligible: #4" in drawn
    # Every state counted apart (a failed or blocked issue is never "done"), and the issue table's header row drawn.
    assert "demo: 1 completed, 1 failed, 2 blocked, 1 waiting, 1 pending of 6" in drawn
    assert "demo: 1 completed, 1 failed, 2 blocked, 1 waiting, 1 pending of 6" in text.stdout
    header = next(line for line in drawn.splitlines() if " issue " in line and " title " in line and "wave" in line)
    assert "depends on" in header
    frames = io.StringIO()
    calls = []
    run_dashboard(lambda: calls.append(1) or doc, interval=0.01,
                  console=Console(file=frames, width=120, color_system=None), frames=3)
    assert len(calls) == 4 and "worker-2" in frames.getvalue()
    once = orchestrator("dashboard", "--once")
    assert once.returncode == 0 and "not markup" in once.stdout


def test_inv_workers_tasks_call_the_same_code(project, inv):
    proj = project([{"number": 1, "title": "one"}])
    result = inv("workers.add-issue", "7", "--title", "from inv; $(x)", "--priority", "3", "--depends-on", "1")
    assert result.code == 0, result.err
    assert proj.issue(7) == {"number": 7, "title": "from inv; $(x)", "priority": 3, "depends_on": [1], "wave": 1,
                             "status": "pending", "assigned_worker": None}
    again = inv("workers.add-issue", "7", "--title", "dup")
    assert again.code == 2 and "issue #7 already exists" in again.err
    plan = inv("workers.launch", "--dry-run", "--json", "--workers", "3")
    assert plan.code == 0, plan.err
    assert json.loads(plan.out)["windows"] == ["orchestrator", "worker-1", "worker-2", "worker-3", "dashboard"]
    status = inv("workers.status", "--json")
    assert [i["number"] for i in json.loads(status.out)["projects"][0]["issues"]] == [1, 7]
    bad = inv("workers.monitor", "--cycle", "soon")
    assert bad.code == 2 and bad.err.startswith("error: expected")


def test_without_tmux_on_path_launch_is_one_line_not_a_traceback(project, tmp_path):
    import shutil

    project([{"number": 1, "title": "one"}])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    result = subprocess.run([sys.executable, "-m", "orchestrator", "launch"], cwd=PACKAGE,
                            env={**monitor_env(), "PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr == "error: tmux is not installed (needed to run workers)\n"


def test_workers_status_and_dashboard_escape_control_characters_from_titles(project):
    """Before: a title with ESC/BEL reached the terminal raw through `status` (the dashboard kept ESC too)."""
    hostile = "\x1b]0;owned\x07\x1b[2Jfix"
    project([{"number": 1, "title": hostile}])
    text = orchestrator("status")
    assert text.returncode == 0, text.stderr
    assert "\x1b" not in text.stdout and "\x07" not in text.stdout and "\\x1b]0;owned\\x07" in text.stdout
    doc = json.loads(orchestrator("status", "--json").stdout)
    assert doc["projects"][0]["issues"][0]["title"] == hostile
    screen = io.StringIO()
    Console(file=screen, width=200, color_system=None).print(render(doc))
    assert "\x1b" not in screen.getvalue() and "\\x1b]0;owned" in screen.getvalue()
