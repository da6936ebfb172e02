"""Never a traceback, never a false verdict: hostile logs, state, reports, signals and leftovers (issue 11)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from lib.statefile import write_json
from tests.conftest import ROOT, process_running, stop_when, wait_gone

PASSING = {"Makefile": "all:\n\t@echo built ok\ntest:\n\t@echo all tests passed\n"}


def log_dir() -> Path:
    return Path(os.environ["ORCHESTRATOR_LOG_DIR"])


def write_workflows(home, workflows: dict) -> None:
    (home.path / "config").mkdir(parents=True, exist_ok=True)
    (home.path / "config" / "workflows.json").write_text(json.dumps({"workflows": workflows}))


def one_step(command: str, **extra) -> dict:
    return {"description": "", "steps": [{"action": "run", "command": command}], **extra}


# ---------------------------------------------------------------- 1: a log that cannot be written

@pytest.mark.parametrize("task", ["test", "workflow"], ids=["log-only", "echoed"])
def test_a_full_disk_for_the_log_is_an_error_outcome_not_a_traceback_or_a_hang(home, make_repo, inv, task):
    write_workflows(home, {"test": one_step("seq 1 1000000; sleep 30", log_file="/dev/full")})
    home.add(make_repo("full"), language="make")
    started = time.monotonic()
    result = inv(*(["test", "full"] if task == "test" else ["workflow", "test", "full"]), "--timeout", "20")
    assert time.monotonic() - started < 19, "the command ran on (or hung) with nowhere to log"  # --timeout 20
    assert result.code == 1 and "Traceback" not in result.err
    assert "TEST ERROR (cannot write log /dev/full: No space left on device" in result.out
    entry = home.state("test-results.json")["results"][0]
    assert entry["status"] == "error" and entry["reason"] == "cannot write log /dev/full: No space left on device"


# ---------------------------------------------------------------- 2, 3: state of the wrong shape, unwritable state

@pytest.mark.parametrize("document", [[1, 2], {"results": None}, {"results": [{"status": "failed"}]},
                                      {"results": [{"repo": ["x"], "status": "failed"}]}, "text"],
                         ids=["list", "null-results", "no-repo", "repo-not-text", "string"])
@pytest.mark.parametrize("command", [["test", "a"], ["test-all", "--failed"], ["test-all"]])
def test_state_of_the_wrong_shape_is_set_aside_with_one_line_before_anything_runs(home, make_repo, inv, document,
                                                                                  command):
    home.add(make_repo("a", PASSING), language="make")
    state = home.path / "state" / "test-results.json"
    state.parent.mkdir()
    state.write_text(json.dumps(document))
    result = inv(*command)
    assert "Traceback" not in result.err and result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if "test-results.json" in line]
    assert warnings == [f"warning: {state}: " + warnings[0].split(": ", 2)[2]]
    assert "not a results document" in warnings[0] and "set aside as test-results.json.corrupt" in warnings[0]
    assert json.loads((state.parent / "test-results.json.corrupt").read_text()) == document
    if command != ["test-all", "--failed"]:
        assert home.state("test-results.json")["results"][0]["repo"] == "a"


def test_state_that_is_not_json_is_set_aside_with_one_line_too(home, make_repo, inv):
    home.add(make_repo("a", PASSING), language="make")
    state = home.path / "state" / "test-results.json"
    state.parent.mkdir()
    state.write_text('{"results": [')
    result = inv("test-all", "--failed")
    assert result.code == 0 and "Traceback" not in result.err
    assert result.err.strip() == (f"warning: {state}: not valid JSON; set aside as test-results.json.corrupt, "
                                  "a fresh one will be written")
    assert (state.parent / "test-results.json.corrupt").read_text() == '{"results": ['


def test_unwritable_state_is_one_line_after_the_verdict(home, make_repo, inv):
    home.add(make_repo("a", PASSING), language="make")
    (home.path / "state").write_text("a file where the state directory should be")
    result = inv("test", "a")
    assert "Traceback" not in result.err
    assert "TEST PASSED (" in result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (f"warning: results not recorded in "
                                            f"{home.path / 'state' / 'test-results.json'}: File exists")
    assert result.code == 0, "the verdict stands: the tests passed"
    result = inv("test-all")
    assert "Traceback" not in result.err and "tested 1 repos" in result.out
    assert "warning: results not recorded in" in result.err


# ---------------------------------------------------------------- 4: a JUnit path that cannot be written

@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_junit_xml_that_cannot_be_written_is_exit_2_before_running(home, make_repo, inv, tmp_path, where):
    home.add(make_repo("a", PASSING), language="make")
    (tmp_path / "a-file").write_text("x")
    target = tmp_path if where == "directory" else tmp_path / "a-file" / "junit.xml"
    result = inv("test-all", "--junit-xml", str(target))
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.startswith(f"error: --junit-xml {target}: ")
    assert not (log_dir() / "orchestrator-test-a.log").exists(), "tests ran before the report path was checked"


# ---------------------------------------------------------------- 8, 9: log_file collisions and relative log_file

def test_two_repos_logging_to_one_file_is_a_config_error_before_running(home, make_repo, inv):
    write_workflows(home, {"test": one_step("make test", log_file="{{log_dir}}/tests-{{repo.language}}.log")})
    home.add(make_repo("a", PASSING), make_repo("b", PASSING), language="make")
    result = inv("test-all")
    assert result.code == 2
    assert result.err.strip() == (f"error: {home.path / 'config' / 'workflows.json'}: workflows.test.log_file: "
                                  f"repos a and b would both log to {log_dir() / 'tests-make.log'}; "
                                  "put {{repo.name}} in it")
    assert not (log_dir() / "tests-make.log").exists()


def test_a_relative_log_file_is_relative_to_the_log_dir(home, make_repo, inv, tmp_path, monkeypatch):
    write_workflows(home, {"test": one_step("make test", log_file="runs/{{repo.name}}.log")})
    repo = make_repo("a", PASSING)
    home.add(repo, language="make")
    monkeypatch.chdir(repo.path)
    result = inv("test", "a")
    assert result.code == 0
    assert "all tests passed" in (log_dir() / "runs" / "a.log").read_text()
    assert not (repo.path / "runs").exists(), "the log landed in the checkout"


# ---------------------------------------------------------------- 10: what "not found on PATH" may skip

@pytest.mark.parametrize("command", ["~/bin/run-tests", "$HOME/bin/run-tests", "[[ 1 -eq 2 ]]",
                                     "./missing-script"])
def test_only_a_bare_missing_command_is_skipped_anything_else_runs_and_fails(home, make_repo, inv, command):
    write_workflows(home, {"test": one_step(command)})
    home.add(make_repo("a"), language="make")
    result = inv("test", "a")
    assert result.code == 1, result.out
    assert "TEST FAILED" in result.out and "not found on PATH" not in result.out


def test_a_bare_missing_tool_is_still_skipped(home, make_repo, inv):
    write_workflows(home, {"test": one_step("no-such-tool-xyz --all")})
    home.add(make_repo("a"), language="make")
    result = inv("test", "a")
    assert result.code == 0 and "TEST SKIPPED (no-such-tool-xyz not found on PATH" in result.out


# ---------------------------------------------------------------- 11: killed by a signal

def test_a_command_killed_by_a_signal_says_so_in_verdict_state_and_junit(home, make_repo, inv, tmp_path):
    write_workflows(home, {"test": one_step("echo about to die; kill -9 $$")})
    home.add(make_repo("a"), language="make")
    result = inv("test", "a")
    assert result.code == 1 and "TEST FAILED (killed by SIGKILL, " in result.out
    entry = home.state("test-results.json")["results"][0]
    assert entry["exit_code"] == 137 and entry["reason"] == "killed by SIGKILL"
    junit = tmp_path / "junit.xml"
    assert inv("test-all", "--junit-xml", str(junit)).code == 1
    failure = ElementTree.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure.get("message") == "killed by SIGKILL"


# ---------------------------------------------------------------- 12: processes that leave the group

def test_a_daemon_started_by_a_build_does_not_outlive_it(home, make_repo, inv, tmp_path):
    pidfile = tmp_path / "daemon.pid"
    write_workflows(home, {"build": one_step(
        f"setsid sh -c 'echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; while :; do echo tick; sleep 0.1; done' & "
        f"while [ ! -s {pidfile} ]; do sleep 0.05; done")})
    home.add(make_repo("a"), language="make")
    result = inv("build", "a")
    daemon = int(pidfile.read_text())
    try:
        assert result.code == 0 and "BUILD PASSED" in result.out
        assert wait_gone(daemon, 2), "the process that left the group survived the build"
        assert (f"process(es) that had left the command's process group: {daemon} sh -c"
                in (log_dir() / "orchestrator-build-a.log").read_text())
    finally:
        if process_running(daemon):
            os.kill(daemon, signal.SIGKILL)


# ---------------------------------------------------------------- 16: huge lines in the shown tail

def test_a_huge_log_line_is_cut_in_the_tail_and_the_junit_report_but_kept_in_the_log(home, make_repo, inv, tmp_path):
    write_workflows(home, {"test": one_step("head -c 300000 /dev/zero | tr '\\0' x; echo; echo boom; exit 1")})
    home.add(make_repo("a"), language="make")
    result = inv("test", "a")
    assert result.code == 1
    assert len(result.out) < 40_000, f"{len(result.out)} characters reached the terminal"
    assert "more characters cut; the log has them all]" in result.out and "boom" in result.out
    assert "x" * 300_000 in (log_dir() / "orchestrator-test-a.log").read_text()
    junit = tmp_path / "junit.xml"
    inv("test-all", "--junit-xml", str(junit))
    failure = ElementTree.parse(junit).getroot().find("testsuite/testcase/failure")
    assert len(failure.text) < 40_000 and "more characters cut" in failure.text


# ---------------------------------------------------------------- 20: state files honour the umask

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_state_files_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "state.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == mode


# ---------------------------------------------------------------- 13: signals during runs over many repos

def hanging_repo(make_repo, name: str, pidfile: Path):
    return make_repo(name, {"Makefile": f"test:\n\t@echo $$$$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}; exec sleep 60\n"})


def start(args: list[str], tmp_path: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    err = tmp_path / "stderr.txt"
    child = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=open(err, "wb"),
                             env={**os.environ, **(extra_env or {})})
    return child, err


def wait_for(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def inv_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["INT", "TERM", "HUP"])
@pytest.mark.parametrize("entry", ["inv", "script"])
def test_a_signal_during_test_all_kills_every_group_keeps_finished_results_and_exits_128_plus_n(
        home, make_repo, tmp_path, signum, entry):
    pids = [tmp_path / f"hang{i}.pid" for i in range(2)]
    repos = [make_repo("quick", PASSING)] + [hanging_repo(make_repo, f"hang{i}", p) for i, p in enumerate(pids)]
    home.add(*repos, language="make")
    args = (inv_command("test-all", "--jobs", "3") if entry == "inv"
            else [sys.executable, str(ROOT / "scripts" / "run_all_tests.py"), "--jobs", "3"])
    child, err = start(args, tmp_path)
    stop_when(child, lambda: all(p.exists() for p in pids) and b"quick: passed" in err.read_bytes(), signum)
    assert child.returncode == 128 + signum
    lines = err.read_text().splitlines()
    assert lines[-1] == f"interrupted: stopped 2 running commands ({signal.Signals(signum).name})"
    assert "Traceback" not in err.read_text()
    assert all(wait_gone(int(p.read_text()), 2) for p in pids), "a running test outlived the interrupted run"
    assert [(r["repo"], r["status"]) for r in home.state("test-results.json")["results"]] == [("quick", "passed")]


def test_a_signal_during_workflow_all_is_handled_the_same_way(home, make_repo, tmp_path):
    pids = [tmp_path / f"hang{i}.pid" for i in range(2)]
    home.add(make_repo("quick", PASSING), *(hanging_repo(make_repo, f"hang{i}", p) for i, p in enumerate(pids)),
             language="make")
    child, err = start(inv_command("workflow-all", "test", "--jobs", "3"), tmp_path)
    stop_when(child, lambda: all(p.exists() for p in pids) and b"quick: passed" in err.read_bytes(), signal.SIGTERM)
    assert child.returncode == 143
    assert err.read_text().splitlines()[-1] == "interrupted: stopped 2 running commands (SIGTERM)"
    assert all(wait_gone(int(p.read_text()), 2) for p in pids)
    assert [r["repo"] for r in home.state("test-results.json")["results"]] == ["quick"]


@pytest.mark.parametrize("entry", ["inv", "script"])
def test_a_signal_during_sync_all_kills_the_fetches_and_keeps_finished_results(home, make_repo, tmp_path, entry):
    """Fetches over "ssh" that hang (a fake ssh that sleeps) are stopped; the local repo's result is kept."""
    quick = make_repo("quick")
    slow = [make_repo(f"slow{i}") for i in range(2)]
    for repo in slow:
        repo.git("remote", "set-url", "origin", f"ssh://example.invalid/{repo.path.name}.git")
    home.add(quick, *slow)
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/ssh-$$.pid\nexec sleep 60\n")
    fake_ssh.chmod(0o755)
    args = (inv_command("sync-all", "--net-jobs", "3") if entry == "inv"
            else [sys.executable, str(ROOT / "scripts" / "sync_all_repos.py"), "--net-jobs", "3"])
    child, err = start(args, tmp_path, {"GIT_SSH_COMMAND": str(fake_ssh)})
    stop_when(child, lambda: len(list(tmp_path.glob("ssh-*.pid"))) == 2 and b"quick: up to date" in err.read_bytes())
    assert child.returncode == 130, err.read_text()
    assert err.read_text().splitlines()[-1] == "interrupted: stopped 2 running commands (SIGINT)"
    assert all(wait_gone(int(p.read_text()), 2) for p in tmp_path.glob("ssh-*.pid"))
    results = json.loads((home.path / "state" / "sync-results.json").read_text())["results"]
    assert [(r["repo"], r["status"]) for r in results] == [("quick", "up to date")]


# ---------------------------------------------------------------- hostile environment: an inherited GIT_DIR

def test_an_inherited_git_dir_does_not_point_a_repo_command_at_another_repo(home, make_repo, inv, monkeypatch):
    """Run from a git hook (GIT_DIR, GIT_INDEX_FILE set), `review` must still show the repo's own commits."""
    other = make_repo("other")
    other.commit({"o.txt": "1"}, "commit of the other repo")
    repo = make_repo("wallet")
    repo.commit({"a.txt": "1"}, "unpushed work in wallet")
    home.add(repo)
    monkeypatch.setenv("GIT_DIR", str(other.path / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(other.path / ".git" / "index"))
    result = inv("workflow", "review", "wallet")
    assert result.code == 0, result.out
    assert "unpushed work in wallet" in result.out and "commit of the other repo" not in result.out


# ---------------------------------------------------------------- concurrent runs: one log, one writer

def test_a_second_run_does_not_truncate_the_log_of_a_run_still_writing_it(home, make_repo, inv, tmp_path):
    pidfile = tmp_path / "hang.pid"
    home.add(hanging_repo(make_repo, "slow", pidfile), language="make")
    child, err = start(inv_command("test", "slow", "--timeout", "30"), tmp_path)
    try:
        wait_for(pidfile.exists)
        log = log_dir() / "orchestrator-test-slow.log"
        before = log.read_text()
        result = inv("test", "slow", "--timeout", "2")
        assert result.code == 1 and f"TEST ERROR (log {log} is in use by another run" in result.out
        assert log.read_text() == before, "the running test's log was truncated"
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
    assert wait_gone(int(pidfile.read_text()), 2)


def test_a_named_pipe_as_log_file_is_an_error_not_a_hang(home, make_repo, inv, tmp_path):
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    write_workflows(home, {"test": one_step("true", log_file=str(fifo))})
    home.add(make_repo("a"), language="make")
    child = subprocess.Popen(inv_command("test", "a"), cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 1 and f"TEST ERROR (cannot write log {fifo}: it is a named pipe" in out


# ---------------------------------------------------------------- issue 20 item 3: inv killed outright

LEAVES = """#!/bin/sh
# The step's child: it starts a grandchild in a session of its own that ignores SIGTERM, then waits.
setsid sh -c 'trap "" TERM; echo $$ > "$1/grandchild.pid"; while :; do sleep 1; done' sh "$1" &
echo $$ > "$1/child.pid"
exec sleep 1000
"""


@pytest.mark.parametrize("task", ["build", "test", "foreach"])
def test_inv_killed_outright_leaves_no_process_of_its_steps(home, make_repo, tmp_path, task):
    """SIGKILL (the OOM killer, a hard CI cancel) gives inv no chance to clean up: its watchdog kills the steps."""
    from lib.runner import STEP_VAR, processes_tagged

    leaves = tmp_path / "leaves.sh"
    leaves.write_text(LEAVES)
    command = f"sh {leaves} {tmp_path} & wait"
    write_workflows(home, {task: one_step(command)})
    home.add(make_repo("a"), language="make")
    args = inv_command("foreach", command) if task == "foreach" else inv_command(task, "a")
    child = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_files = [tmp_path / "child.pid", tmp_path / "grandchild.pid"]
    try:
        wait_for(lambda: all(p.exists() and p.read_text().strip() for p in pid_files), 60)
        leftovers = [int(p.read_text()) for p in pid_files]
        tagged = set(processes_tagged(STEP_VAR, f"{child.pid}-", prefix=True))
        assert set(leftovers) <= tagged and len(tagged) >= 4, tagged  # the shell, the child, the grandchild, sleeps
        child.kill()
        child.wait(timeout=30)
        wait_for(lambda: not processes_tagged(STEP_VAR, f"{child.pid}-", prefix=True), 60)
        assert not any(process_running(pid) for pid in tagged), "a process of a step outlived the killed inv"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pid in processes_tagged(STEP_VAR, f"{child.pid}-", prefix=True):
            os.kill(pid, signal.SIGKILL)
