"""The ten config files of the original project (PaulSnow/orchestrator) load and plan a launch as they are.

tests/fixtures/original_configs/ holds files of the same shapes, at the same paths (same keys, nesting, value
types, stage names, pipeline_stage values and statuses; titles and descriptions shortened). Only the repository
paths, worktree_base and default_branch are changed to throwaway repos; `launch --dry-run --json` must exit 0
with the plan that is right for the file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_fixtures import require_claude
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "proof-workers"))

from orchestrator.agents import DEFAULT_COMMANDS  # noqa: E402

PACKAGE = ROOT / "scripts" / "proof-workers"
FIXTURES = ROOT / "tests" / "fixtures" / "original_configs"

# file -> (first tries of the plan: (worker, issue, stage, resumed from), words a warning must hold (None: no
#          warning), issue counts by state in status). An issue in_progress on a worker is resumed first, by that
#          worker; in these throwaway repos nothing of it is left, so it starts over from its first stage ("fresh").
I, F = "implement", "fresh"
EXPECTED = {
    "config/proof-issues.json": ([], None, {"failed": 5, "blocked": 15}),
    "config/aisynth-issues.json": ([(1, 43, I, F)], None, {"in_progress": 1, "waiting": 3}),
    "config/aisynth-only/aisynth-issues.json": (
        [(1, 21, I, F), (2, 1, I, F), (4, 3, I, F), (5, 4, I, F)],  # worker 3's #2 is done: worker 3 idles
        "(#2).pipeline_stage: 1 is past the last stage of the pipeline: all stages are done",
        {"completed": 19, "in_progress": 4, "waiting": 23}),
    # #36 and #40 are both on worker 2: #40 waits for it; nothing fresh is eligible
    "config/dtrules-issues.json": ([(2, 36, I, F), (3, 69, I, F)], None,
                                   {"completed": 20, "in_progress": 3, "waiting": 28}),
    "config/staking-docs/staking-docs-issues.json": ([], None, {"completed": 1}),
    "config/staking-docs/staking-issues.json": ([], None, {"completed": 6}),
    "internal/orchestrator/testutil/testdata/config/basic-issues.json": (
        [(1, 1, I, None), (2, 2, I, None)], None, {"pending": 2, "waiting": 1}),
    "internal/orchestrator/testutil/testdata/config/multi-repo-issues.json": (
        [(1, 10, I, None)], "review: enabled, parallel_workers, session_timeout, post_comments, strict_mode: "
                            "settings of the original's Go rewrite, not used here", {"pending": 1, "waiting": 1}),
    "internal/orchestrator/testutil/testdata/config/pipeline-issues.json": (
        [(1, 100, I, None)], None, {"pending": 1, "waiting": 1}),
    # #28 (in_progress on worker 1) first, then the best fresh ones
    "scripts/proof-workers/tests/fixtures/test-issues.json": (
        [(1, 28, I, F), (2, 1, I, None), (3, 2, I, None), (4, 3, I, None), (5, 4, I, None)],
        None, {"pending": 13, "waiting": 23, "completed": 1, "failed": 1, "blocked": 1, "in_progress": 1}),
}


def test_every_original_config_file_has_a_fixture():
    assert sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*.json")) == sorted(EXPECTED)


def localize(rel: str, tmp_path: Path, make_repo, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture with only its repo paths, worktree_base and default_branch moved to throwaway repos (and, run as
    root, the IS_SANDBOX=1 the preflight asks root for); the pinned Claude Code CLI first on PATH."""
    doc = json.loads((FIXTURES / rel).read_text())
    if "repos" in doc:
        for name, repo in doc["repos"].items():
            repo["path"] = str(make_repo(f"{doc['project']}-{name}").path)
            repo["worktree_base"] = str(tmp_path / "worktrees" / name)
            if "default_branch" in repo:
                repo["default_branch"] = "main"
    else:
        doc["repo_path"] = str(make_repo(doc["project"]).path)
        doc["worktree_base"] = str(tmp_path / "worktrees" / doc["project"])
        if "default_branch" in doc:
            doc["default_branch"] = "main"
    if os.geteuid() == 0:  # claude refuses --dangerously-skip-permissions as root without it (see Preflight)
        doc["agent_command"] = "IS_SANDBOX=1 " + DEFAULT_COMMANDS["claude"]
    path = tmp_path / "configs" / Path(rel).name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    monkeypatch.setenv("PATH", f"{require_claude().parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return path


def dry_run(path: Path, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", "launch", "--dry-run", "--json", "--config",
                           str(path)], cwd=PACKAGE, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ORCHESTRATOR_HOME": str(home)})


@pytest.mark.parametrize("rel", sorted(EXPECTED), ids=lambda rel: Path(rel).name.removesuffix(".json"))
def test_an_original_config_plans_its_launch_as_it_is(rel, tmp_path, make_repo, home, monkeypatch):
    tries, warning, counts = EXPECTED[rel]
    path = localize(rel, tmp_path, make_repo, monkeypatch)
    result = dry_run(path, home.path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [(a["worker"], a["issue"], a["stage"], a["resume"]) for a in plan["assignments"]] == tries
    assert plan["idle"] == len(plan["windows"]) - 2 - len(tries)  # no worker holds anything yet
    if warning is None:
        assert plan["warnings"] == []
    else:
        assert len(plan["warnings"]) == 1 and warning in plan["warnings"][0] and str(path) in plan["warnings"][0]

    from orchestrator.report import status_document
    from orchestrator.run import open_run

    project = status_document(open_run(path))["projects"][0]
    assert project["counts"] == counts


def test_the_past_the_end_warning_is_a_line_of_the_text_plan_and_inv_gives_the_same_plan(tmp_path, make_repo,
                                                                                       home, monkeypatch, inv):
    rel = "config/aisynth-only/aisynth-issues.json"
    path = localize(rel, tmp_path, make_repo, monkeypatch)
    text = subprocess.run([sys.executable, "-m", "orchestrator", "launch", "--dry-run", "--config", str(path)],
                          cwd=PACKAGE, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ORCHESTRATOR_HOME": str(home.path)})
    assert text.returncode == 0, text.stderr
    warnings = [line for line in text.stdout.splitlines() if line.startswith("(dry run) warning: ")]
    assert len(warnings) == 1 and "all stages are done" in warnings[0]
    result = inv("workers.launch", "--dry-run", "--json", "--config", str(path))
    assert result.code == 0, result.err
    assert json.loads(result.out) == json.loads(dry_run(path, home.path).stdout)


def test_a_test_stage_gets_a_prompt_that_names_it(tmp_path):
    """The Go rewrite's `test` stage has no built-in task: its prompt says which stage it is, never `implement`."""
    from orchestrator.config import load_config
    from orchestrator.prompts import STAGE_TASKS, render

    rel = "internal/orchestrator/testutil/testdata/config/pipeline-issues.json"
    path = tmp_path / "pipeline-issues.json"
    path.write_text((FIXTURES / rel).read_text())
    cfg = load_config(path)
    issue = cfg.issue(100)
    text = render(cfg, issue, 1, "/w/issue-100", "feature/issue-100")
    assert "Stage: test (2/3 of the pipeline implement -> test -> review)" in text
    assert "This is the test stage of the pipeline implement -> test -> review" in text
    assert STAGE_TASKS["implement"] not in text
    assert STAGE_TASKS["implement"] in render(cfg, issue, 0, "/w/issue-100", "feature/issue-100")


BAD_STAGES = [
    ("a typo in a stage name", {"pipeline": ["implement", "tset"]}, "pipeline: unknown stage 'tset'"),
    ("two past the last stage", {"issues": [{"number": 1, "title": "a", "pipeline_stage": 3}]},
     "pipeline_stage: must be 0..1 (or 2: all stages done), got 3"),
    ("a prompt for a stage name with a typo", {"prompts": {"tset": "do it {{rules}}"}}, "prompts.tset: unknown stage"),
]


@pytest.mark.parametrize("name,change,message", BAD_STAGES, ids=[b[0] for b in BAD_STAGES])
def test_mistakes_around_stages_are_still_caught(tmp_path, name, change, message):
    from lib.errors import ConfigError
    from orchestrator.config import load_config

    doc = {"project": "p", "repo_path": "/src/p", "branch_prefix": "p-", "pipeline": ["implement", "test"],
           "issues": [{"number": 1, "title": "a"}], **change}
    path = tmp_path / "p-issues.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any(message in line for line in err.value.problems), err.value.problems

