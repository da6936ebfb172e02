"""Warm scans: a repo whose HEAD is unchanged costs one git process; the document is the cold scan's."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import git, run_script


@pytest.fixture
def git_calls(tmp_path, monkeypatch):
    """Put a logging `git` first on PATH; returns a function giving (and clearing) the calls since last asked."""
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    log = tmp_path / "git-calls.log"
    real = shutil.which("git")
    (shim_dir / "git").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}" "$@"\n')
    (shim_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim_dir}{os.pathsep}{os.environ['PATH']}")

    def calls() -> list[str]:
        lines = log.read_text().splitlines() if log.exists() else []
        log.write_text("")
        return lines

    return calls


def without_time(doc):
    return {**doc, "generated_at": None}


def mixed_workspace(home, make_repo, tmp_path):
    repos = {name: make_repo(name) for name in ("steady", "dirty", "moves", "amended", "detached")}
    repos["detached"].commit({"x": "1"}, "second")
    repos["detached"].git("checkout", "-q", "--detach", "HEAD~1")
    (repos["dirty"].path / "README.md").write_text("edited\n")
    unborn = tmp_path / "repos" / "unborn"
    git(tmp_path, "init", "-q", "-b", "main", str(unborn))
    entries = [{"name": n, "local": str(r.path)} for n, r in repos.items()]
    entries += [{"name": "unborn", "local": str(unborn)}, {"name": "gone", "local": str(tmp_path / "gone")}]
    home.write_repos(entries)
    return repos


def test_every_scan_runs_one_git_per_repo_and_warm_writes_the_cold_document(home, make_repo, inv, tmp_path,
                                                                            git_calls):
    """The last commit comes from the last scan (same sha) or the object store; `git log` never runs here."""
    repos = mixed_workspace(home, make_repo, tmp_path)
    assert inv("scan").code == 1  # `gone` and `unborn` are error rows
    repos["moves"].commit({"new": "1"}, "a new commit")
    repos["amended"].git("commit", "-q", "--amend", "-m", "amended subject")
    git_calls()
    assert inv("scan").code == 1
    calls = git_calls()
    warm = home.state("repo-status.json")
    assert len(calls) == 6 and all(" status " in f" {c} " for c in calls), calls
    by_name = {r["name"]: r for r in warm["repos"]}
    assert by_name["moves"]["last_commit"]["subject"] == "a new commit"
    assert by_name["amended"]["last_commit"]["subject"] == "amended subject"

    (home.path / "state" / "repo-status.json").unlink()
    assert inv("scan").code == 1
    cold = home.state("repo-status.json")
    assert len(git_calls()) == 6  # cold too: one `git status` per repo that has a .git
    assert without_time(warm) == without_time(cold)
    for name in ("steady", "moves", "amended", "detached", "dirty"):  # what `git log -1` says
        sha, subject, author, date = repos[name].git("log", "-1", "--format=%H%x00%s%x00%an%x00%cI").split("\0")
        assert by_name[name]["last_commit"] == {"sha": sha, "subject": subject, "author": author, "date": date}


def test_a_commit_the_reader_doubts_is_asked_of_git_log_once(home, make_repo, inv, git_calls):
    """A latin-1 `encoding` header: git re-encodes the message, so the scan asks git; the next scan reuses it."""
    repo = make_repo("alpha")
    home.add(repo)
    tree = repo.git("rev-parse", "HEAD^{tree}")
    body = (f"tree {tree}\nparent {repo.head()}\nauthor J\xf6rg <j@example.com> 1700000000 +0100\n"
            f"committer J\xf6rg <j@example.com> 1700000000 +0100\nencoding ISO-8859-1\n\nGr\xfc\xdfe\n")
    sha = subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--stdin"], cwd=repo.path, check=True,
                         input=body.encode("latin-1"), capture_output=True).stdout.decode().strip()
    repo.git("reset", "-q", "--hard", sha)
    git_calls()
    assert inv("scan").code == 0
    assert len([c for c in git_calls() if " log " in f" {c} "]) == 1
    commit = home.state("repo-status.json")["repos"][0]["last_commit"]
    assert commit == {"sha": sha, "subject": "Grüße", "author": "Jörg", "date": "2023-11-14T23:13:20+01:00"}
    assert inv("scan").code == 0
    assert not [c for c in git_calls() if " log " in f" {c} "]  # warm: recorded under its sha


def test_a_cloned_repo_reads_its_packed_head_commit(home, make_repo, inv, tmp_path, git_calls):
    origin = make_repo("origin")
    origin.commit({"a": "1"}, "packed   subject  \n\nbody")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--no-local", str(origin.path), str(clone))
    assert not list((clone / ".git" / "objects").glob("??/*"))  # everything is in the pack
    home.write_repos([{"name": "clone", "local": str(clone)}])
    git_calls()
    assert inv("scan").code == 0
    assert not [c for c in git_calls() if " log " in f" {c} "]
    assert home.state("repo-status.json")["repos"][0]["last_commit"]["subject"] == "packed   subject"


@pytest.mark.parametrize("content", [
    "not json at all {", "[1, 2, 3]", '{"repos": null}', '{"repos": [null, 7, "x"]}',
    '{"repos": [{"head": "HEAD", "last_commit": {"sha": "HEAD", "subject": 1}}]}', "\udcff", "",
    "[" * 100000,
])
def test_corrupt_or_foreign_state_means_a_cold_scan_never_an_error(home, make_repo, inv, content):
    repo = make_repo("alpha")
    home.add(repo)
    state = home.path / "state" / "repo-status.json"
    state.parent.mkdir()
    state.write_bytes(content.encode("utf-8", "surrogateescape"))
    result = inv("scan")
    assert result.code == 0, result.err
    assert home.state("repo-status.json")["repos"][0]["last_commit"]["sha"] == repo.head()


def test_a_state_path_that_is_a_fifo_or_a_directory_is_a_cold_scan_not_a_hang(home, make_repo, inv, tmp_path):
    home.add(make_repo("alpha"))
    state = home.path / "state" / "repo-status.json"
    state.parent.mkdir()
    os.mkfifo(state)
    result = inv("status", "--json")
    assert result.code == 0 and json.loads(result.out)["repos"][0]["last_commit"]["subject"] == "initial"


def test_a_forged_entry_is_not_trusted_for_another_sha(home, make_repo, inv):
    """A recorded commit is reused only under its own sha, never because a name or path matches."""
    repo = make_repo("alpha")
    home.add(repo)
    inv("scan")
    doc = home.state("repo-status.json")
    doc["repos"][0]["last_commit"]["subject"] = "forged"
    doc["repos"][0]["last_commit"]["sha"] = "0" * 40
    (home.path / "state" / "repo-status.json").write_text(json.dumps(doc))
    inv("scan")
    assert home.state("repo-status.json")["repos"][0]["last_commit"]["subject"] == "initial"


def test_status_reads_the_state_but_never_writes_it(home, make_repo, inv, git_calls):
    repo = make_repo("alpha")
    home.add(repo)
    inv("scan")
    state = home.path / "state" / "repo-status.json"
    before = (state.read_bytes(), state.stat().st_mtime_ns)
    repo.commit({"x": "1"}, "after the scan")
    git_calls()
    result = inv("status", "--json")
    assert json.loads(result.out)["repos"][0]["last_commit"]["subject"] == "after the scan"  # HEAD moved: read
    (repo.path / "x").write_text("edited\n")
    git_calls()
    result = inv("status", "--json")
    assert json.loads(result.out)["repos"][0]["last_commit"]["subject"] == "after the scan"
    assert (state.read_bytes(), state.stat().st_mtime_ns) == before
    assert not list(state.parent.glob("*.tmp"))


def test_status_without_a_state_dir_creates_none(home, make_repo, inv):
    home.add(make_repo("alpha"))
    assert inv("status").code == 0
    assert not (home.path / "state").exists()


def test_scan_script_is_warm_too(home, make_repo, tmp_path, git_calls):
    home.add(make_repo("alpha"), make_repo("beta"))
    assert run_script("scan_all_repos.py", cwd=tmp_path).returncode == 0
    git_calls()
    assert run_script("scan_all_repos.py", cwd=tmp_path).returncode == 0
    calls = git_calls()
    assert len(calls) == 2 and all(" status " in f" {c} " for c in calls), calls


def test_a_tag_scan_refreshes_its_repos_and_keeps_the_other_rows(home, make_repo, inv, tmp_path):
    alpha, beta, gamma = make_repo("alpha"), make_repo("beta"), make_repo("gamma")
    home.write_repos([{"name": "alpha", "local": str(alpha.path), "tags": ["x"]},
                      {"name": "beta", "local": str(beta.path), "tags": ["y"]},
                      {"name": "gamma", "local": str(gamma.path), "tags": ["y"]}])
    assert inv("scan").code == 0
    before = {r["name"]: r for r in home.state("repo-status.json")["repos"]}
    alpha.commit({"x": "1"}, "alpha moved")
    (beta.path / "README.md").write_text("edited, not rescanned\n")
    assert inv("scan", "--tag", "x").code == 0
    after = home.state("repo-status.json")["repos"]
    assert [r["name"] for r in after] == ["alpha", "beta", "gamma"]  # config order, nothing lost
    assert after[0]["last_commit"]["subject"] == "alpha moved"
    assert after[1] == before["beta"] and after[1]["clean"]  # not rescanned: its last scan's row
    # gamma moved to another directory: its old row describes another repo and goes.
    moved = tmp_path / "gamma-elsewhere"
    gamma.path.rename(moved)
    home.write_repos([{"name": "alpha", "local": str(alpha.path), "tags": ["x"]},
                      {"name": "gamma", "local": str(moved), "tags": ["y"]}])
    assert inv("scan", "--tag", "x").code == 0
    assert [r["name"] for r in home.state("repo-status.json")["repos"]] == ["alpha"]  # beta left the config


def test_a_tag_scan_over_a_corrupt_state_writes_its_own_rows(home, make_repo, inv):
    alpha, beta = make_repo("alpha"), make_repo("beta")
    home.write_repos([{"name": "alpha", "local": str(alpha.path), "tags": ["x"]},
                      {"name": "beta", "local": str(beta.path)}])
    state = home.path / "state" / "repo-status.json"
    state.parent.mkdir()
    state.write_text('{"generated_at": 1, "repos": [{"name": ["beta"]}, {"name": "beta"}, 7]}')
    assert inv("scan", "--tag", "x").code == 0
    assert [r["name"] for r in home.state("repo-status.json")["repos"]] == ["alpha"]
