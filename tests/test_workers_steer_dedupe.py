"""Steering's reads, one of each: retry says what is left of an issue's work through resume.left_behind (what the
dry run and status say too), never a guess of its own; status reads the kept follow-ups once."""
from __future__ import annotations

import json

from conftest import git
from workers_fixtures import orchestrator_cli as cli, project, tmux_socket  # noqa: F401

from orchestrator import commands, worktree_setup
from orchestrator.monitor import monitor
from orchestrator.run import open_run


def test_retry_of_an_issue_whose_repository_git_cannot_read_says_so_instead_of_kept(project):
    """The main checkout's .git was replaced (a broken move): whether the branch is left cannot be read, and
    retry says that, not `branch and commits kept`."""
    proj = project([{"number": 1, "title": "one"}], script={1: ["fail"]}, pipeline=["implement"], num_workers=1,
                   max_retries=0)
    assert monitor(open_run(), no_delay=True, say=lambda _: None) == 1
    git(proj.repo, "worktree", "remove", "--force", str(proj.root / "worktrees" / "issue-1"))
    (proj.repo / ".git").rename(proj.repo / "git-moved-away")
    retried = cli("retry", "1")
    assert retried.returncode == 0, retried.stderr
    assert "branch and commits kept" not in retried.stdout, retried.stdout
    assert "whether its branch feature/issue-1 is left could not be read" in retried.stdout, retried.stdout
    assert proj.issue(1)["status"] == "pending"


def test_status_reads_the_kept_follow_ups_once_whatever_the_number_of_issues(project, monkeypatch):
    project([{"number": n, "title": f"#{n}"} for n in range(1, 5)], pipeline=["implement"], num_workers=1)
    for number in range(1, 5):
        sent = cli("send", str(number), f"follow-up for #{number}")
        assert sent.returncode == 0, sent.stderr
    run = open_run()
    path = commands.followups_file(run.state_root, "demo")
    reads = []
    real = commands.read_json

    def counting(file, *args, **kwargs):
        reads.append(file)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(commands, "read_json", counting)
    found = commands.waits(run.state_root, "demo")
    assert reads.count(path) == 1
    assert {n: [f["words"] for f in found[n]["followups"]] for n in range(1, 5)} == \
        {n: [f"follow-up for #{n}"] for n in range(1, 5)}
    assert json.loads(path.read_text())["issues"].keys() == {"1", "2", "3", "4"}


def test_a_worktree_whose_git_file_an_agent_replaced_by_a_fifo_is_not_set_up_and_nothing_waits(tmp_path):
    """worktree_setup reads a worktree's git dir through lib.gitrefs.locate, and never opens a FIFO there
    (the monitor and the wrapper ask whether a worktree was set up before each try)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    worktree = tmp_path / "wt"
    worktree.mkdir()
    (tmp_path / "git-dir").mkdir()
    (tmp_path / "git-dir" / "HEAD").write_text("ref: refs/heads/main\n")
    (worktree / ".git").write_text("gitdir: ../git-dir\n")
    assert worktree_setup.marker_path(worktree) == tmp_path.resolve() / "git-dir" / "orchestrator-setup.json"
    (worktree / ".git").unlink()
    os.mkfifo(worktree / ".git")
    asked = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from orchestrator import worktree_setup; "
                               "print(worktree_setup.done(Path(sys.argv[1])))", str(worktree)],
        cwd=ROOT / "scripts" / "proof-workers", env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60)
    assert (asked.returncode, asked.stdout) == (0, "False\n"), asked.stderr



def test_a_follow_up_that_cannot_be_kept_is_one_error_line_saying_it_was_given_to_no_try(project):
    """followups.json cannot be written (its lock is a directory: an OSError as a full disk gives): the verb says
    in one line that nothing has the follow-up, instead of a traceback; nothing is kept."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    (proj.state / ".followups.json.lock").mkdir(parents=True)
    sent = cli("send", "1", "use the new API")
    assert sent.returncode == 2, (sent.stdout, sent.stderr)
    assert "Traceback" not in sent.stderr
    [line] = sent.stderr.splitlines()
    assert line.startswith("error: send: demo#1: the follow-up could not be kept for its next try") and \
        "it was given to no try: send it again" in line, line
    assert not (proj.state / "followups.json").exists()
