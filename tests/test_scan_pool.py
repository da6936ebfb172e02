"""The scan's process pool: many gits from one thread, whatever they print, fail at or hang on."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from lib.config import Repo
from lib.gitstatus import GitPool, GitResult, git_env, scan
from tests.conftest import process_running

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


def test_an_interrupted_scan_leaves_no_git_running(make_repo, tmp_path):
    """A Ctrl-C (here: an exception from the progress callback) kills every git still running, and what it started."""
    pids = tmp_path / "pids"
    slow = wrapper(tmp_path, f'echo $$ >> "{pids}"; case "$PWD $*" in *slow*) sleep 30 & echo $! >> "{pids}"; wait;; esac')
    repos = [repo_of(make_repo("fast"))] + [repo_of(make_repo(f"slow{i}")) for i in range(3)]

    def interrupt(_status):
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        scan(repos, jobs=4, on_result=interrupt, git=slow)
    assert time.monotonic() - started < 10
    recorded = [int(line) for line in pids.read_text().split()]
    assert len(recorded) >= 7  # the fast repo's gits, 3 slow ones and their `sleep`s
    assert not any(process_running(pid) for pid in recorded)  # killed (and reaped): not even zombies


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
