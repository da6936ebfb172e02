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
