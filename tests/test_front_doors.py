"""Every front door (each inv task, each script) turns our errors into the same lines and exit codes.

A user error is `error: ...` lines and exit 2; a run stopped by a signal prints
what was recorded (its notes), then its message, and exits 128 + the signal;
wherever in the task or script the error comes from.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

import pytest

import lib.paths
from lib.errors import OrchestratorError
from lib.runner import RunInterrupted
from lib.scan import ScanStopped
from tests.conftest import ROOT, into_closed_pipe


def user_error() -> Exception:
    return OrchestratorError("first problem\nsecond problem")


def run_stopped() -> Exception:
    stop = RunInterrupted(signal.SIGTERM, [], 2)
    stop.notes.append("warning: results not recorded in x.json: No space left on device")
    return stop


def scan_stopped() -> Exception:
    return ScanStopped(signal.SIGHUP)


ERRORS = {
    "user error": (user_error, 2, "error: first problem\nerror: second problem\n"),
    "run stopped": (run_stopped, 143, "warning: results not recorded in x.json: No space left on device\n"
                                      "interrupted: stopped 2 running commands (SIGTERM)\n"),
    "scan stopped": (scan_stopped, 129, "interrupted: scan stopped (SIGHUP)\n"),
    # Ctrl-C before a run handles the stop signals (loading the config, importing fabric): Invoke alone exits 1
    # without a word, which says "a repo failed".
    "ctrl-c outside a run": (KeyboardInterrupt, 130, "interrupted (SIGINT)\n"),
}

# Every task of tasks.py that works on the workspace, with the arguments it needs (workers.* hand their argv
# to the orchestrator package's own main).
TASKS = [
    ["status"], ["status", "--host", "builder"], ["scan"], ["build", "a"], ["test", "a"], ["test-all"],
    ["sync-all"], ["sync-all", "--host", "builder"], ["workflow", "build", "a"], ["workflow-all", "build"],
    ["foreach", "true"], ["report"], ["host.check"], ["host.add", "b", "example.org", "/w"], ["host.list"],
    ["task.list"], ["task.start", "task-001"], ["task.complete", "task-001"], ["task.add", "title"],
    ["task.show", "task-001"],
]


def failing_paths(monkeypatch, make_error) -> None:
    """Every workspace task and script starts from Paths.from_env: make it raise."""
    def from_env(*args, **kwargs):
        raise make_error()

    monkeypatch.setattr(lib.paths.Paths, "from_env", staticmethod(from_env))


def test_every_workspace_task_is_in_the_table():
    from invoke import Collection

    import tasks
    from tests.test_tasks_meta import all_tasks

    names = {name for name, _ in all_tasks(Collection.from_module(tasks)) if not name.startswith("workers.")}
    assert names == {args[0] for args in TASKS}


@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("args", TASKS, ids=" ".join)
def test_a_task_turns_each_error_into_its_lines_and_exit_code(inv, home, monkeypatch, args, error):
    make_error, code, err = ERRORS[error]
    failing_paths(monkeypatch, make_error)
    result = inv(*args)
    assert (result.code, result.err, result.out) == (code, err, "")


def script_main(name: str):
    spec = importlib.util.spec_from_file_location(f"front_door_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("script", ["scan_all_repos", "sync_all_repos", "run_all_tests"])
def test_a_script_turns_each_error_into_its_lines_and_exit_code(home, monkeypatch, capsys, script, error):
    make_error, code, err = ERRORS[error]
    failing_paths(monkeypatch, make_error)
    assert script_main(script)([]) == code
    captured = capsys.readouterr()
    assert (captured.err, captured.out) == (err, "")


def test_the_sync_script_stopped_in_its_closing_scan_says_so_in_one_line(home, make_repo, monkeypatch, capsys):
    """As `inv sync-all`: the sync is recorded, the stop of the scan after it is one line and 128 + the signal."""
    import lib.scan

    home.add(make_repo("a"))

    def stopped(*args, **kwargs):
        raise lib.scan.ScanStopped(signal.SIGTERM)

    monkeypatch.setattr(lib.scan, "scan_workspace", stopped)
    assert script_main("sync_all_repos")([]) == 143
    state = home.path / "state" / "repo-status.json"
    assert capsys.readouterr().err.splitlines()[-1] == f"interrupted: scan stopped (SIGTERM); {state} not written"
    assert home.state("sync-results.json")["results"][0]["repo"] == "a"


def test_a_bug_in_a_task_or_script_keeps_its_traceback(inv, home, monkeypatch):
    """Only our errors become lines and exit codes: anything else is a bug and must not pass for a user error."""
    failing_paths(monkeypatch, lambda: KeyError("a bug"))
    with pytest.raises(KeyError):
        inv("scan")
    with pytest.raises(KeyError):
        script_main("scan_all_repos")([])


@pytest.mark.parametrize("door", ["inv", "script"])
def test_both_sync_doors_print_the_sync_warnings(home, make_repo, inv, capsys, door):
    """A results file that cannot be read is set aside: `inv sync-all` and its script both say so (the script
    once dropped the report's notes, so a set-aside or an unrecorded result went unsaid)."""
    home.add(make_repo("a"))
    results = home.path / "state" / "sync-results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("{not json")
    if door == "inv":
        result = inv("sync-all")
        code, out, err = result.code, result.out, result.err
    else:
        code = script_main("sync_all_repos")([])
        out, err = capsys.readouterr()
    assert code == 0, out + err
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and str(results) in warning[0], err
    assert "set aside as sync-results.json.corrupt" in warning[0], err
    assert home.state("sync-results.json")["results"][0]["repo"] == "a"
    assert (results.parent / "sync-results.json.corrupt").read_text() == "{not json"


def test_the_sync_scripts_warnings_are_said_when_stdout_fails(home, make_repo, tmp_path):
    """A full disk takes the table: the warnings after it (a results file set aside) are still said, and the
    code says the summary could not be printed."""
    home.add(make_repo("a"))
    results = home.path / "state" / "sync-results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("{not json")
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], cwd=tmp_path,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "error: cannot print the summary: No space left on device" in lines, lines
    assert "set aside as sync-results.json.corrupt" in lines[-1], lines
    assert home.state("sync-results.json")["results"][0]["repo"] == "a"


def test_the_scan_script_not_recorded_into_a_closed_pipe_is_still_exit_2_and_says_why(home, make_repo, tmp_path):
    home.add(make_repo("a"))
    (home.path / "state").write_text("a file where the state directory should be")
    done = into_closed_pipe([sys.executable, str(ROOT / "scripts" / "scan_all_repos.py")], tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().endswith("the scan was not recorded"), done.stderr


@pytest.mark.parametrize("script", ["scan_all_repos", "sync_all_repos"])
def test_a_scripts_help_into_a_closed_pipe_and_a_usage_error_keep_honest_codes(home, tmp_path, script):
    """argparse's exits pass through `leave`: `--help | head -c0` (the help still in stdout's buffer) is 1
    without Python's 'Exception ignored' noise; a usage error keeps argparse's 2."""
    path = str(ROOT / "scripts" / f"{script}.py")
    done = into_closed_pipe([sys.executable, path, "--help"], tmp_path, unbuffered=False)
    assert done.returncode == 1 and done.stderr == "", done.stderr
    usage = subprocess.run([sys.executable, path, "--bogus"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2 and "unrecognized arguments: --bogus" in usage.stderr, usage.stderr


def test_leave_keeps_a_bugs_traceback(tmp_path):
    """Only a failed print of the summary is a line: any other OSError from the run is a bug and shows as one."""
    done = subprocess.run([sys.executable, "-c", "from lib.errors import leave\n"
                           "def main():\n    raise OSError(5, 'Input/output error')\nleave(main)\n"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" in done.stderr and "cannot print" not in done.stderr, done.stderr


@pytest.mark.parametrize("script", ["scan_all_repos", "sync_all_repos"])
def test_a_config_error_with_stderr_gone_keeps_exit_2(home, tmp_path, script):
    """The error line cannot be said (stderr is a pipe nobody reads): the code still says what happened."""
    home.write_repos([], raw="{not json")
    done = into_closed_pipe([sys.executable, str(ROOT / "scripts" / f"{script}.py")], tmp_path, stream="stderr")
    assert done.returncode == 2
