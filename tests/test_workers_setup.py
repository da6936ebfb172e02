"""worktree_setup: a new worktree gets the main checkout's ignored files and its set-up command (real tmux, git)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import git, process_running, require_tool
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from lib.errors import ConfigError
from orchestrator import cli, worktree_setup
from orchestrator.config import load_config
from orchestrator.monitor import monitor
from orchestrator.report import status_document
from orchestrator.run import open_run


def _ignored_files(repo: Path) -> None:
    """The main checkout ignores .env and config/local.yml (committed .gitignore, pushed) and holds both."""
    (repo / ".gitignore").write_text(".env\nconfig/local.yml\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore local files")
    git(repo, "push", "-q", "origin", "main")
    (repo / ".env").write_text("SECRET=42\n")
    os.chmod(repo / ".env", 0o600)
    (repo / "config").mkdir()
    (repo / "config" / "local.yml").write_text("db: local\n")


def _run(say: list[str] | None = None) -> int:
    return monitor(open_run(), cycle=0.2, no_delay=True, say=(say if say is not None else []).append)


def _reason(number: int) -> str:
    run = open_run()
    return next(f["reason"] for f in status_document(run)["failures"] if f["issue"] == number)


def test_a_new_worktree_gets_the_ignored_files_and_the_setup_output_lands_in_the_issue_log(
        project, tmp_path, monkeypatch):
    """The copies arrive with their mode, the command runs in the worktree with no inherited GIT_DIR (a decoy
    repo), its output is in logs/issue-1/setup.log, the agent then runs and the copied files are never pushed."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, worktree_setup={
        "copy": [".env", "config/local.yml"],
        "run": "echo installing for issue $ORCHESTRATOR_ISSUE; cat .env; git rev-parse --show-toplevel"})
    _ignored_files(proj.repo)
    decoy = tmp_path / "decoy"
    git(tmp_path, "init", "-q", str(decoy))
    monkeypatch.setenv("GIT_DIR", str(decoy / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(decoy))

    assert _run() == 0
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")

    worktree = tmp_path / "worktrees" / "issue-1"
    assert (worktree / ".env").read_text() == "SECRET=42\n"
    assert stat.S_IMODE((worktree / ".env").stat().st_mode) == 0o600
    assert (worktree / "config" / "local.yml").read_text() == "db: local\n"
    log = (proj.state / "logs" / "issue-1" / "setup.log").read_text()
    assert "installing for issue 1\nSECRET=42\n" + str(worktree) + "\n" in log
    assert "copy .env: copied" in log and "setup done" in log
    assert proj.issue(1)["status"] == "completed"
    pushed = git(proj.remote, "ls-tree", "-r", "--name-only", "refs/heads/feature/issue-1").splitlines()
    assert "work-1.txt" in pushed and ".env" not in pushed and "config/local.yml" not in pushed
    setup = next(e for e in proj.events() if e["action"] == "setup")
    assert setup["issue"] == 1 and setup["copied"] == [".env", "config/local.yml"]
    actions = [e["action"] for e in proj.events()]
    assert actions.index("setup") < actions.index("reassign")


def test_a_failing_setup_fails_the_issue_with_its_last_line_keeps_the_worktree_and_uses_no_retry(project, tmp_path):
    """The agent never starts; status gives `setup failed: <last line>`; once the command is fixed and the issue
    set back to pending, the kept worktree is set up again and the issue completes."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, worktree_setup={
        "run": "echo step one; echo 'npm ERR! missing script: ci' >&2; exit 3"})

    assert _run() == 1

    assert proj.issue(1)["status"] == "failed"
    assert _reason(1) == "setup failed: npm ERR! missing script: ci"
    worktree = tmp_path / "worktrees" / "issue-1"
    assert worktree.is_dir() and git(worktree, "branch", "--show-current") == "feature/issue-1"
    assert not (proj.script.parent / "runs").exists(), "the agent ran although its setup failed"
    # The command ran in the try's pane (a `reassign` started that try), and ended it: no restart, no retry used.
    assert not any(e["action"] == "restart" for e in proj.events())
    skip = next(e for e in proj.events() if e["action"] == "skip")
    assert skip["reason"] == "setup failed: npm ERR! missing script: ci"
    assert "step one\nnpm ERR! missing script: ci\n=== exit 3" in (
        proj.state / "logs" / "issue-1" / "setup.log").read_text()

    doc = proj.doc()
    doc["worktree_setup"]["run"] = "echo fixed > fixed.txt"
    doc["issues"][0]["status"] = "pending"
    proj.config.write_text(json.dumps(doc))
    assert _run() == 0
    assert proj.issue(1)["status"] == "completed"
    assert (worktree / "fixed.txt").read_text() == "fixed\n"


def test_a_file_missing_from_the_main_checkout_fails_the_setup_and_names_it(project):
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1,
                   worktree_setup={"copy": [".env"], "run": "echo never"})

    assert _run() == 1

    assert _reason(1) == f"setup failed: copy .env: not found in the main checkout {proj.repo}"
    assert "never" not in (proj.state / "logs" / "issue-1" / "setup.log").read_text()


def test_a_hung_setup_is_killed_at_its_timeout_with_its_children_even_one_that_left_its_group(project, tmp_path):
    require_tool("setsid")
    pids = tmp_path / "pids"
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1, worktree_setup={
        "run": f"sleep 3600 & echo $! > {pids}; setsid sleep 3600 & echo $! >> {pids}; echo waiting; wait",
        "timeout": 2})

    assert _run() == 1

    reason = _reason(1)
    assert reason.startswith("setup failed: ") and "timed out after 2s" in reason and "(waiting)" in reason
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    retry_until(lambda: not any(process_running(pid) for pid in children), seconds=30)
    assert proj.issue(1)["status"] == "failed"


def test_a_worktree_the_agent_deleted_is_set_up_again_when_it_is_recreated(project, tmp_path):
    proj = project([{"number": 1, "title": "one"}], script={1: ["selfdelete"]}, pipeline=["implement"],
                   num_workers=1, worktree_setup={"copy": [".env"], "run": "echo set up"})
    _ignored_files(proj.repo)

    assert _run() == 0

    assert proj.issue(1)["status"] == "completed"
    assert (proj.state / "logs" / "issue-1" / "setup.log").read_text().count("setup done") == 2
    assert (tmp_path / "worktrees" / "issue-1" / ".env").read_text() == "SECRET=42\n"


@pytest.mark.parametrize(("setup", "expected"), [
    ({"copy": ["/etc/passwd"]}, "worktree_setup.copy[0]: must be relative to the main checkout, got the absolute "
                                "path '/etc/passwd'"),
    ({"copy": ["config/../../secrets"]}, "worktree_setup.copy[0]: must stay inside the main checkout"),
    ({"copy": ["~/.ssh/id_ed25519"]}, "worktree_setup.copy[0]: must be relative to the main checkout"),
    ({"copy": [".git/config"]}, "worktree_setup.copy[0]: must name a file of the checkout"),
    ({"copy": ".env"}, "worktree_setup.copy: must be a list"),
    ({"run": ""}, "worktree_setup.run: must be a non-empty shell command"),
    ({"run": "npm ci", "timeout": 0}, "worktree_setup.timeout: must be a number of seconds > 0"),
    ({"run": "npm ci", "timeout": True}, "worktree_setup.timeout: must be a number of seconds > 0"),
    ({"run": "npm ci", "timout": 5}, "worktree_setup.timout: unknown key"),
    ("npm ci", "worktree_setup: must be an object"),
])
def test_a_bad_worktree_setup_is_a_config_error_at_load(make_repo, tmp_path, setup, expected):
    repo = make_repo("app")
    config = tmp_path / "demo-issues.json"
    config.write_text(json.dumps({"repo_path": str(repo.path), "branch_prefix": "f/", "worktree_setup": setup,
                                  "issues": []}))
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert any(expected in line for line in err.value.problems), err.value.problems


def test_a_copy_entry_that_is_a_symlink_out_of_the_checkout_is_refused_at_load_with_exit_2(
        make_repo, home, tmp_path, capsys):
    repo = make_repo("app")
    (tmp_path / "outside").write_text("not the project's\n")
    (repo.path / ".env").symlink_to(tmp_path / "outside")
    config = home.path / "config" / "proof-issues.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"repo_path": str(repo.path), "branch_prefix": "f/",
                                  "worktree_setup": {"copy": [".env"]}, "issues": []}))

    assert cli.main(["launch", "--dry-run"]) == 2

    err = capsys.readouterr().err
    assert "worktree_setup.copy[0]: '.env' is a symlink that leads out of the main checkout" in err


def _worktree(repo, tmp_path: Path) -> Path:
    """A worktree of `repo` whose .gitignore ignores .env and config/local.yml."""
    repo.commit({".gitignore": ".env\nconfig/local.yml\n"}, "ignore local files")
    path = tmp_path / "wt" / "issue-1"
    repo.git("worktree", "add", "-q", "-b", "f/1", str(path))
    return path


def test_a_symlink_seen_only_at_copy_time_fails_the_setup_and_copies_nothing(make_repo, tmp_path):
    repo = make_repo("app")
    setup = worktree_setup.parse({"copy": [".env"]}, repo.path, lambda *a: pytest.fail(str(a)), "worktree_setup")
    (tmp_path / "outside").write_text("not the project's\n")
    (repo.path / ".env").symlink_to(tmp_path / "outside")  # made after the config loaded
    worktree = _worktree(repo, tmp_path)

    with pytest.raises(worktree_setup.SetupFailed, match="copy .env: a symlink in the main checkout leads out"):
        worktree_setup.copy_files(setup, repo.path, worktree, tmp_path / "setup.log")
    assert not (worktree / ".env").exists() and not worktree_setup.done(worktree)


def test_a_tracked_symlink_in_the_worktree_never_carries_a_copy_out_of_it(make_repo, tmp_path):
    """`config` is a committed symlink to a directory elsewhere: config/local.yml is not written through it."""
    repo = make_repo("app")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo.path / "config").symlink_to(elsewhere)
    repo.git("add", "config")
    repo.git("commit", "-q", "-m", "config link")
    worktree = _worktree(repo, tmp_path)
    (repo.path / "config").unlink()
    (repo.path / "config").mkdir()
    (repo.path / "config" / "local.yml").write_text("db: local\n")
    setup = worktree_setup.parse({"copy": ["config/local.yml"]}, repo.path, lambda *a: pytest.fail(str(a)), "ws")

    with pytest.raises(worktree_setup.SetupFailed, match="leads out of the worktree"):
        worktree_setup.copy_files(setup, repo.path, worktree, tmp_path / "setup.log")
    assert list(elsewhere.iterdir()) == []


def test_a_file_the_worktree_already_has_is_never_overwritten(make_repo, tmp_path):
    repo = make_repo("app")
    (repo.path / ".env").write_text("MAIN=1\n")
    worktree = _worktree(repo, tmp_path)
    (worktree / ".env").write_text("AGENT=edited\n")
    setup = worktree_setup.parse({"copy": [".env"]}, repo.path, lambda *a: pytest.fail(str(a)), "ws")

    worktree_setup.copy_files(setup, repo.path, worktree, tmp_path / "setup.log")

    assert (worktree / ".env").read_text() == "AGENT=edited\n"
    assert "kept the worktree's own" in (tmp_path / "setup.log").read_text()
    assert worktree_setup.done(worktree)


def test_a_file_the_worktree_gets_while_the_copy_streams_is_never_overwritten(make_repo, tmp_path, monkeypatch):
    # The copy streams into a temp file and then put it in place: a rename there replaced whatever the worktree
    # had got meanwhile (its own .env, written by hand or a tool), which the set-up promises never to overwrite.
    repo = make_repo("app")
    (repo.path / ".env").write_text("MAIN=1\n")
    worktree = _worktree(repo, tmp_path)
    setup = worktree_setup.parse({"copy": [".env"]}, repo.path, lambda *a: pytest.fail(str(a)), "ws")
    streamed = worktree_setup.shutil.copyfileobj

    def copy_while_the_worktree_gets_its_own(src, dst, *args):
        streamed(src, dst, *args)
        (worktree / ".env").write_text("AGENT=edited\n")

    monkeypatch.setattr(worktree_setup.shutil, "copyfileobj", copy_while_the_worktree_gets_its_own)
    worktree_setup.copy_files(setup, repo.path, worktree, tmp_path / "setup.log")

    assert (worktree / ".env").read_text() == "AGENT=edited\n"
    assert "kept the worktree's own" in (tmp_path / "setup.log").read_text()
    assert [p.name for p in worktree.iterdir() if p.name.startswith(".env")] == [".env"], "a temp file was left"


def test_a_temp_copy_a_killed_set_up_left_is_removed_before_the_agent_could_commit_it(make_repo, tmp_path):
    # A monitor killed while copying .env leaves ..env.<random>.setup, which git does not ignore: the next set-up
    # (it runs again: no done mark) removes it, even when .env itself was already in place.
    repo = make_repo("app")
    (repo.path / ".env").write_text("SECRET=42\n")
    worktree = _worktree(repo, tmp_path)
    (worktree / ".env").write_text("SECRET=42\n")
    (worktree / "..env.k2j3x9_a.setup").write_text("SECRET=42\n")
    (worktree / "..envrc.k2j3x9_a.setup").write_text("not ours: another file's name\n")
    setup = worktree_setup.parse({"copy": [".env"]}, repo.path, lambda *a: pytest.fail(str(a)), "ws")

    worktree_setup.copy_files(setup, repo.path, worktree, tmp_path / "setup.log")

    assert sorted(p.name for p in worktree.iterdir() if ".env" in p.name) == ["..envrc.k2j3x9_a.setup", ".env"]
    assert "already there" in (tmp_path / "setup.log").read_text()


def test_a_fifo_in_the_main_checkout_fails_the_setup_instead_of_hanging_it(make_repo, tmp_path):
    repo = make_repo("app")
    os.mkfifo(repo.path / ".env")
    worktree = _worktree(repo, tmp_path)
    setup = worktree_setup.parse({"copy": [".env"]}, repo.path, lambda *a: pytest.fail(str(a)), "ws")

    with pytest.raises(worktree_setup.SetupFailed, match="copy .env: not a regular file"):
        worktree_setup.copy_files(setup, repo.path, worktree, tmp_path / "setup.log")


def test_a_file_git_would_not_ignore_in_the_worktree_is_never_copied(make_repo, tmp_path):
    """Copied but not ignored, the agent's `git add -A` would commit a secret and the monitor push it."""
    repo = make_repo("app")
    worktree = _worktree(repo, tmp_path)
    (repo.path / "secrets.txt").write_text("TOKEN=1\n")
    setup = worktree_setup.parse({"copy": ["secrets.txt"]}, repo.path, lambda *a: pytest.fail(str(a)), "ws")

    with pytest.raises(worktree_setup.SetupFailed, match="copy secrets.txt: git does not ignore it in the worktree"):
        worktree_setup.copy_files(setup, repo.path, worktree, tmp_path / "setup.log")
    assert not (worktree / "secrets.txt").exists()


def test_a_setup_log_that_cannot_be_written_fails_the_setup_not_the_monitor(make_repo, tmp_path):
    repo = make_repo("app")
    worktree = _worktree(repo, tmp_path)
    (tmp_path / "logs").write_text("a file where the log directory should be")
    setup = worktree_setup.parse({"run": "true"}, repo.path, lambda *a: pytest.fail(str(a)), "ws")

    with pytest.raises(worktree_setup.SetupFailed, match="cannot write its log"):
        worktree_setup.copy_files(setup, repo.path, worktree, tmp_path / "logs" / "issue-1" / "setup.log")
    assert not worktree_setup.done(worktree)


@pytest.mark.parametrize("refusal", ["ENOSYS", "EACCES", "EPERM", "ENOTSUP"])
def test_a_worktree_on_a_file_system_that_refuses_hard_links_still_gets_its_copy(make_repo, tmp_path, monkeypatch,
                                                                                 refusal):
    """The copy links a finished temp file into place (never replacing what the worktree has); a file system that
    refuses links, whatever errno it picks (FUSE mounts say ENOSYS), gets a rename after a last look instead of a
    set-up that fails on every try."""
    import errno

    repo = make_repo("app")
    (repo.path / ".env").write_text("MAIN=1\n")
    worktree = _worktree(repo, tmp_path)
    setup = worktree_setup.parse({"copy": [".env"]}, repo.path, lambda *a: pytest.fail(str(a)), "ws")

    def no_link(*args, **kwargs):
        raise OSError(getattr(errno, refusal), os.strerror(getattr(errno, refusal)))

    monkeypatch.setattr(worktree_setup.os, "link", no_link)
    worktree_setup.copy_files(setup, repo.path, worktree, tmp_path / "setup.log")
    assert (worktree / ".env").read_text() == "MAIN=1\n"
    assert not [p for p in worktree.iterdir() if p.name.endswith(".setup")]


def test_a_fifo_where_a_tries_set_up_state_belongs_is_read_as_no_state_without_a_wait(tmp_path):
    """The monitor reads each try's set-up state every cycle; an agent can put a FIFO there (its own try's files
    sit beside the worktree's): that must never hang the monitor."""
    import subprocess
    import sys

    from conftest import ROOT

    fifo = tmp_path / "worker-1-try-1.setup"
    os.mkfifo(fifo)
    asked = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from orchestrator import worktree_setup; "
                               "print(worktree_setup.read_state(Path(sys.argv[1])))", str(fifo)],
        cwd=ROOT / "scripts" / "proof-workers", env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60)
    assert (asked.returncode, asked.stdout) == (0, "{}\n"), asked.stderr
