"""Starting without hand-written JSON: `init` writes a starter config, `add-issue` finds its repo and config, and
every option of both front doors says what it does."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "proof-workers"))

from orchestrator import cli  # noqa: E402


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def multi_repo(path: Path, project: str = "multi") -> Path:
    """The original's multi-repo shape: a `repos` map, each issue naming its repo."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "project": project, "repos": {"api": {"path": "/src/api", "branch_prefix": f"{project}-api-"},
                                      "web": {"path": "/src/web", "branch_prefix": f"{project}-web-"}},
        "pipeline": ["implement"], "issues": [{"number": 1, "title": "a", "repo": "api"}], "custom": [1]}))
    return path


def single_repo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"project": "one", "repo": "app", "repo_path": "/src/app", "branch_prefix": "one-",
                                "issues": []}))
    return path


def numbers_and_repos(path: Path) -> list[tuple[int, str | None]]:
    return [(i["number"], i.get("repo")) for i in json.loads(path.read_text())["issues"]]


# --- add-issue: --repo and --config-dir ---

def test_add_issue_on_a_multi_repo_config_writes_the_repo_it_is_given(tmp_path, capsys):
    config = multi_repo(tmp_path / "multi-issues.json")

    code, out, _ = run_cli(capsys, "add-issue", "2", "--title", "web fix", "--repo", "web", "--config", str(config))

    assert code == 0 and out.strip() == f"added #2 (repo web) to {config}"
    assert numbers_and_repos(config) == [(1, "api"), (2, "web")]
    assert json.loads(config.read_text())["custom"] == [1]


@pytest.mark.parametrize(("args", "message"), [
    ((), "error: add-issue: --repo is required: {config} has several repos (api, web)"),
    (("--repo", "mobile"), "error: add-issue: --repo mobile: not a repo of {config} (known: api, web)"),
])
def test_add_issue_on_a_multi_repo_config_needs_one_of_its_repos(tmp_path, capsys, args, message):
    config = multi_repo(tmp_path / "multi-issues.json")
    before = config.read_bytes()

    code, _, err = run_cli(capsys, "add-issue", "2", "--title", "t", *args, "--config", str(config))

    assert (code, err.strip()) == (2, message.format(config=config))
    assert config.read_bytes() == before


def test_add_issue_on_a_single_repo_config_takes_its_name_and_refuses_another(tmp_path, capsys):
    config = single_repo(tmp_path / "one-issues.json")

    code, _, err = run_cli(capsys, "add-issue", "1", "--title", "t", "--repo", "api", "--config", str(config))
    assert (code, err.strip()) == (2, f"error: add-issue: --repo api: not a repo of {config} (known: app)")
    assert numbers_and_repos(config) == []

    code, _, _ = run_cli(capsys, "add-issue", "1", "--title", "t", "--repo", "app", "--config", str(config))
    assert code == 0 and numbers_and_repos(config) == [(1, None)]  # the file keeps its single-repo shape


def test_add_issue_with_config_dir_appends_to_the_config_that_has_the_repo(tmp_path, capsys):
    directory = tmp_path / "configs"
    multi = multi_repo(directory / "multi-issues.json")
    one = single_repo(directory / "one-issues.json")

    code, out, _ = run_cli(capsys, "add-issue", "5", "--title", "t", "--repo", "app", "--config-dir", str(directory))
    assert code == 0 and str(one) in out and numbers_and_repos(one) == [(5, None)]

    code, _, _ = run_cli(capsys, "add-issue", "5", "--title", "t", "--repo", "web", "--config-dir", str(directory))
    assert code == 0 and numbers_and_repos(multi) == [(1, "api"), (5, "web")]

    code, _, err = run_cli(capsys, "add-issue", "6", "--title", "t", "--config-dir", str(directory))
    assert code == 2 and err.strip() == (f"error: add-issue: {directory} has several configs "
                                         f"({multi.name}, {one.name}): name one with --repo or --config")
    code, _, err = run_cli(capsys, "add-issue", "6", "--title", "t", "--repo", "nope", "--config-dir", str(directory))
    assert code == 2 and err.strip() == f"error: add-issue: --repo nope: no config in {directory} has it (known: " \
                                        "api, app, web)"


def test_add_issue_with_config_dir_refuses_a_repo_two_configs_share(tmp_path, capsys):
    directory = tmp_path / "configs"
    multi_repo(directory / "a-issues.json", "a")
    multi_repo(directory / "b-issues.json", "b")

    code, _, err = run_cli(capsys, "add-issue", "6", "--title", "t", "--repo", "api", "--config-dir", str(directory))

    assert code == 2 and err.strip() == (f"error: add-issue: --repo api is in several configs of {directory} "
                                         "(a-issues.json, b-issues.json): name one with --config")


def test_add_issue_refuses_config_and_config_dir_together(tmp_path, capsys):
    config = single_repo(tmp_path / "one-issues.json")
    code, _, err = run_cli(capsys, "add-issue", "1", "--title", "t", "--config", str(config),
                           "--config-dir", str(tmp_path))
    assert code == 2 and err.strip() == "error: give --config or --config-dir, not both"


def test_inv_workers_add_issue_takes_repo_and_config_dir(tmp_path, inv):
    directory = tmp_path / "configs"
    multi = multi_repo(directory / "multi-issues.json")

    result = inv("workers.add-issue", "3", "--title", "t", "--repo", "web", "--config-dir", str(directory))

    assert result.code == 0, result.err
    assert numbers_and_repos(multi) == [(1, "api"), (3, "web")]


# --- help text for every option ---

def _walk(parser: argparse.ArgumentParser, path: str = "orchestrator"):
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")
            for choice in action._choices_actions:
                yield f"{path} {choice.dest}", choice.help
            continue
        yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_option_of_every_verb_of_python_m_orchestrator_has_help():
    missing = [where for where, text in _walk(cli.build_parser()) if not text or text == argparse.SUPPRESS]
    assert missing == []


def test_every_option_of_every_inv_workers_task_has_help():
    from invoke import Collection

    import tasks

    workers = Collection.from_module(tasks).collections["workers"]
    missing = []
    for name, task in workers.tasks.items():
        for arg in task.get_arguments():
            if not (arg.help or "").strip():
                missing.append(f"workers.{name} --{arg.name}")
    assert missing == []
