"""orchestrator.forge against fake gh and glab (tests/forge_fakes.py): adopt or open, checks, review, merge."""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT
from forge_fakes import fake_forge  # noqa: F401

sys.path.insert(0, str(ROOT / "scripts" / "proof-workers"))

from orchestrator import forge  # noqa: E402
from orchestrator.forge import ForgeError, ForgeRepo, forge_for, forge_repo  # noqa: E402

FAIL = {"checks": [{"name": "build", "bucket": "pass"}, {"name": "tests", "bucket": "fail"}],
        "log": "collected 3 items\nFAILED test_app.py::test_add - assert 3 == 4"}
PASS = {"checks": [{"name": "build", "bucket": "pass"}, {"name": "tests", "bucket": "pass"}]}


@pytest.fixture
def pushed(make_repo):
    repo = make_repo("app")
    repo.git("switch", "-q", "-c", "feature/issue-1")
    repo.commit({"a.txt": "a\n"}, "work")
    repo.git("push", "-q", "origin", "feature/issue-1")
    return repo


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_pr_is_opened_once_then_adopted_and_its_failed_checks_read_with_their_log(pushed, fake_forge, platform):
    fake = fake_forge(pushed.remote, [FAIL, PASS])
    hub = forge_for(ForgeRepo(platform), pushed.path)

    pr, created = hub.find_or_create("feature/issue-1", "main", "Fix it", "body")
    again, created_again = hub.find_or_create("feature/issue-1", "main", "Fix it", "body")

    assert created and not created_again and again == pr and pr.state == "open"
    assert len(fake.prs()) == 1
    seen = hub.observe(pr.number)
    assert seen.checks == "failing" and [name for name, _ in seen.failed] == ["tests"]
    assert seen.head == pushed.git("rev-parse", "HEAD")
    assert "FAILED test_app.py::test_add" in hub.failed_logs(seen)


def test_gh_pending_checks_exit_8_and_are_read_from_the_json_not_the_exit_code(pushed, fake_forge):
    fake = fake_forge(pushed.remote, [{**PASS, "pending_polls": 1}])
    hub = forge_for(ForgeRepo("github"), pushed.path)
    pr, _ = hub.find_or_create("feature/issue-1", "main", "t", "b")

    assert hub.observe(pr.number).checks == "pending"
    assert hub.observe(pr.number).checks == "passing"
    assert ["pr", "checks", str(pr.number), "--json", "name,state,bucket,link"] in fake.calls("gh")


def test_no_checks_reported_is_none_not_an_error(pushed, fake_forge):
    fake_forge(pushed.remote, [{"checks": []}])
    hub = forge_for(ForgeRepo("github"), pushed.path)
    pr, _ = hub.find_or_create("feature/issue-1", "main", "t", "b")
    assert hub.observe(pr.number).checks == "none"


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_a_review_requesting_changes_is_read_with_its_comments(pushed, fake_forge, platform):
    fake_forge(pushed.remote, [{**PASS, "review": "CHANGES_REQUESTED", "comments": ["rename foo to bar"]}])
    hub = forge_for(ForgeRepo(platform), pushed.path)
    pr, _ = hub.find_or_create("feature/issue-1", "main", "t", "b")
    seen = hub.observe(pr.number)
    assert seen.review == "changes_requested" and seen.comments == ("reviewer: rename foo to bar",)
    assert seen.review_id


@pytest.mark.parametrize("platform", ["github", "gitlab"])
def test_merge_uses_a_method_the_repo_allows_and_moves_the_default_branch(pushed, fake_forge, platform):
    fake = fake_forge(pushed.remote, [PASS])
    hub = forge_for(ForgeRepo(platform), pushed.path)
    pr, _ = hub.find_or_create("feature/issue-1", "main", "t", "b")
    hub.merge(pr.number)
    assert hub.observe(pr.number).state == "merged"
    if platform == "github":
        assert ["pr", "merge", str(pr.number), "--squash"] in fake.calls("gh")  # merge commits not allowed
    assert pushed.git("ls-remote", "origin", "main").split()[0] == pushed.git("rev-parse", "HEAD")


def test_every_call_names_the_pinned_repository_and_gh_repo_or_git_dir_in_the_env_is_ignored(pushed, fake_forge,
                                                                                            monkeypatch):
    fake = fake_forge(pushed.remote, [PASS])
    monkeypatch.setenv("GH_REPO", "evil/elsewhere")
    monkeypatch.setenv("GIT_DIR", "/elsewhere/.git")  # a git hook's: gh would read another repo's remote
    hub = forge_for(forge_repo("", "git@github.com:org/app.git"), pushed.path)
    pr, _ = hub.find_or_create("feature/issue-1", "main", "t", "b")
    hub.observe(pr.number)
    hub.merge(pr.number)
    records = fake.call_records()
    assert records and all(r["env_repo"] is None and r["git_dir"] is None for r in records)
    for args in (r["args"] for r in records if r["args"][:2] not in (["repo", "view"], ["api", "graphql"])):
        assert args[-2:] == ["--repo", "github.com/org/app"], args
    asked = [r["args"] for r in records if r["args"][:2] == ["api", "graphql"]]  # gh api takes no --repo
    assert asked and all(a[2:8] == ["--hostname", "github.com", "-f", "owner=org", "-f", "name=app"] for a in asked)
    assert ["repo", "view", "github.com/org/app"] == next(r["args"][:3] for r in records
                                                          if r["args"][:2] == ["repo", "view"])


def test_platform_and_repository_come_from_the_config_or_the_pinned_url():
    assert forge_repo("", "https://github.com/org/app.git") == ForgeRepo("github", "github.com", "org/app")
    assert forge_repo("", "git@gitlab.example.com:group/sub/app.git") == \
        ForgeRepo("gitlab", "gitlab.example.com", "group/sub/app")
    assert forge_repo("github", "/srv/git/app.git") == ForgeRepo("github")
    assert forge_repo("", "/srv/git/app.git").platform == "gitlab"  # the code's default


def test_a_failed_create_is_one_line_with_the_clis_words(pushed, fake_forge):
    fake_forge(pushed.remote, [PASS], fail={"pr create": {"code": 1, "stderr": "GraphQL: Resource not "
                                                          "accessible by integration (createPullRequest)"}})
    hub = forge_for(ForgeRepo("github"), pushed.path)
    with pytest.raises(ForgeError) as err:
        hub.find_or_create("feature/issue-1", "main", "t", "b")
    assert str(err.value) == "gh pr create: GraphQL: Resource not accessible by integration (createPullRequest)"


def test_a_hung_cli_is_killed_at_its_timeout(pushed, fake_forge):
    fake_forge(pushed.remote, [PASS], hang=["pr list"])
    hub = forge_for(ForgeRepo("github"), pushed.path, timeout=1.0)
    with pytest.raises(ForgeError, match="timed out after 1s"):  # the fake sleeps an hour
        hub.find("feature/issue-1")


@pytest.mark.parametrize("platform,word", [("github", "gh auth login"), ("gitlab", "glab auth login")])
def test_auth_problems_name_the_fix(pushed, fake_forge, platform, word, monkeypatch):
    fake_forge(pushed.remote, auth=False)
    assert word in forge_for(ForgeRepo(platform), pushed.path).auth_problem()
    monkeypatch.setenv("PATH", "/nonexistent")
    problem = forge_for(ForgeRepo(platform), pushed.path).auth_problem()
    assert "not installed" in problem and "install the" in problem


def test_garbage_instead_of_json_is_one_error_line(pushed, fake_forge):
    fake = fake_forge(pushed.remote, [PASS])
    (fake.bin_dir / "gh").write_text("#!/bin/sh\necho '<html>rate limited</html>'\n")
    with pytest.raises(ForgeError, match="did not print JSON"):
        forge_for(ForgeRepo("github"), pushed.path).find("feature/issue-1")


def test_body_has_the_description_and_a_line_per_stage():
    assert forge.pr_body("Do it", ["implement", "review"]) == "Do it\n\n- implement: done\n- review: done"


def test_the_forge_modules_examples_hold():
    import doctest

    assert doctest.testmod(forge).failed == 0


def test_a_title_or_body_that_looks_like_a_flag_stays_a_value(pushed, fake_forge):
    fake = fake_forge(pushed.remote, [PASS])
    hub = forge_for(ForgeRepo("github"), pushed.path)
    hub.find_or_create("feature/issue-1", "main", "--help", "-R evil/repo")
    assert [(p["title"], p["body"]) for p in fake.prs()] == [("--help", "-R evil/repo")]


@pytest.mark.parametrize("listing,view", [('[{"nope": 1, "headRefName": "feature/issue-1"}]', None),
                                          (None, '{"number": "x"}'), (None, '[1, 2]')])
def test_json_of_another_shape_is_one_error_line_never_a_traceback(pushed, fake_forge, listing, view):
    fake = fake_forge(pushed.remote, [PASS])
    real = forge_for(ForgeRepo("github"), pushed.path)
    pr, _ = real.find_or_create("feature/issue-1", "main", "t", "b")
    script = (fake.bin_dir / "gh").read_text()
    canned = listing if listing is not None else view
    command = "list" if listing is not None else "view"
    # The fake answers that one command with the canned JSON; everything else as before.
    script = script.replace("key = \" \".join(args[:2])",
                            f"key = \" \".join(args[:2])\nif args[:2] == ['pr', {command!r}]:\n"
                            f"    print({canned!r}); sys.exit(0)")
    (fake.bin_dir / "gh").write_text(script)
    with pytest.raises(ForgeError, match="unexpected JSON"):
        real.find("feature/issue-1") if listing is not None else real.observe(pr.number)


def test_glab_is_given_the_full_url_of_a_nested_group_repository(pushed, fake_forge):
    fake = fake_forge(pushed.remote, [PASS])
    hub = forge_for(forge_repo("", "git@gitlab.example.com:group/sub/app.git"), pushed.path)
    hub.find_or_create("feature/issue-1", "main", "t", "b")
    calls = fake.calls("glab")
    assert calls and all(args[-2:] == ["-R", "https://gitlab.example.com/group/sub/app"] for args in calls)
