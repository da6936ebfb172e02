"""proof-issues.json: the original schema loads; every bad input is one line and exit 2; writes keep other keys."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "proof-workers"))

from orchestrator.act import render_agent_command  # noqa: E402
from orchestrator.config import add_issue, load_config, set_issue  # noqa: E402

PACKAGE = ROOT / "scripts" / "proof-workers"

ORIGINAL = {
    "project": "proof", "repo_path": "/src/proof", "worktree_base": "/src/proof-worktrees",
    "branch_prefix": "proof/issue-", "default_branch": "main", "platform": "gitlab",
    "pipeline": ["implement", "write_tests", "review"],
    "project_context": {"language": "go", "build_command": "go build ./...", "test_command": "go test ./...",
                        "safety_rules": ["never touch prod"], "commit_prefix": "proof", "key_files": ["main.go"]},
    "issues": [{"number": 1, "title": "a", "priority": 1, "depends_on": [], "wave": 1, "status": "pending",
                "assigned_worker": None},
               {"number": 2, "title": "b", "priority": 2, "depends_on": [1], "wave": 2, "status": "completed",
                "assigned_worker": 3, "pipeline_stage": 2, "description": "do b"}],
    "num_workers": 5, "cycle_interval": 60, "max_retries": 10, "stall_timeout": 900,
    "wall_clock_timeout": 1800, "stagger_delay": 30, "tmux_session": "proof-orchestrator",
}


def write(tmp_path: Path, doc: dict | str, name: str = "proof-issues.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=PACKAGE, capture_output=True, text=True,
                          env={**os.environ, "ORCHESTRATOR_HOME": str(home)}, timeout=60)


def test_the_originals_config_loads_as_it_is(tmp_path):
    cfg = load_config(write(tmp_path, ORIGINAL))
    assert cfg.project == "proof" and cfg.pipeline == ("implement", "write_tests", "review")
    assert cfg.issue(2).depends_on == (1,) and cfg.issue(2).pipeline_stage == 2
    assert cfg.branch_for(cfg.issue(1)) == "proof/issue-1"
    assert cfg.worktree_for(cfg.issue(1)) == Path("/src/proof-worktrees/issue-1")
    assert cfg.num_workers == 5 and cfg.max_retries == 10 and cfg.tmux_session == "proof-orchestrator"


def test_a_repos_map_gives_each_issue_its_repo(tmp_path):
    doc = {**ORIGINAL, "repos": {"api": {"path": "/src/api", "branch_prefix": "api-"},
                                 "web": {"path": "/src/web", "branch_prefix": "web-", "default_branch": "dev"}}}
    doc["issues"] = [{"number": 1, "title": "a", "repo": "web"}]
    cfg = load_config(write(tmp_path, doc))
    assert cfg.repo_for(cfg.issue(1)).default_branch == "dev" and cfg.branch_for(cfg.issue(1)) == "web-1"


BAD = [
    ("unknown stage", {"pipeline": ["implement", "deploy", "review"]}, "pipeline: unknown stage 'deploy'"),
    ("missing dependency", {"issues": [{"number": 1, "title": "a", "depends_on": [9]}]},
     "#9 is not in the issue list"),
    ("cyclic dependency", {"issues": [{"number": 1, "title": "a", "depends_on": [2]},
                                      {"number": 2, "title": "b", "depends_on": [1]}]}, "dependency cycle: #1 -> #2 -> #1"),
    ("duplicate number", {"issues": [{"number": 1, "title": "a"}, {"number": 1, "title": "b"}]},
     "duplicate issue number 1"),
    ("string where a number belongs", {"num_workers": "3"}, "num_workers: must be a whole number"),
    ("boolean issue number", {"issues": [{"number": True, "title": "a"}]}, "number: must be a whole number"),
    ("unknown status", {"issues": [{"number": 1, "status": "done"}]}, "unknown status 'done'"),
    ("negative retries", {"max_retries": -1}, "max_retries: must be >= 0"),
    ("zero stall timeout", {"stall_timeout": 0}, "stall_timeout: must be > 0 seconds"),
    ("unknown placeholder", {"agent_command": "agent {{issue.title}}"}, "unknown placeholder {{issue.title}}"),
    ("stage out of range", {"issues": [{"number": 1, "pipeline_stage": 5}]}, "pipeline_stage: must be 0..2"),
    ("session name tmux would misread", {"tmux_session": "a:b"}, "tmux_session: must be a plain name"),
    ("branch prefix with a space", {"branch_prefix": "my branch/"}, "branch_prefix"),
]


@pytest.mark.parametrize("name,change,message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, name, change, message):
    path = write(tmp_path, {**ORIGINAL, **change})
    result = cli("launch", "--dry-run", "--config", str(path), home=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0], lines


@pytest.mark.parametrize("raw,message", [("{not json", "not valid JSON (line 1"), ("[]", "JSON object"),
                                         (None, "not found")])
def test_an_unreadable_config_is_one_line_and_exit_2(tmp_path, raw, message):
    path = tmp_path / "proof-issues.json"
    if raw is not None:
        path.write_text(raw)
    result = cli("status", "--config", str(path), home=tmp_path)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_bad_flags_are_usage_errors(tmp_path):
    path = write(tmp_path, ORIGINAL)
    for args in (["monitor", "--cycle", "inf", "--config", str(path)], ["monitor", "--cycle", "0", "--config", str(path)],
                 ["launch", "--workers", "x"],
                 ["add-issue", "7", "--title", "t", "--depends-on", "3,x", "--config", str(path)]):
        result = cli(*args, home=tmp_path)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_status_writes_keep_every_other_key_and_leave_a_valid_file(tmp_path):
    path = write(tmp_path, {**ORIGINAL, "custom": {"x": [1, 2]}})
    set_issue(path, 1, status="in_progress", assigned_worker=2)
    doc = json.loads(path.read_text())
    assert doc["custom"] == {"x": [1, 2]} and doc["issues"][0]["status"] == "in_progress"
    assert doc["issues"][1] == ORIGINAL["issues"][1]


def test_add_issue_rejects_a_duplicate_and_concurrent_adds_lose_nothing(tmp_path):
    path = write(tmp_path, ORIGINAL)
    result = cli("add-issue", "2", "--title", "again", "--config", str(path), home=tmp_path)
    assert result.returncode == 2 and "issue #2 already exists" in result.stderr
    threads = [threading.Thread(target=add_issue, args=(path, n, f"t{n}")) for n in range(10, 30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    numbers = [i["number"] for i in json.loads(path.read_text())["issues"]]
    assert sorted(numbers) == [1, 2] + list(range(10, 30))


def test_add_issue_refuses_a_dependency_that_does_not_exist_and_leaves_the_file_alone(tmp_path):
    path = write(tmp_path, ORIGINAL)
    before = path.read_text()
    result = cli("add-issue", "3", "--title", "t", "--depends-on", "99", "--config", str(path), home=tmp_path)
    assert result.returncode == 2 and "#99 is not in the issue list" in result.stderr
    assert path.read_text() == before


def test_agent_command_values_are_shell_quoted():
    nasty = "/tmp/it's; rm -rf ~ $(id) `x`\n"
    line = render_agent_command("agent --prompt {{prompt_file}} --dir={{worktree}}",
                                {"prompt_file": nasty, "worktree": "a b"})
    assert shlex.split(line) == ["agent", "--prompt", nasty, "--dir=a b"]


def test_launch_dry_run_checks_the_repository_and_changes_nothing(tmp_path):
    path = write(tmp_path, {**ORIGINAL, "repo_path": str(tmp_path / "missing")})
    result = cli("launch", "--dry-run", "--config", str(path), home=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr and len(result.stderr.splitlines()) == 1
    (tmp_path / "plain").mkdir()
    path = write(tmp_path, {**ORIGINAL, "repo_path": str(tmp_path / "plain")})
    result = cli("launch", "--dry-run", "--config", str(path), home=tmp_path)
    assert result.returncode == 2 and "is not a git repository" in result.stderr
    assert not (tmp_path / "state").exists()


def test_a_symlinked_config_stays_a_symlink_when_status_is_written(tmp_path):
    target = write(tmp_path, ORIGINAL, "real-issues.json")
    link = tmp_path / "proof-issues.json"
    link.symlink_to(target)
    set_issue(link, 1, status="in_progress")
    assert link.is_symlink() and json.loads(target.read_text())["issues"][0]["status"] == "in_progress"
