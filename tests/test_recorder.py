"""One recorder for runs here and on build hosts: the same command ends in the same outcome, whichever ran it."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import git, require_tool
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)

# name -> (the repo's test command, what the results file must say of it, here and on the host alike)
CASES = {
    "passes": ("sh -c 'echo \"3 passed in 0.01s\"'",
               {"status": "passed", "exit_code": 0, "reason": None,
                "counts": {"passed": 3, "failed": 0, "skipped": 0, "errors": 0}}),
    "fails": ("sh -c 'echo \"1 failed, 2 passed in 0.02s\"; exit 3'",
              {"status": "failed", "exit_code": 3, "reason": "exit 3",
               "counts": {"passed": 2, "failed": 1, "skipped": 0, "errors": 0}}),
    "quiet-fail": ("sh -c 'exit 1'",
                   {"status": "failed", "exit_code": 1, "reason": "exit 1", "counts": None}),
    "hangs": ("sh -c 'echo started; sleep 60'",
              {"status": "timeout", "exit_code": None, "reason": "timed out after 10s", "counts": None}),
    # the OOM killer, say: the summary in its log is not this run's; on a host, setsid -w says the signal
    "killed": ('echo "5 passed in 0.01s"; kill -9 $$',
               {"status": "failed", "exit_code": 137, "reason": "killed by SIGKILL", "counts": None}),
    "group-killed": ('echo "5 passed in 0.01s"; kill -9 0',
                     {"status": "failed", "exit_code": 137, "reason": "killed by SIGKILL", "counts": None}),
    "exits-9": ('echo "5 passed in 0.01s"; exit 9',  # an exit code that is a signal's number is no signal
                {"status": "failed", "exit_code": 9, "reason": "exit 9",
                 "counts": {"passed": 5, "failed": 0, "skipped": 0, "errors": 0}}),
    "pipe-log": ("sh -c 'echo never runs'",  # a named pipe where the log goes: an error, never a wait
                 {"status": "error", "exit_code": None, "counts": None}),
}


def log_dir() -> Path:
    return Path(os.environ["ORCHESTRATOR_LOG_DIR"])


def verdict_lines(log: Path) -> list[str]:
    """What the recorder wrote after the command's output: the header's and `$` lines say where it ran."""
    return [line for line in log.read_text().splitlines()[1:] if not line.startswith("$ ")]


def test_the_same_command_ends_in_the_same_outcome_here_and_on_a_host(home, make_repo, inv, sshd, tmp_path):
    remote_ws = tmp_path / "remote-ws"
    remote_ws.mkdir()
    handles = {name: make_repo(name) for name in CASES}
    for name, handle in handles.items():
        git(remote_ws, "clone", "-q", str(handle.remote), name)
    write_hosts(home.path, {"builder": sshd.host_entry(remote_ws)})
    home.write_repos([{"name": name, "local": str(handle.path), "language": "make",
                       "commands": {"test": CASES[name][0]}} for name, handle in handles.items()])
    pipe = log_dir() / "orchestrator-test-pipe-log.log"
    pipe.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(pipe)

    outcomes, logs = {}, {}
    for where, flags in (("local", []), ("builder", ["--hosts", "builder"])):
        result = inv("test-all", "--timeout", "10", "--json", *flags)  # generous: a busy machine
        assert result.code == 1, result.out + result.err
        outcomes[where] = {r["repo"]: r for r in json.loads(result.out)["results"]}
        assert {r["host"] for r in outcomes[where].values()} == {where}
        logs[where] = {name: verdict_lines(log_dir() / f"orchestrator-test-{name}.log")
                       for name in CASES if name not in ("pipe-log", "hangs")}

    for name, (_, expected) in CASES.items():
        for where in ("local", "builder"):
            got = {key: outcomes[where][name][key] for key in expected}
            assert got == expected, f"{name} on {where}"
    assert outcomes["local"]["pipe-log"]["reason"] == outcomes["builder"]["pipe-log"]["reason"] \
        == f"cannot write log {pipe}: it is a named pipe (opening it would wait for a reader)"
    assert logs["local"] == logs["builder"]
    assert pipe.is_fifo()


def test_setsids_word_of_a_signal_is_told_from_a_commands_own_exit():
    # run_remote's reading of `setsid -w` (bare wait status, a line on our private stream): its doctests.
    import doctest

    import lib.remote.connection

    assert doctest.testmod(lib.remote.connection).failed == 0


def test_a_runs_log_is_opened_by_the_one_opener_of_regular_files(monkeypatch, tmp_path):
    # statefile.open_regular refuses what is no file (a FIFO's wait, a disk); the log's opening must not copy it.
    import lib.batch
    import lib.statefile

    opened = []

    def spy(path, *args, **kwargs):
        opened.append(Path(path))
        return lib.statefile.open_regular(path, *args, **kwargs)

    monkeypatch.setattr(lib.batch, "open_regular", spy)
    log = tmp_path / "logs" / "run.log"
    log.parent.mkdir()
    log.write_text("an earlier run's log\n")
    with lib.batch.open_log(log) as opened_log:
        opened_log.write(b"this run\n")
    assert log.read_text() == "this run\n" and opened == [log]
    with lib.batch.open_log(Path(os.devnull)) as discarded:  # a character device is a log too: /dev/null
        discarded.write(b"gone\n")


def test_an_append_only_log_is_the_runs_error_not_a_traceback(home, make_repo, inv, tmp_path):
    # `chattr +a`: it opens for appending, but cannot be emptied for the new run.
    require_tool("chattr")
    home.add(make_repo("a", {"Makefile": "test:\n\t@echo ran\n"}), language="make")
    log = log_dir() / "orchestrator-test-a.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("an earlier run's log\n")
    if subprocess.run(["chattr", "+a", str(log)], capture_output=True).returncode != 0:
        pytest.skip("this file system (or user) has no append-only files")
    try:
        result = inv("test", "a")
        assert log.read_text() == "an earlier run's log\n"
    finally:
        subprocess.run(["chattr", "-a", str(log)], check=True)
    assert result.code == 1, result.out + result.err
    assert f"TEST ERROR (cannot write log {log}: Operation not permitted" in result.out, result.out
    entry = home.state("test-results.json")["results"][0]
    assert entry["status"] == "error" and entry["reason"] == f"cannot write log {log}: Operation not permitted"
