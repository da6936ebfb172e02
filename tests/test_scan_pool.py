"""The scan's process pool: many gits from one thread, whatever they print, fail at or hang on."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from lib.config import Repo
from lib.gitpool import GitPool, GitResult, start_keeper
from lib.gitstatus import git_env, scan
from tests.conftest import ROOT, wait_gone

REAL_GIT = shutil.which("git")


def repo_of(handle, name: str | None = None) -> Repo:
    return Repo(name=name or handle.path.name, local=handle.path)


def wrapper(tmp_path, body: str):
    """A `git` that runs `body` (sh) first, then the real git with the same arguments."""
    script = tmp_path / f"git-{len(list(tmp_path.glob('git-*')))}"
    script.write_text(f"#!/bin/sh\n{body}\nexec {REAL_GIT} \"$@\"\n")
    script.chmod(0o755)
    return str(script)


def test_more_output_and_noise_than_a_pipe_holds_is_read_whole(make_repo, tmp_path):
    """Porcelain output and warnings on stderr, each past a pipe's 64 KiB, on a git that succeeds."""
    handle = make_repo("big")
    for i in range(1500):
        (handle.path / f"untracked-file-with-a-long-name-{i:05d}-{'x' * 40}").write_text("")
    noisy = wrapper(tmp_path, "head -c 300000 /dev/zero | tr '\\0' w >&2")
    report = scan([repo_of(handle), repo_of(make_repo("small"))], jobs=2, git=noisy)
    big, small = report.repos
    assert big.error is None and big.untracked == 1500 and big.dirty == 1500
    assert small.error is None and small.clean and small.last_commit.subject == "initial"


def test_a_failing_git_is_that_repos_error_line_and_the_others_go_on(make_repo, tmp_path):
    good, bad = make_repo("good"), make_repo("bad")
    failing = wrapper(tmp_path, 'case "$PWD $*" in *bad*) echo "fatal: index file corrupt" >&2; '
                                'echo "more detail" >&2; exit 128;; esac')
    report = scan([repo_of(bad), repo_of(good)], git=failing)
    assert report.repos[0].error == "fatal: index file corrupt" and not report.repos[0].clean
    assert report.repos[1].error is None and report.repos[1].clean


def test_a_git_that_cannot_start_is_an_error_row_per_repo_not_a_crash(make_repo, tmp_path):
    missing = str(tmp_path / "no-such-git")
    report = scan([repo_of(make_repo("a")), repo_of(make_repo("b"))], git=missing)
    assert [r.error for r in report.repos] == [f"cannot run {missing}: No such file or directory"] * 2


FRESH_SCAN = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from lib.config import Repo
from lib.gitstatus import scan
args = json.loads(sys.argv[2])
on_result = None
if args.get("interrupt_after_sleeps"):  # a progress callback that waits until that many sleep, then is a Ctrl-C
    pids = Path(args["pids"])

    def on_result(_status):
        deadline = time.monotonic() + 60  # generous: a busy machine starts gits slowly
        while time.monotonic() < deadline and sum(
                line.startswith("sleep ") for line in (pids.read_text().splitlines() if pids.exists() else [])
        ) < args["interrupt_after_sleeps"]:
            time.sleep(0.01)
        raise KeyboardInterrupt
try:
    report = scan([Repo(name=Path(p).name, local=Path(p)) for p in args["repos"]], jobs=args["jobs"],
                  processes=args["processes"], on_result=on_result, git=args["git"], **args.get("more", {}))
except KeyboardInterrupt:
    print(json.dumps({"interrupted": True}))
else:
    print(json.dumps({"rows": [status.to_json() for status in report.repos]}))
"""


def scan_in_a_fresh_process(repos: list[Repo], **args) -> dict:
    """`scan` in a fresh interpreter, for a test of its forks (the keeper, helpers): a thread another test left in
    this one (a stand-in server's, say) forbids every fork (lib.gitpool.forking), so such a test would test the
    scan without them, depending on which tests ran before it on this worker."""
    args["repos"] = [str(repo.local) for repo in repos]
    done = subprocess.run([sys.executable, "-c", FRESH_SCAN, str(ROOT), json.dumps(args)], capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def sleeping_gits(tmp_path):
    """A `git` that records its pid (and its parent's), and for a `slow*` repo sleeps 300 s in a child it records."""
    pids = tmp_path / "pids"
    git = wrapper(tmp_path, f'echo "git $$ $PPID" >> "{pids}"; '
                            f'case "$PWD $*" in *slow*) sleep 300 & echo "sleep $!" >> "{pids}"; wait;; esac')

    def recorded(kind: str) -> list[int]:
        lines = pids.read_text().splitlines() if pids.exists() else []
        return [int(pid) for line in lines if line.split()[0] == kind for pid in line.split()[1:]]

    return git, recorded


@pytest.mark.parametrize("processes, slow", [(1, 3), (3, 5)])
def test_an_interrupted_scan_leaves_no_process(make_repo, tmp_path, processes, slow):
    """A Ctrl-C (here: an exception from the progress callback) kills every git still running and what it started.

    With helpers, each runs in its own process group with its gits: the parent kills each group whole.
    """
    git, recorded = sleeping_gits(tmp_path)
    repos = [repo_of(make_repo("fast"))] + [repo_of(make_repo(f"slow{i}")) for i in range(slow)]
    started = time.monotonic()
    assert scan_in_a_fresh_process(repos, jobs=slow + 1, processes=processes, git=git, pids=str(tmp_path / "pids"),
                                   interrupt_after_sleeps=slow) == {"interrupted": True}
    assert time.monotonic() - started < 200, "the scan waited for its gits instead of killing them"
    everything = set(recorded("git") + recorded("sleep")) - {os.getpid()}
    assert len(recorded("sleep")) == slow
    assert len(everything) >= (processes - 1) + (slow + 1) + slow  # helpers, gits, sleeps
    assert all(wait_gone(pid) for pid in everything)


def test_callbacks_may_queue_more_work_and_the_pool_runs_it(make_repo):
    """The pool's contract the scan relies on: a `done` callback submits a follow-up git."""
    handle = make_repo("alpha")
    seen: list[GitResult] = []
    with GitPool(REAL_GIT, 1) as pool:
        def first(result: GitResult) -> None:
            seen.append(result)
            pool.submit(str(handle.path), git_env(), ("rev-parse", "HEAD"), seen.append, first=True)
        pool.submit(str(handle.path), git_env(), ("rev-parse", "--abbrev-ref", "HEAD"), first)
        pool.run()
    assert [(r.returncode, r.stdout.strip()) for r in seen] == [(0, b"main"), (0, handle.head().encode())]


def test_the_pool_leaves_no_descriptor_open(make_repo):
    repos = [repo_of(make_repo(f"r{i}")) for i in range(6)]
    before = set(os.listdir("/proc/self/fd"))
    scan(repos, jobs=3)
    assert set(os.listdir("/proc/self/fd")) <= before


def mixed_repos(make_repo, count: int) -> list[Repo]:
    """Repos in several states, so a row that went wrong or went missing shows."""
    repos = []
    for i in range(count):
        handle = make_repo(f"r{i:02d}")
        if i % 3 == 1:
            (handle.path / "README.md").write_text("edited\n")
        if i % 3 == 2:
            handle.commit({f"f{i}": "x"}, f"commit {i}")
        repos.append(repo_of(handle))
    return repos


def rows(report) -> list[dict]:
    return [status.to_json() for status in report.repos]


def test_helper_processes_give_the_same_rows_as_one_process(make_repo, tmp_path):
    repos = mixed_repos(make_repo, 9) + [Repo(name="gone", local=tmp_path / "gone")]
    alone = scan(repos, jobs=4, processes=1)
    shared = scan(repos, jobs=4, processes=3)
    assert rows(shared) == rows(alone)
    assert [r.name for r in shared.repos] == [r.name for r in repos]
    assert shared.repos[-1].error == "path does not exist"


def test_a_helper_that_dies_loses_no_row_its_repos_are_scanned_again(make_repo, tmp_path):
    """A helper killed mid-scan (here: by the git it started) leaves nothing missing or wrong."""
    repos = mixed_repos(make_repo, 8)
    killer = wrapper(tmp_path, f'[ "$PPID" != "{os.getpid()}" ] && kill -9 $PPID; sleep 0.2')
    report = scan(repos, jobs=4, processes=2, git=killer)
    assert rows(report) == rows(scan(repos, jobs=4, processes=1))


def test_when_no_helper_can_be_forked_this_process_scans_every_repo(make_repo, monkeypatch):
    repos = mixed_repos(make_repo, 4)
    expected = rows(scan(repos, jobs=2, processes=1))
    before = set(os.listdir("/proc/self/fd"))

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    assert rows(scan(repos, jobs=2, processes=2)) == expected
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_stop_right_after_a_git_started_still_kills_it(make_repo, tmp_path, monkeypatch):
    """A signal's handler runs between bytecodes: here, after posix_spawn returned and before the pool noted the pid.

    Under load that window is wide enough for a Ctrl-C to land in it: the git must not outlive the stopped scan.
    """
    git, recorded = sleeping_gits(tmp_path)
    spawned = []
    real_spawn = os.posix_spawn

    def spawn_then_stop(*args, **kwargs):
        spawned.append(real_spawn(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "posix_spawn", spawn_then_stop)
    with pytest.raises(KeyboardInterrupt):
        scan([repo_of(make_repo("slow"))], jobs=1, processes=1, git=git)
    monkeypatch.undo()
    assert len(spawned) == 1
    assert wait_gone(spawned[0]), "a git started just before the stop outlived the scan"
    assert all(wait_gone(pid) for pid in recorded("sleep"))
    with pytest.raises(ChildProcessError):
        os.waitpid(spawned[0], os.WNOHANG)  # and it was reaped, not left a zombie


def test_a_git_killed_by_a_signal_is_that_repos_error_and_says_so(make_repo, tmp_path):
    """Not "git failed": a kill (the OOM killer, a hook killing its group) is named, so the row does not mislead."""
    killed = wrapper(tmp_path, 'case "$PWD $*" in *bad*) kill -9 $$;; esac')
    report = scan([repo_of(make_repo("bad")), repo_of(make_repo("good"))], git=killed, processes=1)
    assert report.repos[0].error == "git killed by SIGKILL" and not report.repos[0].clean
    assert report.repos[1].error is None


FORK_THEN_CTRL_C = """
import io, os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import lib.gitstatus
from lib.config import Repo
from lib.progress import Progress
forked, git, paths = sys.argv[2], sys.argv[3], sys.argv[4:]
real = getattr(lib.gitstatus, forked)
children = []

def fork_then_ctrl_c(*args, **kwargs):
    child = real(*args, **kwargs)
    children.append(child.pid if forked == "start_keeper" else child[0])
    os.kill(os.getpid(), signal.SIGINT)
    return child

setattr(lib.gitstatus, forked, fork_then_ctrl_c)
with Progress("scanning", 2, stream=io.StringIO(), live=True):  # a terminal's ticker thread, as in `inv scan`
    try:
        lib.gitstatus.scan([Repo(name=Path(p).name, local=Path(p)) for p in paths], jobs=2, processes=2, git=git)
    except KeyboardInterrupt:
        pass
try:
    os.waitpid(children[0], os.WNOHANG)
    print(children[0], "not reaped")
except ChildProcessError:
    print(children[0], "reaped")
"""


@pytest.mark.parametrize("forked", ["start_keeper", "_start_helper"])
def test_a_stop_right_after_a_fork_still_finds_the_forked_process(make_repo, tmp_path, forked):
    """A Ctrl-C that arrives as the keeper or a helper is forked, before the scan noted it: it must not be lost.

    In a fresh process with a live progress line, whose ticker thread the signal could be delivered to.
    """
    git, recorded = sleeping_gits(tmp_path)
    repos = [make_repo("slow0").path, make_repo("slow1").path]
    done = subprocess.run([sys.executable, "-c", FORK_THEN_CTRL_C, str(ROOT), forked, git, *map(str, repos)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid, reaped = done.stdout.split(maxsplit=1)
    assert wait_gone(int(pid)), f"the process of {forked} outlived the stopped scan"
    assert reaped.strip() == "reaped"
    assert all(wait_gone(pid) for pid in recorded("git") + recorded("sleep"))


def test_a_git_that_may_not_be_run_keeps_the_pool_in_the_scans_group(tmp_path):
    """EACCES is this repo's error; only a vanished group (EPERM) makes the gits lead groups of their own."""
    not_executable = tmp_path / "git"
    not_executable.write_text("#!/bin/sh\n")
    keeper = start_keeper()
    try:
        seen = []
        with GitPool(str(not_executable), 1, keeper.pid) as pool:
            pool.submit(str(tmp_path), git_env(), ("status",), seen.append)
            pool.run()
            assert seen[0].returncode == 127 and b"Permission denied" in seen[0].stderr
            assert pool._group == keeper.pid
    finally:
        keeper.stop()
        keeper.reap()


def test_a_killed_keeper_costs_no_repo_its_gits_lead_groups_of_their_own(make_repo):
    """Someone kills the keeper mid-scan: joining its empty group fails (EPERM), so the next git starts a group."""
    handle = make_repo("alpha")
    keeper = start_keeper()
    keeper.stop()
    keeper.reap()
    seen = []
    with GitPool(REAL_GIT, 1, keeper.pid) as pool:
        pool.submit(str(handle.path), git_env(), ("rev-parse", "HEAD"), seen.append)
        pool.run()
        assert pool._group == 0
    assert (seen[0].returncode, seen[0].stdout.strip()) == (0, handle.head().encode())


COUNTING_REFUSALS = """
import errno, json, os, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])

refused = []  # this process's descriptor requests the kernel refused (EMFILE); a forked helper counts its own


def counted(call):
    def asked(*args):
        try:
            return call(*args)
        except OSError as err:
            if err.errno == errno.EMFILE:
                refused.append(call.__name__)
            raise
    return asked


os.pipe, os.memfd_create = counted(os.pipe), counted(os.memfd_create)


def spare_descriptors(count):
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) - 1 + count,
                                                resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
"""

SCAN_WITH_SPARE_DESCRIPTORS = COUNTING_REFUSALS + """
from lib.config import Repo
from lib.gitstatus import scan

os.environ["SCAN_PID"] = str(os.getpid())
repos = [Repo(name=Path(p).name, local=Path(p)) for p in json.loads(sys.argv[2])]
spare_descriptors(int(sys.argv[4]))
report = scan(repos, jobs=100, processes=2, git=sys.argv[3])
print(json.dumps({"refused": len(refused),
                  "rows": [[r.error, r.last_commit and r.last_commit.subject] for r in report.repos]}))
"""


@pytest.mark.parametrize("spare", [12, 13])  # an odd or an even number of descriptors left when gits take two each
def test_a_descriptor_limit_the_pool_ran_into_holds_for_the_rest_of_the_scan(make_repo, tmp_path, spare):
    """`--jobs 100` under a small `ulimit -n`, and a helper that dies: its repos, scanned here once the helpers are
    done, start no more gits at once than the descriptors allowed before (the pool hit the limit once, not again)."""
    repos = [make_repo(f"r{i:02d}").path for i in range(16)]
    # Only a helper, a child of the scan: a git whose helper died first may find its parent is already our own
    # process (a subreaper), which it must never kill.
    killer = wrapper(tmp_path, '[ "$PPID" != "$SCAN_PID" ] && '
                               '[ "$(sed "s/.*) //" /proc/$PPID/stat | cut -d" " -f2)" = "$SCAN_PID" ] && '
                               'kill -9 $PPID; sleep 0.2')
    done = subprocess.run([sys.executable, "-c", SCAN_WITH_SPARE_DESCRIPTORS, str(ROOT),
                           json.dumps([str(p) for p in repos]), killer, str(spare)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["rows"] == [[None, "initial"]] * 16
    assert outcome["refused"] == 1


POOL_WITH_SPARE_DESCRIPTORS = COUNTING_REFUSALS + """
from lib.gitpool import GitPool
from lib.gitstatus import git_env

results = []
with GitPool(sys.argv[2], 50) as pool:
    for _ in range(12):
        pool.submit(sys.argv[3], git_env(), ("rev-parse", "--git-dir"), results.append)
    spare_descriptors(int(sys.argv[4]))
    pool.run()
print(json.dumps({"refused": len(refused), "codes": [r.returncode for r in results]}))
"""


@pytest.mark.parametrize("spare", [8, 9, 10, 11])
def test_the_pool_runs_out_of_descriptors_once_whatever_number_is_left(make_repo, spare):
    """Each git holds two descriptors (its stdout pipe and stderr file) and its start takes one more: as many gits
    as fitted when a start ran out keep fitting (a stderr file made for the start that failed is not kept)."""
    repo = make_repo("r")
    done = subprocess.run([sys.executable, "-c", POOL_WITH_SPARE_DESCRIPTORS, str(ROOT), REAL_GIT, str(repo.path),
                           str(spare)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["codes"] == [0] * 12
    assert outcome["refused"] == 1
