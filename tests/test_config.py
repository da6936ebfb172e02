"""repos.json: the original format works unchanged; every bad input is one clear line, exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib.config import load_workspace
from lib.errors import ConfigError, UnknownRepoError

ORIGINAL = {"repositories": [
    {"name": "staking", "platform": "gitlab", "remote": "git@gitlab.com:org/staking.git",
     "local": "/home/me/src/staking", "default_branch": "main", "language": "go",
     "has_claude_md": True, "tags": ["staking", "reports"], "description": "Staking rewards"},
    {"name": "genesis", "platform": "gitlab", "remote": "unknown", "local": "/home/me/src/genesis",
     "default_branch": "develop", "language": "unknown", "has_claude_md": False, "tags": [],
     "description": "Genesis data"},
]}


def test_original_file_loads_unchanged(home):
    home.write_repos(ORIGINAL)
    ws = load_workspace(home.repos_file)
    staking = ws.get("staking")
    assert staking.local == Path("/home/me/src/staking")
    assert staking.language == "go" and staking.tags == ("staking", "reports") and staking.has_claude_md
    assert ws.get("genesis").default_branch == "develop"


def test_relative_local_resolves_against_workspace_and_language_is_detected(home):
    (home.path / "src" / "svc").mkdir(parents=True)
    (home.path / "src" / "svc" / "package.json").write_text("{}")
    home.write_repos({"workspace": "src", "repositories": [{"name": "svc", "local": "svc"}]})
    repo = load_workspace(home.repos_file).get("svc")
    assert repo.local == home.path / "src" / "svc"
    assert repo.language == "javascript" and repo.language_detected


@pytest.mark.parametrize("marker,language", [("go.mod", "go"), ("package.json", "javascript"),
                                             ("pyproject.toml", "python"), ("setup.py", "python"),
                                             ("Cargo.toml", "rust"), ("Makefile", "make"), ("notes.txt", "unknown")])
def test_language_detection(home, marker, language):
    (home.path / "r").mkdir()
    (home.path / "r" / marker).write_text("")
    home.write_repos([{"name": "r", "local": str(home.path / "r")}])
    assert load_workspace(home.repos_file).get("r").language == language


BAD = [
    ({"repositories": [{"name": "a", "local": "/x", "colour": "red"}]}, "repositories[0] (a).colour: unknown key"),
    ({"repositories": [{"name": "a", "local": "/x", "tags": "core"}]}, "repositories[0] (a).tags: must be a list of strings"),
    ({"repositories": [{"name": "a", "local": "/x", "tags": [1]}]}, "repositories[0] (a).tags: must be a list of strings"),
    ({"repositories": [{"name": "a", "local": "/x", "has_claude_md": "yes"}]}, "(a).has_claude_md: must be true or false"),
    ({"repositories": [{"name": 5, "local": "/x"}]}, "repositories[0].name: must be a string"),
    ({"repositories": [{"name": "a", "local": "/x"}, {"name": "a", "local": "/y"}]},
     "repositories[1] (a).name: duplicate name 'a' (also repositories[0])"),
    ({"repositories": [{"name": "a;rm -rf ~", "local": "/x"}]}, "must use only A-Z a-z 0-9 . _ -"),
    ({"repositories": [{"name": "../etc", "local": "/x"}]}, "must use only"),
    ({"repositories": [{"name": ".hidden", "local": "/x"}]}, "must use only"),
    ({"repositories": [{"name": "-rf", "local": "/x"}]}, "must use only"),
    ({"repositories": [{"name": "ok\n", "local": "/x"}]}, "'ok\\n' must use only"),
    ({"repositories": [{"name": "a", "local": ""}]}, "repositories[0] (a).local: must not be empty"),
    ({"repositories": [{"name": "a"}]}, "repositories[0] (a).local: missing"),
    ({"repositories": [{"name": "a", "local": "../../outside"}]}, "repositories[0] (a).local: '../../outside' escapes the workspace"),
    ({"repositories": [{"name": "a", "local": "/x", "language": "cobol"}]}, "(a).language: 'cobol' is not one of"),
    ({"repos": []}, "repos: unknown key"),
    ({"repositories": {"a": {}}}, "repositories: must be a list"),
    ([], "top level: must be an object"),
    ({"workspace": 3, "repositories": []}, "workspace: must be a non-empty string"),
]


@pytest.mark.parametrize("doc,expected", BAD, ids=[b[1][:40] for b in BAD])
def test_each_config_error_is_one_line_naming_file_and_field(home, doc, expected):
    home.repos_file.parent.mkdir(parents=True, exist_ok=True)
    home.repos_file.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as caught:
        load_workspace(home.repos_file)
    lines = str(caught.value).splitlines()
    assert any(expected in line for line in lines), lines
    assert all(line.startswith(f"{home.repos_file}: ") for line in lines)


def test_all_problems_are_reported_at_once(home):
    home.write_repos([{"name": "a", "local": ""}, {"name": "b b", "local": "/x", "extra": 1}])
    with pytest.raises(ConfigError) as caught:
        load_workspace(home.repos_file)
    assert len(caught.value.problems) == 3


def test_malformed_json_names_line_and_column(home):
    home.write_repos([], raw='{"repositories": [\n  {"name": "a",}\n]}')
    with pytest.raises(ConfigError, match=r"repos.json: line 2 column \d+: invalid JSON"):
        load_workspace(home.repos_file)


def test_missing_file_says_how_to_create_one(home):
    with pytest.raises(ConfigError, match="not found; create it with"):
        load_workspace(home.repos_file)


def test_relative_dotdot_that_stays_inside_is_fine(home):
    home.write_repos([{"name": "a", "local": "src/../a"}])
    assert load_workspace(home.repos_file).get("a").local == home.path / "a"


def test_unknown_repo_suggests_close_matches(home):
    home.write_repos(ORIGINAL)
    with pytest.raises(UnknownRepoError, match="did you mean staking"):
        load_workspace(home.repos_file).get("stakng")


def test_select_by_tag_and_only_keeps_config_order(home):
    home.write_repos(ORIGINAL)
    ws = load_workspace(home.repos_file)
    assert [r.name for r in ws.select(tags=["reports"])] == ["staking"]
    assert [r.name for r in ws.select(only=["genesis", "staking"])] == ["staking", "genesis"]
    with pytest.raises(UnknownRepoError):
        ws.select(only=["nope"])


def test_shipped_repos_json_documents_the_shape_and_loads():
    root = Path(__file__).resolve().parent.parent
    ws = load_workspace(root / "config" / "repos.json")
    assert ws.repos, "the shipped example should list at least one repo"
