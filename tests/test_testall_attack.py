"""Hostile review of test-all on real projects (issue 19): can it lie about a repo's tests?"""
from __future__ import annotations

import json
import socket
import subprocess

from tests.conftest import ROOT  # noqa: F401  (the fixtures come from conftest)

COUNTING = "test:\n\t@touch {runs}/$$$$; echo '1 passed in 0.01s'\n"


def git(path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, text=True).stdout


def counted_repo(make_repo, tmp_path, name: str = "r"):
    runs = tmp_path / f"runs-{name}"
    runs.mkdir()
    return make_repo(name, {"Makefile": COUNTING.format(runs=runs)}), runs


def test_changed_reruns_when_the_last_pass_was_on_another_machine(home, make_repo, inv, tmp_path, monkeypatch):
    # A results file that came from another machine (a CI cache restored on a new runner, a home on NFS)
    # says host "local" too: that pass was not on this machine, so it must run here.
    repo, runs = counted_repo(make_repo, tmp_path)
    home.add(repo, language="make")
    assert inv("test-all").code == 0
    assert len(list(runs.iterdir())) == 1
    real = socket.gethostname()
    monkeypatch.setattr(socket, "gethostname", lambda: real + "-other-runner")
    result = inv("test-all", "--changed", "--json")
    assert result.code == 0, result.err
    assert len(list(runs.iterdir())) == 2, "a pass recorded on another machine was reported as this one's"
    assert not json.loads(result.out)["results"][0]["cached"]


def test_changed_sees_edits_git_status_was_told_to_hide(home, make_repo, inv, tmp_path):
    # `git update-index --assume-unchanged` / `--skip-worktree` (sparse checkouts, local config tweaks) and
    # `diff.ignoreSubmodules` make `git status` call an edited tree clean: the edit is still code the tests run.
    hidden, hidden_runs = counted_repo(make_repo, tmp_path, "hidden")
    skipped, skipped_runs = counted_repo(make_repo, tmp_path, "skipped")
    for handle in (hidden, skipped):
        handle.commit({"conf.py": "VALUE = 1\n"}, "conf")
    home.add(hidden, skipped, language="make")
    assert inv("test-all").code == 0
    git(hidden.path, "update-index", "--assume-unchanged", "conf.py")
    git(skipped.path, "update-index", "--skip-worktree", "conf.py")
    for handle in (hidden, skipped):
        (handle.path / "conf.py").write_text("VALUE = 2\n")
        assert git(handle.path, "status", "--porcelain") == ""  # git status hides the edit
    result = inv("test-all", "--changed", "--json")
    assert result.code == 0, result.err
    assert [r["cached"] for r in json.loads(result.out)["results"]] == [False, False]
    assert len(list(hidden_runs.iterdir())) == len(list(skipped_runs.iterdir())) == 2


def test_changed_sees_a_dirty_submodule_whatever_the_config_says(home, make_repo, inv, tmp_path):
    inner = make_repo("inner", {"lib.py": "X = 1\n"})
    outer, runs = counted_repo(make_repo, tmp_path, "outer")
    git(outer.path, "-c", "protocol.file.allow=always", "submodule", "add", str(inner.path), "inner")
    git(outer.path, "config", "-f", ".gitmodules", "submodule.inner.ignore", "all")
    git(outer.path, "add", ".gitmodules")
    git(outer.path, "commit", "-qm", "submodule")
    home.add(outer, language="make")
    assert inv("test-all").code == 0
    (outer.path / "inner" / "lib.py").write_text("X = 2\n")  # the code under test changed
    assert git(outer.path, "status", "--porcelain") == ""
    result = inv("test-all", "--changed", "--json")
    assert not json.loads(result.out)["results"][0]["cached"]
    assert len(list(runs.iterdir())) == 2
