"""Starting without hand-written JSON: `init` writes a starter config, `add-issue` finds its repo and config, and
every option of both front doors says what it does."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from workers_fixtures import project, tmux_socket  # noqa: F401

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


# --- init ---

def python_repo(make_repo, home, **fields):
    handle = make_repo("app", files={"pyproject.toml": "[project]\nname = 'app'\n", "README.md": "# app\n"})
    home.add(handle, remote="git@example.com:org/app.git", **fields)
    return handle


def test_init_writes_a_starter_config_from_repos_json_that_loads(make_repo, home, capsys):
    from orchestrator.config import load_config

    handle = python_repo(make_repo, home, default_branch="trunk")

    code, out, err = run_cli(capsys, "init", "--repo", "app", "--pipeline", "implement,review")

    path = home.path / "config" / "proof-issues.json"
    assert (code, err) == (0, "") and out.splitlines()[0] == f"wrote {path}"
    doc = json.loads(path.read_text())
    assert (doc["repo_path"], doc["default_branch"], doc["remote"]) == (str(handle.path), "trunk",
                                                                        "git@example.com:org/app.git")
    assert doc["pipeline"] == ["implement", "review"] and len(doc["issues"]) == 1
    context = doc["project_context"]
    assert context["language"] == "python" and "compileall" in context["build_command"]
    assert "pytest" in context["test_command"]
    cfg = load_config(path)
    assert cfg.repos["app"].path == handle.path and cfg.repos["app"].default_branch == "trunk"
    assert not str(cfg.repos["app"].worktree_base).startswith(str(handle.path) + "/")


def test_init_writes_a_plain_files_mode_not_a_temp_files(make_repo, home, capsys):
    """The starter is the user's config: readable as any file they write (0o666 less the umask), not mkstemp's
    owner-only 0600."""
    import os

    python_repo(make_repo, home)
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(capsys, "init", "--repo", "app")
    finally:
        os.umask(old)
    assert (code, err) == (0, "")
    assert (home.path / "config" / "proof-issues.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in (home.path / "config").iterdir() if p.name.endswith(".tmp")] == []


def test_init_takes_a_repos_own_commands(make_repo, home, capsys):
    python_repo(make_repo, home, commands={"build": "make -j4", "test": "tox -e py311"})

    assert run_cli(capsys, "init", "--repo", "app")[0] == 0

    context = json.loads((home.path / "config" / "proof-issues.json").read_text())["project_context"]
    assert (context["build_command"], context["test_command"]) == ("make -j4", "tox -e py311")


def test_init_never_overwrites_a_config(make_repo, home, capsys):
    python_repo(make_repo, home)
    path = home.path / "config" / "proof-issues.json"
    path.write_text('{"mine": true}')

    code, out, err = run_cli(capsys, "init", "--repo", "app")

    assert code == 2 and out == "" and err.strip() == (f"error: init: {path} exists; not overwriting it (move it "
                                                       "away, or give --config another file)")
    assert path.read_text() == '{"mine": true}'


@pytest.mark.parametrize(("args", "message"), [
    (("--repo", "nope"), "unknown repo 'nope'"),
    (("--repo", "app", "--pipeline", "implement,deploy"), "error: init: --pipeline: unknown stage 'deploy'"),
    (("--repo", "app", "--pipeline", ","), "error: init: --pipeline: name at least one stage"),
])
def test_init_refuses_an_unknown_repo_or_stage_and_writes_nothing(make_repo, home, capsys, args, message):
    python_repo(make_repo, home)

    code, _, err = run_cli(capsys, "init", *args)

    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (home.path / "config" / "proof-issues.json").exists()


def test_launch_dry_run_accepts_what_init_wrote(make_repo, home, capsys, tmp_path):
    python_repo(make_repo, home)
    agent = f"{sys.executable} -c pass {{{{prompt_file}}}}"
    assert run_cli(capsys, "init", "--repo", "app", "--agent-command", agent)[0] == 0

    code, out, err = run_cli(capsys, "launch", "--dry-run", "--json")

    assert (code, err) == (0, "")
    plan = json.loads(out)
    assert [(a["issue"], a["branch"]) for a in plan["assignments"]] == [(1, "proof/issue-1")]


def test_launch_dry_run_of_the_default_claude_starter_asks_only_what_the_machine_needs(
        make_repo, home, capsys, tmp_path, monkeypatch):
    """With no agent_command the starter runs Claude Code: a claude that answers --version is all a normal user
    needs; root is told to add IS_SANDBOX=1 (never written for them)."""
    import os

    python_repo(make_repo, home)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "claude").write_text("#!/bin/sh\necho '2.0.0 (Claude Code)'\n")
    (bin_dir / "claude").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code, out, _ = run_cli(capsys, "init", "--repo", "app")
    assert code == 0 and ("IS_SANDBOX=1" in out) == (os.geteuid() == 0)

    code, _, err = run_cli(capsys, "launch", "--dry-run")

    if os.geteuid() == 0:
        assert code == 2 and len(err.strip().splitlines()) == 1 and "IS_SANDBOX=1" in err
    else:
        assert (code, err) == (0, "")


def test_inv_workers_init_writes_the_starter(make_repo, home, inv):
    python_repo(make_repo, home)
    result = inv("workers.init", "--repo", "app", "--pipeline", "implement,write_tests")
    assert result.code == 0, result.err
    assert json.loads((home.path / "config" / "proof-issues.json").read_text())["pipeline"] == [
        "implement", "write_tests"]


def _fill(parser: argparse.ArgumentParser, verb: str) -> list[str]:
    """argv for `verb` with every required argument given a value."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    argv = [verb]
    for action in sub._actions:
        if not action.option_strings:
            argv.append("1")
        elif action.required:
            argv += [action.option_strings[0], "1"]
    return argv


def test_every_verb_with_no_config_names_init(home, capsys, inv):
    parser = cli.build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    path = home.path / "config" / "proof-issues.json"
    for verb in sorted(set(verbs) - {"init"}):
        code, _, err = run_cli(capsys, *_fill(parser, verb))
        assert code == 2, verb
        assert err.strip() == (f"error: {path}: not found; write a starter one with: python3 -m orchestrator init "
                               "--repo NAME (or inv workers.init --repo NAME)"), verb
    result = inv("workers.status")
    assert result.code == 2 and "inv workers.init --repo NAME" in result.err
    empty = home.path / "configs"
    empty.mkdir()
    code, _, err = run_cli(capsys, "status", "--config-dir", str(empty))
    assert code == 2 and "python3 -m orchestrator init --repo NAME" in err


def test_the_playbook_shows_the_attach_line_as_launch_prints_it(project, tmux_socket, monkeypatch, capsys):
    """The real launch on a private socket; the playbook's line is the same with the starter's socket and
    session names."""
    import re

    from orchestrator.starter import starter

    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1,
                   tmux_socket=tmux_socket.socket_name)
    monkeypatch.delenv("ORCHESTRATOR_TMUX_SOCKET")
    try:
        code, out, err = run_cli(capsys, "launch")
        assert (code, err) == (0, "")
        printed = next(line for line in out.splitlines() if line.startswith("launched: "))
    finally:
        run_cli(capsys, "cleanup", "--keep-worktrees")
    playbook = (ROOT / "playbooks" / "parallel-proof-work.md").read_text()
    shown = re.search(r"launched: tmux -L (\S+) attach -t ([^\s`]+)", playbook)
    assert shown, "the playbook shows no attach line"
    socket, session = shown.groups()
    doc = proj.doc()
    assert printed == shown.group(0).replace(f"-L {socket}", f"-L {tmux_socket.socket_name}").replace(
        f"-t {session}", f"-t {doc['tmux_session']}")
    from lib.config import Repo
    from lib.paths import Paths

    defaults = starter(Repo("app", proj.repo), ("implement",), Paths.from_env())
    assert (defaults["tmux_socket"], defaults["tmux_session"]) == (socket, session)
