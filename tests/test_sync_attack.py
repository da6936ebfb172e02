"""A hostile user against sync-all, status and scan: what each prints must match what is on disk."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, stop_when
from tests.sync_fixtures import add_hook, full_snapshot, outside_remote_tracking, ref, wait_for_file


def outcome_of(home, name: str) -> dict:
    return next(r for r in home.state("sync-results.json")["results"] if r["repo"] == name)


def test_inherited_git_namespace_neither_prunes_tracking_refs_nor_reports_upstream_gone(home, make_repo, inv,
                                                                                        tmp_path, monkeypatch):
    # GIT_NAMESPACE (set for a server's hooks) hides the remote's branches: a pruning fetch deleted every
    # refs/remotes/origin/* and each repo was reported "upstream gone".
    repo = make_repo("spaced")
    upstream = repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    home.add(repo)
    monkeypatch.setenv("GIT_NAMESPACE", "elsewhere")
    result = inv("sync-all")
    assert result.code == 0, result.out + result.err
    assert ref(repo.path, "refs/remotes/origin/main") == upstream
    assert ref(repo.path, "refs/heads/main") == upstream
    assert outcome_of(home, "spaced")["status"] == "updated"


def test_a_broken_git_dir_inside_another_repo_is_never_mistaken_for_that_repo(home, make_repo, inv, tmp_path):
    # An empty `.git` directory is no repository: git walks up to the enclosing one, and sync moved
    # *its* main (reporting the configured repo updated) while status showed its branch.
    outer = make_repo("outer")
    outer.push_from_elsewhere(tmp_path, {"outer-new.txt": "1"})
    outer.git("checkout", "-q", "-b", "feat")
    inner = outer.path / "inner"
    (inner / ".git").mkdir(parents=True)
    (outer.path / ".git" / "info" / "exclude").write_text("inner/\n")
    before = full_snapshot(outer.path)
    home.write_repos([{"name": "inner", "local": str(inner)}])
    result = inv("sync-all")
    assert result.code == 1, result.out + result.err
    o = outcome_of(home, "inner")
    assert o["status"] == "failed" and "not a git repository" in o["reason"], o
    assert full_snapshot(outer.path) == before, "the enclosing repo was fetched or moved"
    status = json.loads(inv("status", "--json").out)["repos"][0]
    assert status["branch"] is None and "not a git repository" in status["error"], status


def test_a_log_dir_that_cannot_be_written_fails_each_repo_in_one_line(home, make_repo, inv, tmp_path, monkeypatch):
    repo = make_repo("unlogged")
    repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    before = full_snapshot(repo.path)
    home.add(repo)
    not_a_dir = tmp_path / "logs-is-a-file"
    not_a_dir.write_text("")
    monkeypatch.setenv("ORCHESTRATOR_LOG_DIR", str(not_a_dir))
    result = inv("sync-all")
    assert result.code == 1 and "Traceback" not in result.out + result.err, result.out + result.err
    o = outcome_of(home, "unlogged")
    assert o["status"] == "failed" and "log" in o["reason"] and str(not_a_dir) in o["reason"], o
    assert full_snapshot(repo.path) == before


def test_a_log_that_fills_the_disk_keeps_the_outcome_read_from_the_repo(home, make_repo, tmp_path):
    # A hook's output fills the log to the file size limit (as a full disk would): the fast-forward
    # happened, so the repo is `updated`, with the lost log said, never a traceback.
    repo = make_repo("noisy")
    add_hook(repo.path, "post-merge", "head -c 40000 /dev/zero | tr '\\0' x")
    upstream = repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    home.add(repo)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead

    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], cwd=tmp_path,
                            capture_output=True, text=True, preexec_fn=small_files, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert ref(repo.path, "refs/heads/main") == upstream
    o = outcome_of(home, "noisy")
    assert o["status"] == "updated" and "not written: File too large" in o["reason"], o


@pytest.mark.parametrize("planted", ["symlink", "fifo"])
def test_a_file_planted_at_a_log_path_in_the_shared_temp_dir_is_neither_followed_nor_waited_on(
        home, make_repo, inv, tmp_path, planted):
    # The default log dir is the shared temp dir: another user can plant a symlink to one of your files
    # (the sync overwrote it with its log) or a FIFO (the sync waited forever for a reader).
    repo = make_repo("planted")
    repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    before = full_snapshot(repo.path)
    home.add(repo)
    log = Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-sync-planted.log"
    precious = tmp_path / "precious.txt"
    precious.write_text("your work\n")
    log.symlink_to(precious) if planted == "symlink" else os.mkfifo(log)
    result = inv("sync-all")
    assert result.code == 1, result.out + result.err
    assert precious.read_text() == "your work\n"
    o = outcome_of(home, "planted")
    assert o["status"] == "failed" and f"log {log} not written: it is a {planted}" in o["reason"].replace("FIFO", "fifo"), o
    assert full_snapshot(repo.path) == before


def test_configured_tracking_refs_beside_the_branches_survive_the_pruning_fetch(home, make_repo, inv, tmp_path):
    # GitHub's pull request refs, fetched by the user's own refspec into refs/remotes/origin/pr/*: the
    # pruning fetch with only the branch refspec deleted them while they still exist upstream.
    repo = make_repo("reviews")
    side = repo.commit({"pr.txt": "proposal"}, "a pull request")
    repo.git("push", "-q", "origin", f"{side}:refs/pull/7/head")
    repo.git("reset", "-q", "--hard", "HEAD~1")
    repo.git("config", "--add", "remote.origin.fetch", "+refs/pull/*/head:refs/remotes/origin/pr/*")
    repo.git("fetch", "-q", "origin")
    upstream = repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    home.add(repo)
    result = inv("sync-all")
    assert result.code == 0, result.out + result.err
    assert ref(repo.path, "refs/remotes/origin/pr/7") == side, "a pull request ref that exists upstream was pruned"
    assert ref(repo.path, "refs/heads/main") == upstream


def test_untracked_files_count_as_dirty_whatever_status_showuntrackedfiles_says(home, make_repo, inv, tmp_path):
    repo = make_repo("quiet")
    repo.git("config", "status.showUntrackedFiles", "no")
    (repo.path / "notes.txt").write_text("mine\n")
    repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    before = full_snapshot(repo.path)
    home.add(repo)
    assert inv("sync-all").code == 0
    o = outcome_of(home, "quiet")
    assert (o["status"], o["reason"]) == ("skipped", "dirty: uncommitted changes on main"), o
    assert outside_remote_tracking(full_snapshot(repo.path)) == outside_remote_tracking(before)


def test_a_default_branch_that_is_an_alias_of_the_checked_out_branch_is_skipped(home, make_repo, inv, tmp_path):
    # `master` kept as a symbolic ref to `main` after a rename: update-ref on master moved main under its
    # own work tree (reported "work tree on main untouched"), leaving upstream's commits staged as reverted.
    repo = make_repo("renamed")
    repo.git("symbolic-ref", "refs/heads/master", "refs/heads/main")
    repo.git("config", "branch.master.remote", "origin")
    repo.git("config", "branch.master.merge", "refs/heads/main")
    repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    before = full_snapshot(repo.path)
    home.add(repo, default_branch="master")
    assert inv("sync-all").code == 0
    o = outcome_of(home, "renamed")
    assert o["status"] == "skipped" and "symbolic ref to refs/heads/main" in o["reason"], o
    assert outside_remote_tracking(full_snapshot(repo.path)) == outside_remote_tracking(before)


def test_ctrl_c_records_what_each_started_repo_really_did(home, make_repo, tmp_path):
    # Ctrl-C while a post-merge hook runs: run_each took its results before killing the hook, so the
    # repo it had just fast-forwarded was missing from state/sync-results.json (no state file at all here).
    slow, quick = make_repo("slow"), make_repo("quick")
    add_hook(slow.path, "post-merge", f"echo $$ > {tmp_path / 'hook.pid'}; sleep 30")
    slow_up = slow.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    quick_up = quick.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    home.add(slow, quick)
    sync = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py"), "--net-jobs", "1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = stop_when(sync, lambda: wait_for_file(tmp_path / "hook.pid"))
    assert sync.returncode == 130 and "Traceback" not in out, out
    assert ref(slow.path, "refs/heads/main") == slow_up
    o = outcome_of(home, "slow")
    assert o["status"] == "updated" and o["after"] == slow_up and "killed" in o["reason"], o
    assert ref(quick.path, "refs/heads/main") != quick_up, "a repo was started after Ctrl-C"
    assert "quick" not in {r["repo"] for r in home.state("sync-results.json")["results"]}
