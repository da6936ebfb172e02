"""sync-all on real repos with real bare remotes: each case ends with one outcome and loses nothing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, git, into_closed_pipe, run_script, stop_when
from tests.sync_fixtures import full_snapshot, outside_remote_tracking


def snapshot(repo) -> dict:
    """All refs but remote-tracking ones (a fetch may move those), stashes, index, status, HEAD."""
    full = outside_remote_tracking(full_snapshot(repo.path))
    refs = dict(line.split(" ", 1)[::-1] for line in full["refs"].splitlines())
    return {**full, "refs": refs, "commit": repo.git("rev-parse", "HEAD"), "symbolic": _symbolic(repo)}


def _symbolic(repo) -> str | None:
    result = subprocess.run(["git", "-C", str(repo.path), "symbolic-ref", "-q", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or None


def assert_nothing_lost(repo, before: dict) -> None:
    after = snapshot(repo)
    for ref, old in before["refs"].items():
        new = after["refs"].get(ref)
        assert new is not None, f"{ref} was deleted"
        ancestor = subprocess.run(["git", "-C", str(repo.path), "merge-base", "--is-ancestor", old, new])
        assert ancestor.returncode == 0, f"{ref} lost commit {old}"


def outcome_of(home, name: str) -> dict:
    return next(r for r in home.state("sync-results.json")["results"] if r["repo"] == name)


def test_behind_repo_is_fast_forwarded_without_a_merge_commit(home, make_repo, inv, tmp_path):
    repo = make_repo("behind")
    upstream = repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    before = snapshot(repo)
    home.add(repo)
    result = inv("sync-all")
    assert result.code == 0, result.out + result.err
    assert repo.head() == upstream
    assert repo.git("rev-list", "--parents", "-n", "1", "HEAD").count(" ") == 1, "a merge commit was made"
    assert (repo.path / "new.txt").read_text() == "1"
    assert outcome_of(home, "behind")["status"] == "updated"
    assert_nothing_lost(repo, before)
    assert home.state("repo-status.json")["repos"][0]["behind"] == 0, "scan state refreshed after sync"
    assert (Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-sync-behind.log").exists()


def test_ahead_repo_is_up_to_date_and_keeps_its_commits(home, make_repo, inv):
    repo = make_repo("ahead")
    mine = repo.commit({"mine.txt": "1"}, "unpushed")
    home.add(repo)
    assert inv("sync-all").code == 0
    assert repo.head() == mine
    o = outcome_of(home, "ahead")
    assert o["status"] == "up to date" and o["reason"] == "ahead 1, not pushed"


def test_diverged_repo_is_skipped_and_both_histories_stay(home, make_repo, inv, tmp_path):
    repo = make_repo("diverged")
    theirs = repo.push_from_elsewhere(tmp_path, {"theirs.txt": "1"})
    mine = repo.commit({"mine.txt": "1"}, "mine")
    home.add(repo)
    result = inv("sync-all")
    assert result.code == 0
    assert "skipped: diverged: ahead 1, behind 1" in result.out
    assert repo.head() == mine and repo.remote_ref() == theirs


def test_dirty_repo_is_skipped_and_its_edits_untouched(home, make_repo, inv, tmp_path):
    repo = make_repo("dirty", {"README.md": "old\n"})
    repo.push_from_elsewhere(tmp_path, {"README.md": "theirs\n"})
    (repo.path / "README.md").write_text("my edit\n")
    before = snapshot(repo)
    home.add(repo)
    assert inv("sync-all").code == 0
    assert (repo.path / "README.md").read_text() == "my edit\n"
    assert snapshot(repo) == before
    assert outcome_of(home, "dirty")["reason"] == "dirty: uncommitted changes on main"


def test_untracked_file_counts_as_dirty_on_the_default_branch(home, make_repo, inv, tmp_path):
    repo = make_repo("untracked")
    repo.push_from_elsewhere(tmp_path, {"new.txt": "theirs\n"})
    (repo.path / "new.txt").write_text("mine, untracked\n")
    home.add(repo)
    assert inv("sync-all").code == 0
    assert (repo.path / "new.txt").read_text() == "mine, untracked\n"
    assert outcome_of(home, "untracked")["status"] == "skipped"


def test_detached_head_is_fetched_but_skipped(home, make_repo, inv, tmp_path):
    repo = make_repo("detached")
    repo.git("checkout", "-q", "--detach")
    upstream = repo.push_from_elsewhere(tmp_path, {"x": "1"})
    before = snapshot(repo)
    home.add(repo)
    assert inv("sync-all").code == 0
    assert outcome_of(home, "detached")["reason"] == "detached HEAD"
    assert snapshot(repo) == before
    assert repo.git("rev-parse", "refs/remotes/origin/main") == upstream, "fetched all the same"


def test_ignored_local_file_is_never_overwritten_by_a_fast_forward(home, make_repo, inv, tmp_path):
    repo = make_repo("ignored", {".gitignore": "secret.env\n"})
    (repo.path / "secret.env").write_text("MY LOCAL SECRET\n")
    repo.push_from_elsewhere(tmp_path, {".gitignore": "", "secret.env": "UPSTREAM VERSION\n"})
    before = snapshot(repo)
    home.add(repo)
    result = inv("sync-all")
    assert (repo.path / "secret.env").read_text() == "MY LOCAL SECRET\n"
    assert result.code == 1
    outcome = outcome_of(home, "ignored")
    assert outcome["status"] == "failed" and "fast-forward refused, nothing changed" in outcome["reason"]
    assert snapshot(repo) == before
    assert "secret.env" in Path(outcome["log"]).read_text(), "git's own reason is in the sync log"


def test_timeout_zero_means_no_limit(home, make_repo, inv, tmp_path):
    repo = make_repo("behind")
    upstream = repo.push_from_elsewhere(tmp_path, {"x": "1"})
    home.add(repo)
    assert inv("sync-all", "--timeout", "0").code == 0
    assert repo.head() == upstream


def test_other_branch_checked_out_moves_only_the_default_ref(home, make_repo, inv, tmp_path):
    repo = make_repo("feature")
    repo.git("checkout", "-q", "-b", "feature/x")
    repo.commit({"feature.txt": "wip\n"}, "wip")
    (repo.path / "feature.txt").write_text("uncommitted edit\n")
    (repo.path / "scratch.txt").write_text("untracked\n")
    upstream = repo.push_from_elsewhere(tmp_path, {"upstream.txt": "1"})
    before = snapshot(repo)
    home.add(repo)
    assert inv("sync-all").code == 0
    assert repo.git("rev-parse", "refs/heads/main") == upstream
    after = snapshot(repo)
    assert after["symbolic"] == "refs/heads/feature/x" and after["status"] == before["status"]
    assert (repo.path / "feature.txt").read_text() == "uncommitted edit\n"
    assert not (repo.path / "upstream.txt").exists()
    assert_nothing_lost(repo, before)
    assert outcome_of(home, "feature")["status"] == "updated"


def test_default_branch_checked_out_in_another_worktree_is_skipped(home, make_repo, inv, tmp_path):
    repo = make_repo("wt")
    repo.git("checkout", "-q", "-b", "other")
    repo.git("worktree", "add", "-q", str(tmp_path / "wt-main"), "main")
    repo.push_from_elsewhere(tmp_path, {"x": "1"})
    before = snapshot(repo)
    home.add(repo)
    assert inv("sync-all").code == 0
    assert "checked out in worktree" in outcome_of(home, "wt")["reason"]
    assert snapshot(repo)["refs"] == before["refs"]


def test_default_branch_being_rebased_in_another_worktree_is_skipped(home, make_repo, inv, tmp_path):
    repo = make_repo("rebasing")
    repo.git("checkout", "-q", "-b", "other")
    wt = tmp_path / "wt-main"
    repo.git("worktree", "add", "-q", str(wt), "main")
    # Stop an interactive rebase of main at its first commit: that worktree is now detached.
    git(wt, "-c", "sequence.editor=sed -i s/^pick/edit/", "rebase", "-q", "-i", "--root")
    assert git(wt, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"
    repo.push_from_elsewhere(tmp_path, {"x": "1"})
    before = snapshot(repo)
    home.add(repo)
    assert inv("sync-all").code == 0
    assert "being rebased in another worktree" in outcome_of(home, "rebasing")["reason"]
    assert snapshot(repo)["refs"] == before["refs"]


def test_merge_in_progress_is_skipped(home, make_repo, inv, tmp_path):
    repo = make_repo("merging", {"f.txt": "base\n"})
    repo.git("checkout", "-q", "-b", "side")
    repo.commit({"f.txt": "side\n"}, "side")
    repo.git("checkout", "-q", "main")
    repo.commit({"f.txt": "main\n"}, "main change")
    subprocess.run(["git", "-C", str(repo.path), "merge", "side"], capture_output=True)
    home.add(repo)
    assert inv("sync-all").code == 0
    assert outcome_of(home, "merging")["reason"] == "a merge is in progress"
    assert (repo.path / ".git" / "MERGE_HEAD").exists()


def test_no_upstream_is_fetched_but_skipped(home, make_repo, inv, tmp_path):
    repo = make_repo("local-only", push=False)
    colleague = tmp_path / "colleague"
    git(tmp_path, "clone", "-q", str(repo.path), str(colleague))
    git(colleague, "push", "-q", str(repo.remote), "HEAD:refs/heads/shared")
    home.add(repo)
    assert inv("sync-all").code == 0
    assert outcome_of(home, "local-only")["reason"] == "main has no upstream"
    assert repo.git("rev-parse", "refs/remotes/origin/shared") == repo.head(), "fetched all the same"


def test_unreachable_remote_fails_fast_and_touches_nothing(home, make_repo, inv, tmp_path):
    ok, broken, sshy = make_repo("ok"), make_repo("broken"), make_repo("sshy")
    broken.git("remote", "set-url", "origin", str(tmp_path / "no-such-remote.git"))
    sshy.git("remote", "set-url", "origin", "ssh://nobody@127.0.0.1:1/repo.git")
    before = snapshot(broken)
    home.add(ok, broken, sshy)
    started = time.monotonic()
    result = inv("sync-all")
    assert time.monotonic() - started < 30
    assert result.code == 1, "a failed fetch is a failure: cron and CI must hear of it (issue 10)"
    assert outcome_of(home, "broken")["status"] == "failed"
    assert outcome_of(home, "broken")["reason"].startswith("fetch failed: fatal: ")
    assert outcome_of(home, "sshy")["status"] == "failed"
    assert outcome_of(home, "sshy")["reason"].startswith("fetch failed: ssh: connect to host 127.0.0.1 port 1")
    assert outcome_of(home, "ok")["status"] == "up to date"
    assert "2 failed (2 could not be fetched: see their logs)" in result.out
    assert snapshot(broken) == before


def test_missing_path_is_skipped_or_cloned(home, make_repo, inv, tmp_path):
    source = make_repo("source")
    target = tmp_path / "elsewhere" / "fresh"
    home.write_repos([{"name": "fresh", "local": str(target), "remote": str(source.remote)}])
    result = inv("sync-all")
    assert result.code == 0 and "path missing (--clone-missing clones it)" in result.out
    assert not target.exists()
    result = inv("sync-all", "--clone-missing")
    assert result.code == 0, result.out
    assert outcome_of(home, "fresh")["status"] == "cloned"
    assert git(target, "rev-parse", "HEAD") == source.head()


def test_clone_missing_without_a_remote_fails(home, inv, tmp_path):
    home.write_repos([{"name": "ghost", "local": str(tmp_path / "ghost"), "remote": "unknown"}])
    assert inv("sync-all", "--clone-missing").code == 1
    assert "no remote to clone from" in outcome_of(home, "ghost")["reason"]


def test_dry_run_fetches_nothing_and_changes_nothing(home, make_repo, inv, tmp_path):
    repo = make_repo("behind")
    repo.push_from_elsewhere(tmp_path, {"x": "1"})
    repo.git("fetch", "-q")
    before = snapshot(repo)
    home.add(repo)
    result = inv("sync-all", "--dry-run")
    assert result.code == 0 and "would update" in result.out
    assert snapshot(repo) == before
    assert not (home.path / "state" / "sync-results.json").exists()


def test_sync_script_runs_from_another_directory(home, make_repo, tmp_path):
    repo = make_repo("behind")
    upstream = repo.push_from_elsewhere(tmp_path, {"x": "1"})
    home.add(repo)
    result = run_script("sync_all_repos.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert repo.head() == upstream and "1 updated" in result.stdout


def test_sync_script_into_a_closed_pipe_records_the_sync_and_exits_1_without_a_traceback(home, make_repo, tmp_path):
    """`sync_all_repos.py | head -0`: the reader is gone before the table is printed; the sync is done and
    recorded, and the script ends as the scan script does (it skips the interpreter's teardown)."""
    repo = make_repo("behind")
    upstream = repo.push_from_elsewhere(tmp_path, {"x": "1"})
    home.add(repo)
    result = into_closed_pipe([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert repo.head() == upstream
    assert home.state("sync-results.json")["results"][0]["status"] == "updated"
    assert home.state("repo-status.json")["repos"][0]["name"] == "behind"


def test_sync_script_with_stdout_on_a_full_disk_says_so_in_one_line_and_exits_1(home, make_repo, tmp_path):
    home.add(make_repo("a"))
    with open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], cwd=tmp_path,
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == "error: cannot print the summary: No space left on device"
    assert home.state("sync-results.json")["results"][0]["repo"] == "a"


@pytest.mark.parametrize("stderr", ["a closed pipe", "closed"])
def test_sync_script_whose_stderr_fails_still_syncs_every_repo_and_records_it(home, make_repo, tmp_path, stderr):
    """`sync_all_repos.py 2>&1 | head -1` (the progress lines go into a pipe nobody reads) and `2>&-`: the
    progress falls silent, the work does not. Before, the progress line's BrokenPipeError reached the run,
    which killed the fast-forwards under way mid-checkout and recorded nothing; with stderr closed, nothing ran."""
    repos = [make_repo(f"r{i}") for i in range(3)]
    tips = [repo.push_from_elsewhere(tmp_path, {f"f{n}.txt": f"{n}\n" for n in range(20)}) for repo in repos]
    home.add(*repos)
    script = [sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")]
    if stderr == "closed":
        result = subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", *script], cwd=tmp_path, stdout=subprocess.PIPE,
                                text=True, timeout=120)
    else:
        result = into_closed_pipe(script, tmp_path, stream="stderr")
    assert result.returncode == 0 and "3 updated" in result.stdout, result.stdout
    assert [repo.head() for repo in repos] == tips
    assert all(repo.git("status", "--porcelain") == "" for repo in repos)
    assert [r["status"] for r in home.state("sync-results.json")["results"]] == ["updated"] * 3
    assert [r["behind"] for r in home.state("repo-status.json")["repos"]] == [0, 0, 0]


def test_sync_script_refusing_its_input_leaves_no_temporary_directory(home, make_repo, tmp_path):
    """An unknown tag is exit 2 before anything starts: no git of the run's set-up (it lists the shared config in
    a temporary directory, which the script's fast exit would leave behind)."""
    home.add(make_repo("a"))
    temp = tmp_path / "temp"
    temp.mkdir()
    for _ in range(3):
        result = run_script("sync_all_repos.py", "--tag", "nosuch", cwd=tmp_path, env={"TMPDIR": str(temp)})
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert list(temp.iterdir()) == []


def test_a_repos_log_holds_only_the_last_runs_lines(home, make_repo, tmp_path):
    """The log is written over, not truncated to nothing first: the shorter second run's log must not keep the
    tail of the first (the fast-forward's lines), nor the one before it, a longer planted file."""
    repo = make_repo("behind")
    repo.push_from_elsewhere(tmp_path, {"x": "1"})
    home.add(repo)
    log = Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-sync-behind.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("stale line from long ago\n" * 1000)
    for expected in ("behind: updated", "behind: up to date"):
        assert run_script("sync_all_repos.py", cwd=tmp_path).returncode == 0
        lines = log.read_text().splitlines()
        assert lines[0].startswith("# orchestrator sync behind at ") and lines[-1].startswith(f"outcome: {expected}")
        assert sum(line.startswith("# orchestrator sync") for line in lines) == 1 and "stale" not in log.read_text()
    assert not any("merge" in line for line in lines), "the first run's fast-forward lines were left"


def test_sync_script_stopped_while_its_set_up_runs_leaves_no_temporary_directory(home, make_repo, tmp_path):
    """Ctrl-C while the run waits for its set-up (the shared config listing, slowed here): the listing's
    temporary directory is removed before the script ends (it ends by os._exit, which removes nothing)."""
    home.add(make_repo("a"))
    temp, wrapper_dir, listing = tmp_path / "temp", tmp_path / "wrapper", tmp_path / "listing-started"
    temp.mkdir()
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "git"
    real_git = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True).stdout.strip()
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *"config -z --list"*) touch "{listing}"; sleep 3;; esac\n'
                       f'exec "{real_git}" "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "TMPDIR": str(temp), "PATH": f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}"}
    sync = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = stop_when(sync, listing.exists, signal.SIGINT, seconds=60)
    assert sync.returncode == 130 and "Traceback" not in err, err
    assert list(temp.iterdir()) == [], err
