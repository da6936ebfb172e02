"""sync-all never moves the wrong repo or a ref it did not mean to, and every outcome matches the disk (issue 10)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, git
from tests.sync_fixtures import add_hook, full_snapshot, kill_group_of, outside_remote_tracking, ref, wait_for_file


def outcome_of(home, name: str) -> dict:
    return next(r for r in home.state("sync-results.json")["results"] if r["repo"] == name)


def sync_killing_the_group_of(pid_file: Path, cwd: Path) -> tuple[int, str]:
    """Run the sync script, SIGKILL the git step whose hook/filter writes `pid_file`; (exit code, output)."""
    sync = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        kill_group_of(pid_file)
        out, _ = sync.communicate(timeout=60)
    finally:
        if sync.poll() is None:
            sync.kill()
            sync.communicate()
    return sync.returncode, out


# 1. A mirror-style fetch refspec must not let the fetch overwrite a local branch.
@pytest.mark.parametrize("refspec", ["+refs/heads/*:refs/heads/*", "+refs/*:refs/*"])
def test_mirror_fetch_refspec_cannot_overwrite_an_unpushed_local_branch(home, make_repo, inv, tmp_path, refspec):
    repo = make_repo("mirror")
    mine = repo.commit({"mine.txt": "1"}, "unpushed on main")
    repo.git("checkout", "-q", "-b", "feature")
    repo.git("config", "remote.origin.fetch", refspec)
    theirs = repo.push_from_elsewhere(tmp_path, {"theirs.txt": "1"})
    before = full_snapshot(repo.path)
    home.add(repo)
    result = inv("sync-all")
    assert result.code == 0, result.out + result.err
    assert ref(repo.path, "refs/heads/main") == mine, "the fetch overwrote main"
    assert ref(repo.path, "refs/remotes/origin/main") == theirs
    o = outcome_of(home, "mirror")
    assert (o["status"], o["reason"]) == ("skipped", "diverged: ahead 1, behind 1")
    assert o["before"] == mine
    assert outside_remote_tracking(full_snapshot(repo.path)) == outside_remote_tracking(before)


# 2. Local steps are not bound by the network timeout.
def test_slow_post_merge_hook_is_not_killed_by_the_network_timeout(home, make_repo, inv, tmp_path):
    repo = make_repo("hooked")
    add_hook(repo.path, "post-merge", "sleep 3")
    upstream = repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    home.add(repo)
    result = inv("sync-all", "--timeout", "2")
    assert result.code == 0, result.out
    assert repo.head() == upstream and repo.git("status", "--porcelain") == ""
    assert outcome_of(home, "hooked")["status"] == "updated"


def test_slow_checkout_filter_is_not_killed_by_the_network_timeout(home, make_repo, inv, tmp_path):
    repo = make_repo("filtered", {".gitattributes": "*.dat filter=slow\n"})
    repo.git("config", "filter.slow.smudge", "sleep 3; cat")
    repo.git("config", "filter.slow.clean", "cat")
    upstream = repo.push_from_elsewhere(tmp_path, {"big.dat": "payload\n"})
    home.add(repo)
    result = inv("sync-all", "--timeout", "2")
    assert result.code == 0, result.out
    assert repo.head() == upstream and (repo.path / "big.dat").read_text() == "payload\n"
    assert repo.git("status", "--porcelain") == ""
    assert outcome_of(home, "filtered")["status"] == "updated"


def test_fast_forward_killed_after_the_ref_moved_is_reported_as_what_happened(home, make_repo, tmp_path):
    repo = make_repo("killed-hook")
    pids = tmp_path / "hook.pid"
    add_hook(repo.path, "post-merge", f"echo $$ > {pids}; sleep 60")
    upstream = repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    home.add(repo)
    code, out = sync_killing_the_group_of(pids, tmp_path)
    assert repo.head() == upstream
    o = outcome_of(home, "killed-hook")
    assert code == 0 and o["status"] == "updated" and o["after"] == upstream, out
    assert "killed" in o["reason"] and "nothing changed" not in o["reason"]


def test_fast_forward_killed_mid_checkout_names_the_left_over_lock(home, make_repo, tmp_path):
    repo = make_repo("killed-filter", {".gitattributes": "*.dat filter=slow\n"})
    pids = tmp_path / "filter.pid"
    repo.git("config", "filter.slow.smudge", f"echo $$ >> {pids}; sleep 60; cat")
    repo.git("config", "filter.slow.clean", "cat")
    before = repo.head()
    repo.push_from_elsewhere(tmp_path, {"a.dat": "a\n", "b.dat": "b\n"})
    home.add(repo)
    code, out = sync_killing_the_group_of(pids, tmp_path)
    assert code == 1, out
    o = outcome_of(home, "killed-filter")
    assert o["status"] == "failed" and "nothing changed" not in o["reason"]
    assert o["after"] == repo.git("rev-parse", "refs/heads/main") == before
    assert "interrupted" in o["reason"]
    if (repo.path / ".git" / "index.lock").exists():
        assert "index.lock" in o["reason"]


# 3. Inherited repo-local git variables never redirect us to another repo.
@pytest.fixture
def intruder(make_repo, tmp_path):
    """Another repo, behind its remote, on its own branch, with an edit: what GIT_DIR will point at."""
    other = make_repo("intruder")
    other.push_from_elsewhere(tmp_path, {"other-upstream.txt": "1"})
    other.git("fetch", "-q")
    other.git("checkout", "-q", "-b", "intruder-branch", "main")
    (other.path / "intruder-edit.txt").write_text("theirs\n")
    return other


def point_git_at(monkeypatch, other) -> None:
    monkeypatch.setenv("GIT_DIR", str(other.path / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(other.path))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other.path / ".git" / "index"))


def test_sync_with_inherited_git_dir_moves_the_configured_repo_only(home, make_repo, inv, tmp_path, intruder,
                                                                      monkeypatch):
    repo = make_repo("target")
    upstream = repo.push_from_elsewhere(tmp_path, {"target-new.txt": "1"})
    intruder.git("checkout", "-q", "main")
    snap = full_snapshot(intruder.path)
    home.add(repo)
    point_git_at(monkeypatch, intruder)
    result = inv("sync-all")
    assert result.code == 0, result.out + result.err
    assert ref(repo.path, "refs/heads/main") == upstream
    assert outcome_of(home, "target")["status"] == "updated"
    assert full_snapshot(intruder.path) == snap, "the repo GIT_DIR named was touched"


def test_status_scan_and_workflow_with_inherited_git_dir_read_the_configured_repo(home, make_repo, inv, intruder,
                                                                                  monkeypatch):
    repo = make_repo("target")
    repo.git("checkout", "-q", "-b", "target-branch")
    head = repo.head()
    home.add(repo)
    point_git_at(monkeypatch, intruder)
    status = json.loads(inv("status", "--json").out)["repos"][0]
    assert (status["branch"], status["dirty"], status["head"]) == ("target-branch", 0, head)
    assert inv("scan").code == 0
    assert home.state("repo-status.json")["repos"][0]["branch"] == "target-branch"
    result = inv("workflow", "status", "target")
    assert result.code == 0, result.out + result.err
    assert "## target-branch" in result.out and "intruder" not in result.out


def test_sync_started_from_a_git_hook_in_a_linked_worktree_syncs_the_configured_repo(home, make_repo, tmp_path):
    # A hook in a linked worktree runs with an absolute GIT_DIR and GIT_INDEX_FILE.
    repo, host = make_repo("target"), make_repo("host")
    upstream = repo.push_from_elsewhere(tmp_path, {"x": "1"})
    host.push_from_elsewhere(tmp_path, {"host-upstream": "1"})
    host.git("fetch", "-q")
    linked = tmp_path / "host-linked"
    host.git("worktree", "add", "-q", "-b", "topic", str(linked), "main")
    host.git("checkout", "-q", "-b", "parked")
    home.add(repo)
    out = tmp_path / "hook-output.txt"
    add_hook(host.path, "pre-commit", f"env | grep ^GIT_ > {tmp_path / 'hook-env.txt'}; "
             f"{sys.executable} {ROOT / 'scripts' / 'sync_all_repos.py'} > {out} 2>&1")
    before_host = full_snapshot(host.path)
    (linked / "staged.txt").write_text("staged\n")
    git(linked, "add", "staged.txt")
    git(linked, "commit", "-q", "-m", "runs the hook")
    assert f"GIT_DIR={host.path}/.git/worktrees/" in (tmp_path / "hook-env.txt").read_text()
    assert "1 updated" in out.read_text(), out.read_text()
    assert ref(repo.path, "refs/heads/main") == upstream
    host_refs = [ln for ln in full_snapshot(host.path)["refs"].splitlines() if not ln.endswith("refs/heads/topic")]
    assert host_refs == [ln for ln in before_host["refs"].splitlines() if not ln.endswith("refs/heads/topic")]
    assert git(linked, "log", "-1", "--format=%s") == "runs the hook"


def test_demo_generator_with_inherited_git_dir_builds_its_own_repos(tmp_path, intruder, monkeypatch):
    from lib.demo import RepoSpec, generate

    snap = full_snapshot(intruder.path)
    point_git_at(monkeypatch, intruder)
    generate(tmp_path / "demo", [RepoSpec("solo", "make", "clean", {"Makefile": "all:\n"})], jobs=1)
    assert ref(tmp_path / "demo" / "repos" / "solo", "HEAD")
    assert full_snapshot(intruder.path) == snap


def test_our_list_of_repo_local_variables_covers_gits_own():
    from lib.gitstatus import REPO_LOCAL_GIT_VARS

    env = {k: v for k, v in os.environ.items() if k != "GIT_DIR"}
    listed = subprocess.run(["git", "rev-parse", "--local-env-vars"], capture_output=True, text=True, env=env)
    assert set(listed.stdout.split()) <= set(REPO_LOCAL_GIT_VARS)


# 4. The default branch checked out here and in another worktree (`worktree add -f`).
def test_default_branch_also_checked_out_in_a_forced_worktree_is_skipped(home, make_repo, inv, tmp_path):
    repo = make_repo("twice")
    repo.git("worktree", "add", "-q", "-f", str(tmp_path / "second"), "main")
    repo.push_from_elsewhere(tmp_path, {"x": "1"})
    before, before_other = full_snapshot(repo.path), full_snapshot(tmp_path / "second")
    home.add(repo)
    assert inv("sync-all").code == 0
    o = outcome_of(home, "twice")
    assert o["status"] == "skipped" and "checked out in worktree" in o["reason"] and "second" in o["reason"]
    assert outside_remote_tracking(full_snapshot(repo.path)) == outside_remote_tracking(before)
    assert outside_remote_tracking(full_snapshot(tmp_path / "second")) == outside_remote_tracking(before_other)


# 5. One sync per workspace.
def test_a_second_sync_refuses_while_one_runs_and_names_it(home, make_repo, inv, tmp_path):
    repo = make_repo("slow-remote")
    pids = tmp_path / "upload.pid"
    repo.git("config", "remote.origin.uploadpack", f"echo $$ > {pids}; sleep 60; git-upload-pack")
    home.add(repo)
    first = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_file(pids)
        before = full_snapshot(repo.path)
        second = inv("sync-all")
        assert second.code == 2
        assert second.err.count("\n") == 1 and f"pid {first.pid}" in second.err and "already running" in second.err
        assert full_snapshot(repo.path) == before
    finally:
        kill_group_of(pids)
        first.communicate(timeout=60)
    assert outcome_of(home, "slow-remote")["status"] == "failed", "the first run's record stands"


def test_a_lock_file_left_by_a_killed_run_does_not_block(home, make_repo, inv, tmp_path):
    repo = make_repo("after-crash")
    upstream = repo.push_from_elsewhere(tmp_path, {"x": "1"})
    (home.path / "state").mkdir()
    (home.path / "state" / "sync.lock").write_text("pid 999999999 started 2026-01-01T00:00:00+00:00\n")
    home.add(repo)
    assert inv("sync-all").code == 0
    assert repo.head() == upstream


# 6. A failed fetch is a failure.
def test_failed_fetch_is_failed_with_gits_line_and_exit_1(home, make_repo, inv, tmp_path):
    ok, broken = make_repo("ok"), make_repo("broken")
    broken.git("remote", "set-url", "origin", str(tmp_path / "no-such-remote.git"))
    before = full_snapshot(broken.path)
    home.add(ok, broken)
    result = inv("sync-all")
    assert result.code == 1
    o = outcome_of(home, "broken")
    assert o["status"] == "failed" and o["reason"].startswith("fetch failed: ")
    assert "does not appear to be a git repository" in o["reason"] or "no-such-remote" in o["reason"]
    assert "1 failed" in result.out.splitlines()[-1]
    assert full_snapshot(broken.path) == before


# 7. A deleted or renamed upstream branch.
def test_upstream_branch_renamed_on_the_remote_is_skipped_as_gone(home, make_repo, inv):
    repo = make_repo("renamed")
    git(repo.remote, "branch", "-m", "main", "trunk")
    git(repo.remote, "symbolic-ref", "HEAD", "refs/heads/trunk")
    before = full_snapshot(repo.path)
    home.add(repo)
    assert inv("sync-all").code == 0
    o = outcome_of(home, "renamed")
    assert o["status"] == "skipped" and o["reason"].startswith("upstream gone: origin/main")
    assert "now trunk" in o["reason"]
    assert ref(repo.path, "refs/remotes/origin/main") is None, "the stale tracking ref was pruned"
    assert ref(repo.path, "refs/heads/main") == repo.head()
    assert outside_remote_tracking(full_snapshot(repo.path)) == outside_remote_tracking(before)


# 8. Two entries for one directory.
@pytest.mark.parametrize("spelling", ["slash", "symlink", "dotdot"])
def test_two_entries_for_one_directory_are_a_config_error_for_every_command(home, make_repo, inv, tmp_path, spelling):
    repo = make_repo("same")
    if spelling == "symlink":
        (tmp_path / "alias").symlink_to(repo.path)
        other = str(tmp_path / "alias")
    else:
        other = str(repo.path) + ("/" if spelling == "slash" else "/../same")
    home.write_repos([{"name": "one", "local": str(repo.path)}, {"name": "two", "local": other}])
    before = full_snapshot(repo.path)
    for command in (["sync-all"], ["status"], ["scan"], ["test-all"], ["workflow-all", "status"]):
        result = inv(*command)
        assert result.code == 2, (command, result.out, result.err)
        assert result.err.strip().count("\n") == 0, result.err
        assert "repositories[1] (two).local" in result.err and "repositories[0] (one)" in result.err
    assert full_snapshot(repo.path) == before


# 9. Dry runs keep the audit trail; results merge by repo.
def test_dry_run_does_not_replace_the_real_log_and_tag_runs_merge_results(home, make_repo, inv, tmp_path):
    a, b = make_repo("a"), make_repo("b")
    upstream = a.push_from_elsewhere(tmp_path, {"x": "1"})
    home.write_repos([{"name": "a", "local": str(a.path), "tags": ["web"]},
                      {"name": "b", "local": str(b.path), "tags": ["core"]}])
    assert inv("sync-all").code == 0
    real_log = Path(outcome_of(home, "a")["log"])
    real_text = real_log.read_text()
    assert "updated" in real_text
    assert inv("sync-all", "--dry-run").code == 0
    assert real_log.read_text() == real_text, "the dry run replaced the real log"
    assert outcome_of(home, "a")["log"] == str(real_log)
    b.push_from_elsewhere(tmp_path, {"y": "1"})
    assert inv("sync-all", "--tag", "core").code == 0
    results = {r["repo"]: r for r in home.state("sync-results.json")["results"]}
    assert results["a"]["status"] == "updated" and results["a"]["after"] == upstream
    assert results["b"]["status"] == "updated"
    assert home.state("sync-results.json")["summary"]["total"] == 2


# 10. --clone-missing cleans up after itself and says where a clone landed.
def test_failed_clone_removes_the_directories_it_created(home, inv, tmp_path):
    target = tmp_path / "new-parent" / "deeper" / "fresh"
    home.write_repos([{"name": "fresh", "local": str(target), "remote": str(tmp_path / "missing.git")}])
    result = inv("sync-all", "--clone-missing")
    assert result.code == 1
    assert outcome_of(home, "fresh")["reason"].startswith("clone failed: ")
    assert not (tmp_path / "new-parent").exists()


def test_clone_inside_another_work_tree_says_so(home, make_repo, inv):
    host, source = make_repo("host"), make_repo("source")
    target = host.path / "vendor" / "lib"
    home.write_repos([{"name": "host", "local": str(host.path)},
                      {"name": "lib", "local": str(target), "remote": str(source.remote)}])
    assert inv("sync-all", "--clone-missing").code == 0
    o = outcome_of(home, "lib")
    assert o["status"] == "cloned" and f"inside the work tree of {host.path}" in o["reason"]
    assert git(target, "rev-parse", "HEAD") == source.head()


# 11. Refusals name the files; the table names the branch it shows.
def test_refused_fast_forward_names_the_files(home, make_repo, inv, tmp_path):
    repo = make_repo("ignored", {".gitignore": "*.env\n"})
    for name in ("a.env", "b.env"):
        (repo.path / name).write_text("MINE\n")
    repo.push_from_elsewhere(tmp_path, {".gitignore": "", "a.env": "UP\n", "b.env": "UP\n"})
    before = full_snapshot(repo.path)
    home.add(repo)
    result = inv("sync-all")
    assert result.code == 1
    reason = outcome_of(home, "ignored")["reason"]
    assert "would be overwritten by merge: a.env, b.env" in reason and "nothing changed" in reason
    assert outside_remote_tracking(full_snapshot(repo.path)) == outside_remote_tracking(before)


def test_table_names_the_default_branch_and_shows_the_checked_out_one(home, make_repo, inv):
    repo = make_repo("feat-repo", push=False)
    repo.git("checkout", "-q", "-b", "feat")
    home.add(repo)
    result = inv("sync-all")
    header, _, row = result.out.splitlines()[:3]
    assert header.split()[:3] == ["REPO", "DEFAULT", "BRANCH"]
    assert "main (on feat)" in row and "skipped: main has no upstream" in row
    assert outcome_of(home, "feat-repo")["checked_out"] == "feat"


# Hostile corners around the items above.
def test_tags_follow_the_fetch_and_local_tags_survive_prune_tags_config(home, make_repo, inv, tmp_path):
    repo = make_repo("tags")
    repo.git("tag", "only-mine")
    repo.git("config", "fetch.pruneTags", "true")
    repo.git("config", "remote.origin.prune", "true")
    colleague = tmp_path / "tagger"
    git(tmp_path, "clone", "-q", str(repo.remote), str(colleague))
    git(colleague, "commit", "-q", "--allow-empty", "-m", "release")
    git(colleague, "tag", "v2")
    git(colleague, "push", "-q", "origin", "main", "v2")
    home.add(repo)
    assert inv("sync-all").code == 0
    assert ref(repo.path, "refs/tags/only-mine") and ref(repo.path, "refs/tags/v2")
    assert outcome_of(home, "tags")["status"] == "updated"


def test_clone_that_times_out_leaves_nothing_behind(home, inv, tmp_path):
    git(tmp_path, "config", "--global", "core.sshCommand", "sleep 30; :")
    target = tmp_path / "made" / "for" / "slow"
    home.write_repos([{"name": "slow", "local": str(target), "remote": "ssh://example.invalid/slow.git"}])
    result = inv("sync-all", "--clone-missing", "--timeout", "1")
    assert result.code == 1
    assert outcome_of(home, "slow")["reason"] == "clone failed: timed out after 1s"
    assert not (tmp_path / "made").exists()


def test_hook_that_moves_the_branch_after_the_fast_forward_is_reported(home, make_repo, inv, tmp_path):
    repo = make_repo("rewriting-hook")
    add_hook(repo.path, "post-merge", "git commit -q --allow-empty -m 'hook commit'")
    upstream = repo.push_from_elsewhere(tmp_path, {"x": "1"})
    home.add(repo)
    assert inv("sync-all").code == 0
    o = outcome_of(home, "rewriting-hook")
    hook_commit = ref(repo.path, "refs/heads/main")
    assert hook_commit != upstream and ref(repo.path, "refs/heads/main~1") == upstream
    assert o["status"] == "updated" and o["after"] == hook_commit
    assert f"then main moved to {hook_commit[:7]}" in o["reason"]


def test_default_branch_that_is_not_a_branch_name_fails_and_moves_nothing(home, make_repo, inv):
    repo = make_repo("odd-branch")
    repo.commit({"x": "1"}, "second")
    before = full_snapshot(repo.path)
    home.add(repo, default_branch="main~1")
    assert inv("sync-all").code == 1
    assert outcome_of(home, "odd-branch")["reason"] == "default_branch 'main~1' is not a valid branch name"
    assert full_snapshot(repo.path) == before


def test_index_lock_left_by_a_killed_git_is_a_skip_that_names_it(home, make_repo, inv, tmp_path):
    repo = make_repo("locked")
    repo.push_from_elsewhere(tmp_path, {"x": "1"})
    lock = repo.path / ".git" / "index.lock"
    lock.write_text("")
    before = full_snapshot(repo.path)
    home.add(repo)
    assert inv("sync-all").code == 0
    o = outcome_of(home, "locked")
    assert o["status"] == "skipped" and f"{lock} exists" in o["reason"]
    assert outside_remote_tracking(full_snapshot(repo.path)) == outside_remote_tracking(before) and lock.exists()


def test_broken_symlink_as_local_path_is_not_cloned_through(home, make_repo, inv, tmp_path):
    source = make_repo("source")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere" / "target")
    home.write_repos([{"name": "linked", "local": str(link), "remote": str(source.remote)}])
    assert inv("sync-all", "--clone-missing").code == 1
    assert outcome_of(home, "linked")["reason"] == "path is a broken symlink"
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("packed", [False, True], ids=["loose branches", "packed branches"])
def test_head_switched_to_another_branch_during_the_sync_is_left_alone(home, make_repo, tmp_path, packed):
    """An agent switches the work tree's branch while sync looks at it (here: the fsmonitor hook of the dirty
    check, the last git before the fast-forward): the branch is not fast-forwarded under the other branch's work
    tree, and nothing is touched."""
    repo = make_repo("switched")
    repo.git("branch", "side")
    if packed:
        repo.git("pack-refs", "--all")
    before = repo.head()
    repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    marker = tmp_path / "switched-once"
    hook = tmp_path / "switching-fsmonitor"
    hook.write_text(f"#!/bin/sh\n[ -e '{marker}' ] || {{ touch '{marker}'; "
                    f"git --git-dir='{repo.path / '.git'}' symbolic-ref HEAD refs/heads/side; }}\nexit 1\n")
    hook.chmod(0o755)
    repo.git("config", "core.fsmonitor", str(hook))
    home.add(repo)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert marker.exists(), "the hook never ran: the test proves nothing"
    o = outcome_of(home, "switched")
    assert o["status"] == "skipped" and o["reason"] == "HEAD moved to another branch while syncing: left alone", o
    assert repo.git("rev-parse", "refs/heads/main") == before
    assert repo.git("symbolic-ref", "HEAD") == "refs/heads/side"
