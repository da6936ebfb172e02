"""`inv test-all --changed` never reports a repo with submodules unchanged: a submodule's edit can hide from the
top-level status and index in ways no single look sees (marks in the submodule's own index, a nested submodule
its parent's .gitmodules ignores), so such a repo runs its tests every time, and says why."""
from __future__ import annotations

import json

import pytest

from tests.test_testall_attack import git

SUBMODULES = "not cacheable by --changed: it has submodules"
# The outer repo's test reads code in its submodule (and in that one's own submodule): an edit there fails it.
CHECKING = "test:\n\t@touch {runs}/$$$$; grep -qx 'X = 1' lib/conf.py && grep -qx 'Y = 1' lib/inner/y.py " \
           "&& echo '1 passed in 0.01s'\n"


def add_submodule(outer, inner, where: str) -> None:
    git(outer, "-c", "protocol.file.allow=always", "submodule", "-q", "add", str(inner), where)
    git(outer, "commit", "-qm", f"submodule {where}")


@pytest.fixture
def nested(make_repo, tmp_path):
    """outer (tested) <- lib (a submodule) <- inner (lib's own submodule); returns (outer, the runs dir)."""
    inner = make_repo("inner", {"y.py": "Y = 1\n"})
    lib = make_repo("lib", {"conf.py": "X = 1\n", "code.py": "def f(): return 1\n"})
    add_submodule(lib.path, inner.path, "inner")
    runs = tmp_path / "runs"
    runs.mkdir()
    outer = make_repo("outer", {"Makefile": CHECKING.format(runs=runs)})
    add_submodule(outer.path, lib.path, "lib")
    git(outer.path, "-c", "protocol.file.allow=always", "submodule", "-q", "update", "--init", "--recursive")
    return outer, runs


def mark(flag: str):
    def prepare(outer) -> None:
        git(outer / "lib", "update-index", flag, "conf.py")
    return prepare


def edit_conf(outer) -> None:
    (outer / "lib" / "conf.py").write_text("X = 2\n")


def ignore_nested(outer) -> None:
    lib = outer / "lib"
    git(lib, "config", "-f", ".gitmodules", "submodule.inner.ignore", "all")
    git(lib, "commit", "-qam", "ignore inner")
    git(outer, "commit", "-qam", "lib moved")


def edit_nested(outer) -> None:
    (outer / "lib" / "inner" / "y.py").write_text("Y = 2\n")


# (what is set up before the pass --changed would trust, the edit after it)
HIDDEN_EDITS = {
    "a submodule's file marked assume-unchanged, then edited": (mark("--assume-unchanged"), edit_conf),
    "a submodule's file marked skip-worktree, then edited": (mark("--skip-worktree"), edit_conf),
    "a nested submodule's file edited, its parent's .gitmodules saying ignore=all": (ignore_nested, edit_nested),
}


@pytest.mark.parametrize("prepare, edit", HIDDEN_EDITS.values(), ids=HIDDEN_EDITS.keys())
def test_changed_runs_a_repo_whose_submodule_hides_an_edit_and_reports_its_failure(home, inv, nested, prepare, edit):
    outer, runs = nested
    home.add(outer, language="make")
    prepare(outer.path)
    first = inv("test-all", "--changed", "--json")
    assert first.code == 0, first.out + first.err
    edit(outer.path)
    assert git(outer.path, "status", "--porcelain", "--ignore-submodules=none") == "", "the edit is not hidden"
    result = inv("test-all", "--changed", "--json")
    entry = json.loads(result.out)["results"][0]
    assert result.code == 1 and entry["status"] == "failed" and not entry["cached"], entry
    assert len(list(runs.iterdir())) == 2


def test_a_repo_with_submodules_runs_every_time_with_changed_and_says_why(home, inv, nested):
    outer, runs = nested
    home.add(outer, language="make")
    for attempt in (1, 2):
        result = inv("test-all", "--changed", "--json")
        entry = json.loads(result.out)["results"][0]
        assert result.code == 0 and entry["status"] == "passed" and not entry["cached"], entry
        assert entry["reason"] == SUBMODULES
        assert len(list(runs.iterdir())) == attempt
        recorded = home.state("test-results.json")["results"][0]
        assert recorded["reason"] == SUBMODULES and recorded["last_passed"] is None, recorded
    table = inv("test-all", "--changed")
    assert SUBMODULES in table.out and len(list(runs.iterdir())) == 3


def only_a_gitlink(repo, other) -> None:
    """A gitlink added by hand (no .gitmodules), its directory empty as an uninitialized submodule's: a clean tree."""
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{git(other, 'rev-parse', 'HEAD').strip()},vendored")
    git(repo, "commit", "-qm", "gitlink")
    (repo / "vendored").mkdir()


def only_a_gitmodules_file(repo, _other) -> None:
    (repo / ".gitmodules").write_text('[submodule "gone"]\n\tpath = gone\n\turl = ../gone\n')
    git(repo, "add", ".gitmodules")
    git(repo, "commit", "-qm", "gitmodules")


def a_gitmodules_file_a_sparse_checkout_leaves_out(repo, other) -> None:
    """Tracked, but not in the work tree (skip-worktree): only the index shows it, and git status shows nothing."""
    only_a_gitmodules_file(repo, other)
    git(repo, "sparse-checkout", "set", "--no-cone", "/*", "!/.gitmodules")
    assert not (repo / ".gitmodules").exists()


@pytest.mark.parametrize("submodule", [only_a_gitlink, only_a_gitmodules_file,
                                       a_gitmodules_file_a_sparse_checkout_leaves_out])
def test_a_gitlink_alone_or_a_gitmodules_file_alone_is_a_repo_with_submodules(home, inv, make_repo, tmp_path,
                                                                             submodule):
    runs = tmp_path / "runs"
    runs.mkdir()
    repo = make_repo("r", {"Makefile": "test:\n\t@touch " + str(runs) + "/$$$$; echo '1 passed in 0.01s'\n"})
    submodule(repo.path, make_repo("other").path)
    home.add(repo, language="make")
    for attempt in (1, 2):
        entry = json.loads(inv("test-all", "--changed", "--json").out)["results"][0]
        assert entry["status"] == "passed" and not entry["cached"] and entry["reason"] == SUBMODULES, entry
        assert len(list(runs.iterdir())) == attempt
