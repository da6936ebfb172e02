"""sync-all --host: every scenario of tests/test_sync.py, run against the repos on a build host over a real sshd."""
from __future__ import annotations

import inspect

import pytest

from tests import test_sync
from tests.conftest import git
from tests.sshd_fixtures import free_port, sshd, write_hosts  # noqa: F401  (sshd is a fixture)

# Every local scenario runs against the host too: one that fails here after a
# new rule lands in lib/sync.py means lib/remote_sync.py lacks that rule. Left
# out only those that look at this machine rather than the repos:
LOCAL_ONLY = {
    "test_behind_repo_is_fast_forwarded_without_a_merge_commit": "checks the local scan state refreshed afterwards",
    "test_missing_path_is_skipped_or_cloned": "clones to a path outside the workspace (see the host version below)",
    "test_sync_script_runs_from_another_directory": "scripts/sync_all_repos.py has no --host",
}
SHARED_SCENARIOS = sorted(name for name in dir(test_sync) if name.startswith("test_") and name not in LOCAL_ONLY)


@pytest.fixture
def inv_on_host(home, inv, sshd, tmp_path):
    """`inv sync-all ...` becomes `inv sync-all ... --host builder`; the host's workspace holds make_repo's repos."""
    write_hosts(home.path, {"builder": sshd.host_entry(tmp_path / "repos")})

    def run(*args: str):
        return inv(*args, "--host", "builder") if args and args[0] == "sync-all" else inv(*args)

    return run


@pytest.mark.parametrize("scenario", SHARED_SCENARIOS)
def test_sync_on_a_host_follows_the_same_rules(scenario, home, make_repo, inv_on_host, tmp_path):
    run_scenario = getattr(test_sync, scenario)
    given = {"home": home, "make_repo": make_repo, "inv": inv_on_host, "tmp_path": tmp_path}
    run_scenario(**{name: given[name] for name in inspect.signature(run_scenario).parameters})
    results = home.path / "state" / "sync-results.json"
    if results.exists():  # a dry run writes none
        assert home.state("sync-results.json")["host"] == "builder"
        for outcome in home.state("sync-results.json")["results"]:
            assert "on host builder" in open(outcome["log"]).read()


def test_behind_repo_on_the_host_is_fast_forwarded(home, make_repo, inv_on_host, tmp_path):
    repo = make_repo("behind")
    upstream = repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    before = test_sync.snapshot(repo)
    home.write_repos([{"name": "behind", "local": str(tmp_path / "not-here")}])  # the host's copy is what counts
    result = inv_on_host("sync-all")
    assert result.code == 0, result.out + result.err
    assert repo.head() == upstream and (repo.path / "new.txt").read_text() == "1"
    assert repo.git("rev-list", "--parents", "-n", "1", "HEAD").count(" ") == 1, "a merge commit was made"
    outcome = test_sync.outcome_of(home, "behind")
    assert outcome["status"] == "updated" and "on host builder" in open(outcome["log"]).read()
    test_sync.assert_nothing_lost(repo, before)


def test_missing_repo_on_the_host_is_skipped_or_cloned_there(home, make_repo, inv_on_host, tmp_path):
    source = make_repo("source")
    home.write_repos([{"name": "fresh", "local": str(tmp_path / "not-here"), "remote": str(source.remote)}])
    result = inv_on_host("sync-all")
    assert result.code == 0 and "path missing (--clone-missing clones it)" in result.out
    assert not (tmp_path / "repos" / "fresh").exists()
    result = inv_on_host("sync-all", "--clone-missing")
    assert result.code == 0, result.out
    assert test_sync.outcome_of(home, "fresh")["status"] == "cloned"
    assert git(tmp_path / "repos" / "fresh", "rev-parse", "HEAD") == source.head()
    assert not (tmp_path / "not-here").exists(), "nothing happened on this machine"


def test_an_unreachable_host_fails_every_repo_and_changes_nothing(home, make_repo, inv, sshd, tmp_path):
    repo = make_repo("behind")
    repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})
    before = test_sync.snapshot(repo)
    write_hosts(home.path, {"down": sshd.host_entry(tmp_path / "repos", port=free_port())})
    home.add(repo)
    result = inv("sync-all", "--host", "down")
    assert result.code == 1
    assert "host unreachable: down (" in test_sync.outcome_of(home, "behind")["reason"]
    assert test_sync.snapshot(repo) == before
