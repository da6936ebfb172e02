"""One recorder for runs here and on build hosts: the same command ends in the same outcome, whichever ran it."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import git
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
              {"status": "timeout", "exit_code": None, "reason": "timed out after 3s", "counts": None}),
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
        result = inv("test-all", "--timeout", "3", "--json", *flags)
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
