"""Selecting repos (--tag, --only) is strict everywhere: a selection that names nothing real is exit 2."""
from __future__ import annotations

import pytest

from lib.config import load_workspace
from lib.errors import UnknownRepoError


def workspace_of(home, count=3, tags=("core",)):
    home.write_repos([{"name": f"svc-{i:03d}", "local": f"/nowhere/svc-{i:03d}", "tags": list(tags)}
                      for i in range(count)])
    return load_workspace(home.repos_file)


def test_a_tag_no_repo_carries_is_an_error_naming_it_with_close_matches(home):
    ws = workspace_of(home)
    with pytest.raises(UnknownRepoError, match=r"no repo has tag 'cor'.*did you mean core"):
        ws.select(tags=["cor"])


def test_every_unknown_tag_is_reported_even_beside_a_known_one(home):
    ws = workspace_of(home)
    with pytest.raises(UnknownRepoError) as caught:
        ws.select(tags=["core", "web", "db"])
    assert "'web'" in str(caught.value) and "'db'" in str(caught.value)


def test_every_unknown_only_name_is_reported_in_one_error(home):
    ws = workspace_of(home)
    with pytest.raises(UnknownRepoError) as caught:
        ws.select(only=["svc-001", "nope", "svc-0002"])
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert "'nope'" in lines[0] and "'svc-0002'" in lines[1] and "did you mean svc-002" in lines[1]


def test_only_with_no_names_is_an_error_not_everything(home):
    ws = workspace_of(home)
    with pytest.raises(UnknownRepoError, match="no repo names"):
        ws.select(only=[])


def test_close_matches_and_known_names_are_capped(home):
    ws = workspace_of(home, count=400)
    with pytest.raises(UnknownRepoError) as caught:
        ws.select(only=["zzz"])
    message = str(caught.value)
    assert len(message) < 400, message
    assert "400 repos" in message
    with pytest.raises(UnknownRepoError) as caught:
        ws.select(only=["svc-1"])
    assert str(caught.value).count("svc-") <= 6


@pytest.mark.parametrize("args", [
    ["status", "--tag", "nosuchtag"], ["scan", "--tag", "nosuchtag"], ["test-all", "--tag", "nosuchtag"],
    ["sync-all", "--tag", "nosuchtag"], ["test-all", "--only", ",,,"], ["test-all", "--only", "a,nope,zilch"],
])
def test_every_selecting_command_exits_2_on_a_selection_of_nothing(home, inv, args):
    home.write_repos([{"name": "a", "local": "/nowhere/a", "tags": ["core"]}])
    result = inv(*args)
    assert result.code == 2, (args, result.out, result.err)
    assert result.err.startswith("error: ") and "Traceback" not in result.err
    if "nope" in args[-1]:
        assert "'nope'" in result.err and "'zilch'" in result.err
