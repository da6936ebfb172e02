"""`inv test-all --changed` reads each repo's `git status` once per look (its scan), never again per repo."""
from __future__ import annotations

import json
import os
from collections import Counter

from lib.config import Repo
from lib.gitstatus import scan
from lib.testall import TREE_STATUS_ARGS
from tests.test_sync_speed import git_log  # noqa: F401  (a fixture)
from tests.test_testall_attack import counted_repo, git


def gits_by_command(log, repo_path) -> Counter[str]:
    """The gits the logging git saw run in `repo_path` (`-C <path>`), by their command word."""
    counts: Counter[str] = Counter()
    where = os.path.realpath(repo_path)
    for line in log.read_bytes().splitlines():
        args = line.decode().split("\0")[:-1]
        if "-C" in args and os.path.realpath(args[args.index("-C") + 1]) == where:
            rest = args[args.index("-C") + 2:]
            words = iter(rest)
            for word in words:
                if word == "-c":
                    next(words, None)
                elif not word.startswith("-"):
                    counts[word] += 1
                    break
    return counts


def test_changed_reads_status_once_per_scan_and_no_more_per_repo(home, make_repo, inv, tmp_path, git_log):
    repo, runs = counted_repo(make_repo, tmp_path)
    home.add(repo, language="make")
    git_log.write_bytes(b"")
    first = inv("test-all", "--changed", "--json")  # tested: a scan before and one after the run
    assert first.code == 0, first.err
    assert gits_by_command(git_log, repo.path)["status"] == 2
    git_log.write_bytes(b"")
    second = inv("test-all", "--changed", "--json")  # unchanged: cached after one scan
    assert second.code == 0, second.err
    assert json.loads(second.out)["results"][0]["cached"]
    assert len(list(runs.iterdir())) == 1
    counts = gits_by_command(git_log, repo.path)
    assert counts["status"] == 1, counts
    assert counts["ls-files"] == 1, "the index's hidden entries were not looked at: this test could not fail"


def test_the_changed_scan_sees_a_dirty_ignored_submodule_in_a_helpers_share_too(make_repo):
    """The scan's status options reach the forked helpers: a repo in the second process's share is read alike."""
    inner = make_repo("inner", {"lib.py": "X = 1\n"})
    outer = make_repo("outer")
    git(outer.path, "-c", "protocol.file.allow=always", "submodule", "-q", "add", str(inner.path), "inner")
    git(outer.path, "config", "-f", ".gitmodules", "submodule.inner.ignore", "all")
    git(outer.path, "add", ".gitmodules")
    git(outer.path, "commit", "-qm", "submodule")
    (outer.path / "inner" / "lib.py").write_text("X = 2\n")
    repos = [Repo(name="plain", local=make_repo("plain").path), Repo(name="outer", local=outer.path)]
    for processes in (1, 2):
        assert scan(repos, jobs=2, processes=processes).repos[1].clean  # what git status says by default
        row = scan(repos, jobs=2, processes=processes, status_args=TREE_STATUS_ARGS).repos[1]
        assert not row.clean and row.modified == 1, (processes, row)
