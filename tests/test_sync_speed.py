"""sync-all reads refs, HEAD and config from the repo's files: 2 gits per up-to-date repo, same outcomes.

Every case runs twice, once as sync reads now and once with the file readers in doubt
(every read then goes to git, as before): the outcomes must be the same, and on every
skip path the repo must be left exactly as it was (refs, stashes, index, status).
"""
from __future__ import annotations

import os
import shutil
import stat
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from lib import gitrefs
from lib.config import Repo, load_workspace
from lib.gitstatus import read_state
from lib.paths import Paths
from lib.scan import scan_workspace
from lib.sync import run_sync, sync_repo
from tests.conftest import RepoHandle, git
from tests.sync_fixtures import add_hook, full_snapshot, outside_remote_tracking

Setup = Callable[[RepoHandle, Path], dict]


def behind(repo: RepoHandle, tmp: Path) -> dict:
    repo.push_from_elsewhere(tmp, {"up.txt": "1"})
    return {}


def ahead(repo: RepoHandle, tmp: Path) -> dict:
    repo.commit({"mine.txt": "1"}, "unpushed")
    repo.commit({"mine.txt": "2"}, "unpushed too")
    return {}


def behind_and_dirty(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    (repo.path / "README.md").write_text("edited\n")
    repo.git("stash", "list")
    return {}


def diverged(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    repo.commit({"mine.txt": "1"}, "mine")
    return {}


def detached(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    repo.git("checkout", "-q", "--detach")
    return {}


def no_upstream(repo: RepoHandle, tmp: Path) -> dict:
    repo.git("branch", "--unset-upstream")
    return {}


def upstream_gone(repo: RepoHandle, tmp: Path) -> dict:
    repo.git("config", "branch.main.merge", "refs/heads/gone")
    return {}


def other_branch_checked_out_behind(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    repo.git("checkout", "-q", "-b", "feature")
    return {}


def merge_in_progress(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    (repo.path / ".git" / "MERGE_HEAD").write_text(repo.head() + "\n")
    return {}


def alias_branch(repo: RepoHandle, tmp: Path) -> dict:
    repo.git("symbolic-ref", "refs/heads/trunk", "refs/heads/main")
    return {"default_branch": "trunk"}


def upstream_remote_unknown(repo: RepoHandle, tmp: Path) -> dict:
    repo.git("config", "branch.main.remote", "nowhere")
    return {}


def no_local_branch(repo: RepoHandle, tmp: Path) -> dict:
    return {"default_branch": "develop"}


def invalid_branch_name(repo: RepoHandle, tmp: Path) -> dict:
    return {"default_branch": "a..b"}


def packed_refs_behind(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    repo.git("fetch", "-q", "origin")
    repo.git("pack-refs", "--all")
    return {}


def mirror_refspec_and_stash(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    repo.git("config", "--add", "remote.origin.fetch", "+refs/heads/*:refs/heads/*")
    (repo.path / "README.md").write_text("stashed\n")
    repo.git("stash", "-q")
    return {}


def index_lock(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    (repo.path / ".git" / "index.lock").write_text("")
    return {}


def linked_worktree(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    repo.git("checkout", "-q", "-b", "side")
    worktree = repo.path.parent / f"{repo.path.name}-wt"
    repo.git("worktree", "add", "-q", str(worktree), "main")
    return {"local": worktree}


def config_with_quotes(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    repo.git("config", "user.name", "Dana # the second")  # git writes it quoted: lib.gitconfig leaves it to git
    return {}


def remote_odd_to_read(repo: RepoHandle, tmp: Path) -> dict:
    behind(repo, tmp)
    repo.git("config", "remote.origin.tagopt", "--no-tags")
    repo.git("config", "remote.origin.newfangled", "1")  # unknown to gitrefs: every read goes to git
    return {}


CASES: dict[str, Setup] = {
    "up to date": lambda repo, tmp: {},
    "ahead": ahead,
    "behind": behind,
    "behind and dirty": behind_and_dirty,
    "diverged": diverged,
    "detached": detached,
    "no upstream": no_upstream,
    "upstream gone": upstream_gone,
    "other branch checked out, main behind": other_branch_checked_out_behind,
    "merge in progress": merge_in_progress,
    "default branch a symbolic ref": alias_branch,
    "upstream remote not configured": upstream_remote_unknown,
    "no local branch": no_local_branch,
    "invalid branch name": invalid_branch_name,
    "packed refs": packed_refs_behind,
    "mirror refspec and a stash": mirror_refspec_and_stash,
    "index.lock": index_lock,
    "linked worktree": linked_worktree,
    "remote config gitrefs leaves to git": remote_odd_to_read,
    "config file gitconfig leaves to git": config_with_quotes,
}
MOVES = {"behind", "other branch checked out, main behind", "packed refs", "mirror refspec and a stash",
         "linked worktree", "remote config gitrefs leaves to git", "config file gitconfig leaves to git"}


def sync_case(make_repo, tmp_path: Path, case: str, name: str, dry_run: bool = False) -> tuple[dict, dict, dict]:
    """(outcome as comparable fields, snapshot before, snapshot after) of one sync of a repo set up as `case`."""
    repo = make_repo(name)
    fields = CASES[case](repo, tmp_path)
    path = Path(fields.pop("local", repo.path))
    before = outside_remote_tracking(full_snapshot(path))
    outcome = sync_repo(Repo(name, path, **fields), tmp_path / "logs", dry_run=dry_run)
    after = outside_remote_tracking(full_snapshot(path))
    seen = {k: v for k, v in outcome.to_json().items() if k not in ("log", "duration_s", "repo")}
    seen["reason"] = (seen["reason"] or "").replace(name, "NAME")
    return seen, before, after


def in_doubt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every file reader unsure: sync then asks git for everything, as before gitrefs."""
    monkeypatch.setattr(gitrefs, "git_dirs", lambda worktree: None)


@pytest.mark.parametrize("dry_run", [False, True], ids=["sync", "dry run"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_files_read_give_the_outcome_git_reads_give_and_skips_touch_nothing(make_repo, tmp_path, monkeypatch,
                                                                           git_log, case, dry_run):
    fast, before, after = sync_case(make_repo, tmp_path, case, "alpha", dry_run)
    with monkeypatch.context() as patch:
        in_doubt(patch)
        slow, _, _ = sync_case(make_repo, tmp_path, case, "bravo", dry_run)
    gits = {name: sum(n for path, n in gits_per_repo(git_log).items() if f"/{name}" in path)
            for name in ("alpha", "bravo")}
    if case == "invalid branch name":
        assert gits["alpha"] == gits["bravo"], gits  # git judges the name, as before
    elif case == "remote config gitrefs leaves to git":
        assert gits["alpha"] == gits["bravo"], gits  # the config file read (no git), then every read from git
    else:
        assert gits["alpha"] < gits["bravo"], gits  # the files were read: fewer gits
    fast_shape = {k: v for k, v in fast.items() if k not in ("before", "after")}
    slow_shape = {k: v for k, v in slow.items() if k not in ("before", "after")}
    assert fast_shape == slow_shape
    assert (fast["before"] is None) == (slow["before"] is None)
    if dry_run or case not in MOVES:
        assert fast["status"] != "updated"
        assert after == before, "a skip path changed the repo"
    else:
        assert fast["status"] == "updated", fast


@pytest.fixture
def git_log(tmp_path, monkeypatch) -> Path:
    """A `git` first on PATH that logs each call's directory and arguments (one line, NUL-separated) and runs
    the real one."""
    binary = shutil.which("git")
    assert binary is not None
    wrapper_dir = tmp_path / "wrapper"
    wrapper_dir.mkdir()
    log = tmp_path / "git-calls.log"
    wrapper = wrapper_dir / "git"
    # One printf, so one write per call: gits running at once never interleave their lines.
    wrapper.write_text('#!/bin/sh\nformat=%s\\\\0\nfor arg in "$@"; do format="$format%s\\\\0"; done\n'
                       f'printf "$format\\\\n" "$PWD" "$@" >> "{log}"\nexec "{binary}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def gits_per_repo(log: Path) -> Counter[str]:
    """How many gits ran in each directory (`-C DIR`, else the one they started in): sync's and the scan's,
    and what a fetch starts through PATH (`git maintenance run --auto`; not its upload-pack)."""
    counts: Counter[str] = Counter()
    for line in log.read_bytes().splitlines():
        cwd, *args = line.decode().split("\0")[:-1]
        counts[os.path.realpath(args[args.index("-C") + 1] if "-C" in args else cwd)] += 1
    return counts


def test_an_up_to_date_repo_costs_two_gits_closing_scan_included(home, make_repo, tmp_path, git_log):
    kinds = {"clean": lambda r: None,
             "ahead": lambda r: r.commit({"mine.txt": "1"}, "unpushed"),
             "modified": lambda r: (r.path / "README.md").write_text("edited\n"),
             "untracked": lambda r: (r.path / "new.txt").write_text("new\n"),
             "feature checked out": lambda r: r.git("checkout", "-q", "-b", "feature"),
             "packed refs": lambda r: r.git("pack-refs", "--all")}
    repos = []
    for kind, setup in kinds.items():
        repo = make_repo(kind.replace(" ", "-"))
        setup(repo)
        repos.append(repo)
    home.add(*repos)
    git_log.write_bytes(b"")
    paths = Paths.from_env()
    report = run_sync(paths, load_workspace(paths.repos_file))
    assert [o.status for o in report.outcomes] == ["up to date"] * len(kinds), [o.line() for o in report.outcomes]
    counts = gits_per_repo(git_log)
    per_repo = {kind: counts[os.path.realpath(repo.path)] for kind, repo in zip(kinds, repos)}
    # The fetch and the scan's status; the config is read from the file, after one listing of the shared
    # config for the whole run (`-C` an empty directory: no repo's). An ahead branch's reason (which of its
    # commits were pushed) is read from the files too when every remote-tracking ref and every value of the
    # upstream's reflog is the upstream or below it; else git says (tests/test_sync_not_pushed.py).
    assert all(n == 2 for n in per_repo.values()), per_repo
    assert report.outcomes[1].reason == "ahead 1, not pushed"


def test_closing_scan_reuses_sync_rows_and_writes_what_a_fresh_scan_finds(home, make_repo, tmp_path, git_log):
    still = make_repo("still")
    (still.path / "new.txt").write_text("untracked\n")
    moved = make_repo("moved")
    behind(moved, tmp_path)
    home.add(still, moved)
    paths = Paths.from_env()
    git_log.write_bytes(b"")
    run_sync(paths, load_workspace(paths.repos_file))
    statuses = [args for args in git_log.read_bytes().splitlines() if b"\0status\0--porcelain=v2\0" in args]
    by_repo = Counter(os.path.realpath(line.split(b"\0")[line.split(b"\0").index(b"-C") + 1].decode())
                      for line in statuses)
    assert by_repo[os.path.realpath(still.path)] == 1, "the repo sync left alone got a second status"
    assert by_repo[os.path.realpath(moved.path)] == 1, "the moved repo is scanned at the end, once"
    written = read_state(paths.repo_status_file)["repos"]
    fresh = scan_workspace(load_workspace(paths.repos_file)).to_json()["repos"]
    assert written == fresh
    assert written[0]["untracked"] == 1 and written[1]["behind"] == 0


def reuse_recorded(monkeypatch) -> list[dict]:
    """The rows each closing scan was given to reuse, one dict per scan (lib.scan.scan_workspace recorded)."""
    import lib.scan

    reused: list[dict] = []
    scan_workspace_now = lib.scan.scan_workspace

    def recorded(workspace, jobs=0, tags=None, previous=None, reuse=None):
        reused.append(dict(reuse or {}))
        return scan_workspace_now(workspace, jobs, tags, previous, reuse)

    monkeypatch.setattr(lib.scan, "scan_workspace", recorded)
    return reused


def test_a_repo_fast_forwarded_in_its_work_tree_is_read_back_with_the_scans_status_hooks_included(
        home, make_repo, tmp_path, git_log, monkeypatch):
    """The fast-forward's post-merge hook edits a tracked file: the status that reads the fast-forward back (the
    scan's own, run after the merge and its hooks) shows the edit, as a fresh scan does, and the closing scan
    reuses it: one status in all, besides the dirty check before the merge."""
    moved = make_repo("moved")
    behind(moved, tmp_path)
    add_hook(moved.path, "post-merge", 'echo "edited by the hook" >> README.md')
    home.add(moved)
    paths = Paths.from_env()
    git_log.write_bytes(b"")
    reused = reuse_recorded(monkeypatch)
    report = run_sync(paths, load_workspace(paths.repos_file))
    assert [o.status for o in report.outcomes] == ["updated"], report.outcomes[0].line()
    assert report.outcomes[0].reason == "fast-forward: 1 commit(s) (1 path(s) differ from HEAD)"
    assert list(reused[0]) == ["moved"], "the read-back's row was not reused"
    statuses = [line for line in git_log.read_bytes().splitlines() if b"\0status\0" in line]
    assert len(statuses) == 2 and b"\0--porcelain=v2\0" in statuses[1], statuses
    written = read_state(paths.repo_status_file)["repos"]
    assert written == scan_workspace(load_workspace(paths.repos_file)).to_json()["repos"]
    assert written[0]["modified"] == 1 and written[0]["behind"] == 0


@pytest.mark.parametrize("how", ["branch moved without its work tree", "fast-forward refused"])
def test_a_repo_moved_without_a_read_back_or_failed_is_read_by_the_closing_scan(home, make_repo, tmp_path,
                                                                                git_log, monkeypatch, how):
    """No status reads an update-ref back (the work tree is not involved), and a failed fast-forward's state is
    not taken for the scan's: the closing scan reads those repos itself, and writes what a fresh scan finds."""
    if how == "fast-forward refused":  # an ignored local file upstream now tracks: the merge keeps it
        repo = make_repo("moved", {".gitignore": "secret.env\n"})
        (repo.path / "secret.env").write_text("MY LOCAL SECRET\n")
        repo.push_from_elsewhere(tmp_path, {".gitignore": "", "secret.env": "UPSTREAM VERSION\n"})
    else:
        repo = make_repo("moved")
        repo.git("checkout", "-q", "-b", "feature")
        behind(repo, tmp_path)
    home.add(repo)
    paths = Paths.from_env()
    git_log.write_bytes(b"")
    reused = reuse_recorded(monkeypatch)
    report = run_sync(paths, load_workspace(paths.repos_file))
    expected = "failed" if how == "fast-forward refused" else "updated"
    assert [o.status for o in report.outcomes] == [expected], report.outcomes[0].line()
    assert reused == [{}]
    written = read_state(paths.repo_status_file)["repos"]
    assert written == scan_workspace(load_workspace(paths.repos_file)).to_json()["repos"]


def test_repos_sharing_a_git_store_are_scanned_again(home, make_repo, tmp_path, git_log):
    """A worktree's row is read before the other worktree's fetch may move the shared refs: not reused."""
    main = make_repo("main-tree")
    main.git("checkout", "-q", "-b", "side")
    main.git("push", "-q", "-u", "origin", "side")
    other = tmp_path / "repos" / "other-tree"
    main.git("worktree", "add", "-q", str(other), "main")
    home.write_repos([{"name": "main-tree", "local": str(main.path)}, {"name": "other-tree", "local": str(other)}])
    behind(main, tmp_path)
    paths = Paths.from_env()
    git_log.write_bytes(b"")
    run_sync(paths, load_workspace(paths.repos_file), net_jobs=1)  # one at a time: both fetch into one store
    statuses = [line for line in git_log.read_bytes().splitlines() if b"\0status\0--porcelain=v2\0" in line]
    assert len(statuses) >= 3, "rows read by sync were reused although the store is shared"
    written = read_state(paths.repo_status_file)["repos"]
    assert written == scan_workspace(load_workspace(paths.repos_file)).to_json()["repos"]


def test_dry_run_reads_no_rows_and_writes_no_scan(home, make_repo, git_log):
    repo = make_repo("dry")
    home.add(repo)
    paths = Paths.from_env()
    run_sync(paths, load_workspace(paths.repos_file), dry_run=True)
    assert not paths.repo_status_file.exists()
    assert b"\0status\0" not in git_log.read_bytes()


def test_a_repo_git_refuses_to_use_fails_as_before(make_repo, tmp_path):
    """Dubious ownership: git lists none of the repo's config (exit 0) and refuses it; its files are not read."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the repo to another user")
    repo = make_repo("foreign")
    for root, dirs, files in os.walk(repo.path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), 65534, 65534)
    os.lchown(repo.path, 65534, 65534)
    outcome = sync_repo(Repo("foreign", repo.path), tmp_path / "logs")
    assert outcome.status == "failed" and "safe.directory" in (outcome.reason or ""), outcome.line()  # git says why


def test_a_row_read_before_a_clone_lands_in_its_work_tree_is_not_reused(home, make_repo, tmp_path):
    """The outer repo's row says clean; then --clone-missing clones into its work tree: the scan must see it."""
    outer = make_repo("outer")
    inner_source = make_repo("inner-source")
    inner = outer.path / "inner"
    home.write_repos([{"name": "outer", "local": str(outer.path)},
                      {"name": "inner", "local": str(inner), "remote": str(inner_source.remote)}])
    paths = Paths.from_env()
    report = run_sync(paths, load_workspace(paths.repos_file), net_jobs=1, clone_missing=True)
    assert [o.status for o in report.outcomes] == ["up to date", "cloned"]
    written = read_state(paths.repo_status_file)["repos"]
    assert written[0]["untracked"] == 1, "the outer repo's row was read before the clone and reused"
    assert written == scan_workspace(load_workspace(paths.repos_file)).to_json()["repos"]


def test_a_fetch_that_leaves_nothing_behind_costs_no_process_table_scan(home, make_repo, monkeypatch):
    """What left a fetch's group is the watchdog's to kill when the run ends (as for every read): no /proc
    scan of every process on the machine after each fetch (about 0.35 s of CPU per 100 repos with 500
    processes running). tests/test_sync_stop.py checks that such a leftover still dies with the run."""
    from lib import runner

    repos = [make_repo(name) for name in ("one", "two", "three")]
    home.add(*repos)
    scans = []
    real = runner.escaped_processes
    monkeypatch.setattr(runner, "escaped_processes", lambda *args, **kw: scans.append(args) or real(*args, **kw))
    paths = Paths.from_env()
    report = run_sync(paths, load_workspace(paths.repos_file))
    assert [o.status for o in report.outcomes] == ["up to date"] * 3, [o.line() for o in report.outcomes]
    assert scans == [], f"{len(scans)} process table scans for 3 fetches"


def test_sync_reads_the_last_scans_state_file_once(home, make_repo, monkeypatch):
    """The last scan's commits serve both sync's rows and the closing scan: one read of the file, not two."""
    from lib import gitstatus

    repo = make_repo("steady")
    home.add(repo)
    paths = Paths.from_env()
    run_sync(paths, load_workspace(paths.repos_file))  # writes the state file the next run reads
    reads = []
    real = gitstatus.read_regular
    monkeypatch.setattr(gitstatus, "read_regular", lambda path, *a, **kw: reads.append(path) or real(path, *a, **kw))
    report = run_sync(paths, load_workspace(paths.repos_file))
    assert [o.status for o in report.outcomes] == ["up to date"]
    assert reads.count(paths.repo_status_file) == 1, reads


def test_the_env_of_syncs_gits_is_built_once_per_run(home, make_repo, monkeypatch):
    """Each repo's gits get the same clean env (repo-local variables and our venv dropped): built from
    os.environ once per run, not once per repo (every PATH entry resolved each time: ~0.5 ms a repo)."""
    from lib import gitstatus, sync

    repos = [make_repo(name) for name in ("one", "two", "three")]
    home.add(*repos)
    builds = []
    for module, name in ((sync, "command_env"), (sync, "git_env"), (gitstatus, "git_env")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda real=real, name=name: builds.append(name) or real())
    monkeypatch.setenv("GIT_DIR", "/nowhere")  # inherited from a hook: must still be dropped
    paths = Paths.from_env()
    report = run_sync(paths, load_workspace(paths.repos_file))
    assert [o.status for o in report.outcomes] == ["up to date"] * 3, [o.line() for o in report.outcomes]
    # One for sync's gits, one for its status rows (the closing scan reuses them all: it starts no git).
    assert sorted(builds) == ["command_env", "git_env"], builds


def test_a_relative_path_entry_still_finds_the_repos_own_git_for_a_step(make_repo, tmp_path, monkeypatch):
    """A relative PATH entry is the repo's (its `tools/git` wrapper, say): steps run in the repo, not by -C from
    wherever sync-all was started."""
    repo = make_repo("wrapped")
    behind(repo, tmp_path)
    tools = repo.path / "tools"
    tools.mkdir()
    calls = tmp_path / "wrapper-calls"
    real = shutil.which("git")
    (tools / "git").write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\nexec "{real}" "$@"\n')
    (tools / "git").chmod(0o755)
    (repo.path / ".git" / "info" / "exclude").write_text("tools/\n")
    monkeypatch.setenv("PATH", f"tools{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    outcome = sync_repo(Repo("wrapped", repo.path), tmp_path / "logs")
    assert outcome.status == "updated", outcome.line()
    steps = calls.read_text().splitlines()
    assert any(line.startswith("fetch ") for line in steps) and any(line.startswith("merge ") for line in steps), steps


def test_git_that_cannot_start_fails_each_repo_and_the_run_goes_on(home, make_repo, tmp_path, monkeypatch):
    """No git on PATH: the run's one config listing cannot start either; each repo fails with the reason,
    as before, and the results are recorded (no traceback, no lost run)."""
    repos = [make_repo(name) for name in ("one", "two")]
    home.add(*repos)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    paths = Paths.from_env()
    workspace = load_workspace(paths.repos_file)
    monkeypatch.setenv("PATH", str(empty))
    from lib.sync import sync_all

    outcomes = sync_all(workspace.repos, tmp_path / "logs")
    assert [o.status for o in outcomes] == ["failed", "failed"], [o.line() for o in outcomes]
    assert all("git" in (o.reason or "") for o in outcomes), [o.line() for o in outcomes]


def test_a_behind_repo_with_no_linked_worktree_starts_no_worktree_listing(make_repo, tmp_path, git_log):
    """`git worktree list` reads the store's `worktrees/` directory: none there, no other worktree to ask about.
    Nor is HEAD asked of git before the fast-forward: read from its file (tests/test_sync_safety.py switches it)."""
    repo = make_repo("alone")
    behind(repo, tmp_path)
    git_log.write_bytes(b"")
    outcome = sync_repo(Repo("alone", repo.path), tmp_path / "logs")
    assert outcome.status == "updated", outcome.line()
    assert b"\0worktree\0" not in git_log.read_bytes()
    assert b"\0symbolic-ref\0" not in git_log.read_bytes()
    other = make_repo("shared")
    behind(other, tmp_path)
    other.git("checkout", "-q", "-b", "side")
    other.git("worktree", "add", "-q", str(tmp_path / "shared-main"), "main")
    outcome = sync_repo(Repo("shared", other.path), tmp_path / "logs")
    assert outcome.status == "skipped" and "checked out in worktree" in (outcome.reason or ""), outcome.line()


def git_first_on_path(tmp_path, monkeypatch, body: str) -> None:
    """A `git` first on PATH that runs `body` (sh) before the real git, with the same arguments."""
    wrapper_dir = tmp_path / "git-wrapper"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "git"
    wrapper.write_text(f'#!/bin/sh\n{body}\nexec "{shutil.which("git")}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}")


def test_at_most_net_jobs_repos_fetch_at_once(home, make_repo, tmp_path, monkeypatch):
    """--net-jobs 2 syncs 3 repos at once (one beside), never 3 fetches: each fetch waits for a third (3 s at
    most), then notes how many were fetching."""
    flight, seen = tmp_path / "in-flight", tmp_path / "seen"
    flight.mkdir()
    git_first_on_path(tmp_path, monkeypatch, f"""case " $* " in *" fetch "*)
    touch "{flight}/$$"; waited=0
    while [ "$(ls "{flight}" | wc -l)" -lt 3 ] && [ $waited -lt 60 ]; do sleep 0.05; waited=$((waited + 1)); done
    ls "{flight}" | wc -l >> "{seen}"; rm "{flight}/$$";;
esac""")
    home.add(*[make_repo(f"r{i}") for i in range(4)])
    paths = Paths.from_env()
    report = run_sync(paths, load_workspace(paths.repos_file), net_jobs=2)
    assert [o.status for o in report.outcomes] == ["up to date"] * 4
    assert max(int(n) for n in seen.read_text().split()) == 2


def test_a_repo_beside_the_fetching_ones_does_its_local_work_meanwhile(home, make_repo, tmp_path, monkeypatch):
    """Both network slots are held by fetches that wait for a status read (30 s at most): the repo beside them,
    which has no remote to fetch, reads its status meanwhile."""
    ran, waited_out = tmp_path / "status-ran", tmp_path / "waited-out"
    git_first_on_path(tmp_path, monkeypatch, f"""case " $* " in
  *" fetch "*) waited=0
    while [ ! -e "{ran}" ] && [ $waited -lt 600 ]; do sleep 0.05; waited=$((waited + 1)); done
    [ -e "{ran}" ] || touch "{waited_out}";;
  *" status "*) touch "{ran}";;
esac""")
    fetching = [make_repo("a"), make_repo("b")]
    local = make_repo("local")
    local.git("remote", "remove", "origin")
    home.add(*fetching, local)
    paths = Paths.from_env()
    report = run_sync(paths, load_workspace(paths.repos_file), net_jobs=2)
    assert [o.status for o in report.outcomes] == ["up to date", "up to date", "skipped"]
    assert not waited_out.exists(), "the fetches held every thread: nothing ran beside them"


def test_a_repo_waiting_for_a_network_slot_is_not_shown_as_running(home, make_repo, tmp_path, monkeypatch):
    """--net-jobs 2, three repos at once: both fetches wait (30 s at most) until the third repo is told to wait
    for a slot; meanwhile the live line counts it as waiting, not running, and once it has a slot it runs again."""
    import io

    import lib.sync
    from lib.progress import Progress

    told = tmp_path / "told-to-wait"
    git_first_on_path(tmp_path, monkeypatch, f"""case " $* " in *" fetch "*) waited=0
    while [ ! -e "{told}" ] && [ $waited -lt 600 ]; do sleep 0.05; waited=$((waited + 1)); done;;
esac""")
    lines: list[str] = []
    calls: list[tuple[str, str]] = []

    class Recorded(Progress):
        def __init__(self, label: str, total: int) -> None:
            super().__init__(label, total, io.StringIO(), live=True)

        def start(self, name: str) -> None:
            calls.append(("start", name))
            super().start(name)

        def wait(self, name: str) -> None:
            calls.append(("wait", name))
            super().wait(name)
            with self._lock:
                self._redraw()
                lines.append(self.stream.getvalue().rsplit("\r\x1b[K", 1)[-1])
            told.touch()

    monkeypatch.setattr(lib.sync, "Progress", Recorded)
    home.add(*[make_repo(f"r{i}") for i in range(3)])
    paths = Paths.from_env()
    report = run_sync(paths, load_workspace(paths.repos_file), net_jobs=2)
    assert [o.status for o in report.outcomes] == ["up to date"] * 3
    waited = [name for how, name in calls if how == "wait"]
    assert len(waited) == 1, calls
    assert "(1 waiting for the network)" in lines[0] and f"{waited[0]} " not in lines[0].split("running:")[1], lines
    assert calls.index(("wait", waited[0])) < len(calls) - 1 - calls[::-1].index(("start", waited[0])), calls


@pytest.mark.parametrize("how", ["linked", "excludesFile", "excludesFile with an includeIf"])
def test_no_row_is_reused_once_a_moved_repo_holds_a_file_git_reads_for_every_repo(home, make_repo, tmp_path,
                                                                                 monkeypatch, how):
    """A dotfiles repo that ~/.config/git/ignore links into is fast-forwarded after another repo's row was read
    (that repo left as it was): its upstream now ignores *.log everywhere, so that row (an untracked build.log) is
    stale; the closing scan must read every repo again."""
    user_home = tmp_path / "userhome"
    (user_home / ".config" / "git").mkdir(parents=True)
    app = make_repo("a-app")
    dotfiles = make_repo("z-dotfiles", files={"ignore": "# nothing yet\n"})
    if how == "linked":
        os.symlink(dotfiles.path / "ignore", user_home / ".config" / "git" / "ignore")
    else:  # named in the user's config; with an includeIf, that config is not listed once for the run
        config = tmp_path / "gitconfig"
        config.write_text(f"[core]\n\texcludesFile = {dotfiles.path / 'ignore'}\n" +
                          ('[includeIf "gitdir:/nonexistent/"]\n\tpath = /nonexistent/x\n' if "includeIf" in how else ""))
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    (app.path / "build.log").write_text("x\n")  # up to date: left as it was, its row read by sync
    dotfiles.push_from_elsewhere(tmp_path, {"ignore": "*.log\n"})
    home.add(app, dotfiles)
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(user_home / ".config"))
    paths = Paths.from_env()
    report = run_sync(paths, load_workspace(paths.repos_file), net_jobs=1)  # the app first, then the dotfiles
    assert [o.status for o in report.outcomes] == ["up to date", "updated"], [o.line() for o in report.outcomes]
    written = read_state(paths.repo_status_file)["repos"]
    assert written == scan_workspace(load_workspace(paths.repos_file)).to_json()["repos"]
    assert written[0]["untracked"] == 0 and written[0]["clean"]


def test_a_clone_stopped_while_it_waits_for_a_network_slot_leaves_no_folders(make_repo, tmp_path):
    """Every slot is taken; the run is stopped meanwhile: the clone, once it gets a slot, makes nothing."""
    import threading

    from lib import runner
    from lib.sync import RunGit, _clone

    source = make_repo("source")
    target = tmp_path / "deep" / "a" / "b" / "clone"
    run = RunGit.build(net_jobs=1)
    assert run.network is not None
    run.network.acquire()  # the one slot, held by a fetch that has not ended
    raised: list[BaseException] = []

    def clone() -> None:
        with open(tmp_path / "clone.log", "wb") as log:
            try:
                _clone(Repo("clone", target, remote=str(source.remote)), log, tmp_path / "clone.log", 60, False, run)
            except BaseException as err:  # noqa: B036 - what the worker would raise
                raised.append(err)

    worker = threading.Thread(target=clone)
    worker.start()
    try:
        runner._stopping.set()
        run.network.release()
        worker.join(60)
    finally:
        runner._stopping.clear()
    assert not worker.is_alive()
    assert raised and isinstance(raised[0], runner.Stopping), raised
    assert not (tmp_path / "deep").exists()


def test_a_network_slot_is_given_back_when_the_progress_line_fails_to_redraw():
    """The callback telling the progress line that a waiting repo has its slot raises (a terminal write failed):
    the slot goes back all the same, or the repos after it would wait for it forever."""
    import threading

    from lib.sync import RunGit

    told_to_wait, errors = threading.Event(), []

    def waiting(repo: str, waits: bool) -> None:
        if waits:
            told_to_wait.set()
        else:
            raise OSError("the terminal went away")

    run = RunGit({}, None, threading.BoundedSemaphore(1), waiting)

    def second() -> None:
        try:
            with run.on_the_network("second"):
                pass
        except OSError as err:
            errors.append(err)

    with run.on_the_network("first"):
        thread = threading.Thread(target=second)
        thread.start()
        assert told_to_wait.wait(30), "the second repo was never told to wait"
    thread.join(30)
    assert [str(err) for err in errors] == ["the terminal went away"]
    assert run.network is not None and run.network.acquire(blocking=False), "the slot was never given back"


def test_a_fast_forward_that_leaves_a_submodule_behind_says_so_whatever_the_config_ignores(home, make_repo,
                                                                                         tmp_path, git_log):
    """Upstream moved the submodule's commit; the fast-forward does not check it out, and the user's
    diff.ignoreSubmodules hides it from `git status`: the read-back shows submodules anyway (as the dirty check
    does), and that row, which the scan's own status would read otherwise, is the closing scan's to read."""
    inner = make_repo("inner")
    outer = make_repo("outer")
    git(outer.path, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(inner.remote), "inner")
    git(outer.path, "commit", "-qm", "submodule")
    git(outer.path, "push", "-q", "origin", "main")
    newer = inner.commit({"lib.py": "X = 2\n"}, "newer")
    inner.git("push", "-q", "origin", "main")
    colleague = tmp_path / "colleague-outer"
    git(tmp_path, "clone", "-q", str(outer.remote), str(colleague))
    git(colleague, "update-index", "--cacheinfo", f"160000,{newer},inner")
    git(colleague, "commit", "-qm", "bump inner")
    git(colleague, "push", "-q", "origin", "HEAD")
    git(outer.path, "config", "diff.ignoreSubmodules", "all")
    home.add(outer)
    paths = Paths.from_env()
    git_log.write_bytes(b"")
    report = run_sync(paths, load_workspace(paths.repos_file))
    statuses = [line for line in git_log.read_bytes().splitlines() if b"\0status\0--porcelain=v2\0" in line]
    assert [o.status for o in report.outcomes] == ["updated"], report.outcomes[0].line()
    assert report.outcomes[0].reason == "fast-forward: 1 commit(s) (1 path(s) differ from HEAD)"
    assert git(outer.path, "status", "--porcelain", "--ignore-submodules=none") == "M inner"
    assert len(statuses) == 2, "the closing scan did not read the repo again"
    written = read_state(paths.repo_status_file)["repos"]
    assert written == scan_workspace(load_workspace(paths.repos_file)).to_json()["repos"]
