"""Build hosts over a real OpenSSH server on 127.0.0.1: build, test, test-all, host keys, dead hosts, timeouts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, git, run_script, stop_when, wait_gone
from tests.sshd_fixtures import free_port, sshd, write_hosts  # noqa: F401  (sshd is a fixture)

PASSING = {"Makefile": "all:\n\t@echo built on $$(hostname) in $$(pwd)\ntest:\n\t@echo all tests passed\n"}
FAILING = {"Makefile": "all:\n\t@echo compile error; exit 2\ntest:\n\t@echo 1 test failed; exit 3\n"}


def log_dir() -> Path:
    return Path(os.environ["ORCHESTRATOR_LOG_DIR"])


def clone_to(workspace: Path, handle) -> Path:
    """The repo as it sits on the build host: a clone in the host's workspace."""
    workspace.mkdir(parents=True, exist_ok=True)
    git(workspace, "clone", "-q", str(handle.remote), handle.path.name)
    return workspace / handle.path.name


def only_on_host(home, sshd, make_repo, tmp_path, name: str, files: dict[str, str], host_fields=None,
                 **repo_fields) -> Path:
    """A repo that exists only on the build host `builder`; returns that host's workspace (tmp_path/remote-ws)."""
    workspace = tmp_path / "remote-ws"
    clone_to(workspace, make_repo(name, files))
    write_hosts(home.path, {"builder": sshd.host_entry(workspace, **(host_fields or {}))})
    home.write_repos([{"name": name, "local": str(tmp_path / "nowhere" / name), "language": "make", **repo_fields}])
    return workspace


def test_build_runs_in_the_repo_on_the_host_and_logs_locally(home, make_repo, inv, sshd, tmp_path):
    remote_ws = only_on_host(home, sshd, make_repo, tmp_path, "staking", PASSING)
    result = inv("build", "staking", "--host", "builder")
    assert result.code == 0, result.out + result.err
    assert "BUILD PASSED (" in result.out
    log = (log_dir() / "orchestrator-build-staking.log").read_text()
    assert f"in {remote_ws / 'staking'}" in log and "on host builder" in log
    entry = home.state("build-results.json")["results"][0]
    assert entry["status"] == "passed" and entry["host"] == "builder" and entry["exit_code"] == 0


def test_failed_test_on_the_host_exits_1_with_the_remote_exit_code(home, make_repo, inv, sshd, tmp_path):
    only_on_host(home, sshd, make_repo, tmp_path, "ledger", FAILING, host="builder")
    result = inv("test", "ledger")  # the repo's own `host` in repos.json
    assert result.code == 1
    assert "TEST FAILED (exit 2, " in result.out  # make's exit code, as locally
    assert "1 test failed" in result.out
    assert home.state("test-results.json")["results"][0]["host"] == "builder"


def test_repo_fields_reach_the_remote_shell_as_data_never_as_code(home, make_repo, inv, sshd, tmp_path):
    marker = tmp_path / "pwned"
    payload = f"x; touch {marker}; $(touch {marker}) `touch {marker}` \"'\\ $HOME\n-n *"
    remote_ws = only_on_host(home, sshd, make_repo, tmp_path, "quoted", PASSING, description=payload,
                             remote=f"' && touch {marker} && echo '")
    (home.path / "config" / "workflows.json").write_text(json.dumps({"workflows": {"describe": {
        "description": "echo the fields", "steps": [
            {"action": "run", "command": "printf '%s|%s|%s\\n' {{repo.description}} {{repo.remote}} \"$PWD\""}]}}}))
    result = inv("workflow", "describe", "quoted", "--host", "builder")
    assert result.code == 0, result.out + result.err
    assert not marker.exists()
    expected = f"{payload}|' && touch {marker} && echo '|{remote_ws / 'quoted'}"
    assert expected in result.out  # echoed as it ran
    assert expected in (log_dir() / "orchestrator-describe-quoted.log").read_text()


def test_missing_repo_directory_on_the_host_is_an_error(home, inv, sshd, tmp_path):
    write_hosts(home.path, {"builder": sshd.host_entry(tmp_path / "empty-ws")})
    home.write_repos([{"name": "ghost", "local": str(tmp_path / "nowhere"), "language": "make"}])
    result = inv("build", "ghost", "--host", "builder")
    assert result.code == 1
    assert f"BUILD ERROR (directory does not exist on the host: {tmp_path / 'empty-ws' / 'ghost'}" in result.out


def test_unknown_host_key_is_refused_then_accepted_with_the_flag(home, make_repo, inv, sshd, tmp_path):
    known_hosts = tmp_path / "empty" / "known_hosts"
    only_on_host(home, sshd, make_repo, tmp_path, "staking", PASSING, {"known_hosts": str(known_hosts)})
    refused = inv("build", "staking", "--host", "builder")
    assert refused.code == 1
    assert "unknown host key for [127.0.0.1]:" in refused.out and "--accept-new-host-key" in refused.out
    assert not known_hosts.exists() and not (log_dir() / "orchestrator-build-staking.log").read_text().count("$ make")
    accepted = inv("build", "staking", "--host", "builder", "--accept-new-host-key")
    assert accepted.code == 0, accepted.out
    assert known_hosts.read_text().split()[1:] == sshd.host_key_pub.split()
    assert inv("build", "staking", "--host", "builder").code == 0  # remembered


def test_a_changed_host_key_is_refused_even_with_accept_new(home, make_repo, inv, sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known_hosts = tmp_path / "known_hosts"
    key_type, key = (other.with_suffix(".pub")).read_text().split()[:2]
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {key_type} {key}\n")
    only_on_host(home, sshd, make_repo, tmp_path, "staking", PASSING, {"known_hosts": str(known_hosts)})
    before = known_hosts.read_text()
    result = inv("build", "staking", "--host", "builder", "--accept-new-host-key")
    assert result.code == 1 and "host key CHANGED" in result.out
    assert known_hosts.read_text() == before


def test_timeout_kills_the_whole_remote_process_group(home, make_repo, inv, sshd, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    hung = {"Makefile": "all:\n\t@echo start\n"
            f"\t@sh -c 'trap \"\" TERM; echo $$$$ > {pidfile}; while :; do sleep 0.1; done' & sleep 60\n"}
    only_on_host(home, sshd, make_repo, tmp_path, "slow", hung)
    started = time.monotonic()
    result = inv("build", "slow", "--host", "builder", "--timeout", "1")
    assert time.monotonic() - started < 20
    assert result.code == 1 and "BUILD TIMEOUT (timed out after 1s" in result.out
    assert home.state("build-results.json")["results"][0]["status"] == "timeout"
    assert wait_gone(int(pidfile.read_text())), "the remote grandchild that ignores SIGTERM survived"


def test_test_all_spreads_repos_over_two_hosts_and_here_one_results_file(home, make_repo, inv, sshd, tmp_path):
    ws_a, ws_b = tmp_path / "ws-a", tmp_path / "ws-b"
    handles = [make_repo(name, FAILING if name == "r4" else PASSING) for name in ("r1", "r2", "r3", "r4", "r5")]
    for handle in handles:  # every host has every repo; where each runs is test-all's choice
        clone_to(ws_a, handle)
        clone_to(ws_b, handle)
    write_hosts(home.path, {"a": sshd.host_entry(ws_a, jobs=2), "b": sshd.host_entry(ws_b, jobs=1)})
    home.write_repos([{"name": h.path.name, "local": str(h.path), "language": "make",
                       **({"host": "b"} if h.path.name == "r5" else {})} for h in handles])
    junit = tmp_path / "junit.xml"
    result = inv("test-all", "--hosts", "a,b,local", "--jobs", "1", "--junit-xml", str(junit))
    assert result.code == 1, result.out + result.err  # r4 fails
    doc = home.state("test-results.json")
    where = {r["repo"]: r["host"] for r in doc["results"]}
    assert set(where.values()) == {"a", "b", "local"} and where["r5"] == "b"
    assert {r["repo"]: r["status"] for r in doc["results"]} == {
        "r1": "passed", "r2": "passed", "r3": "passed", "r4": "failed", "r5": "passed"}
    assert doc["summary"]["total"] == 5 and doc["summary"]["failed"] == 1
    assert "HOST" in result.out and junit.read_text().count("<testcase") == 5
    for name, host in where.items():
        log = (log_dir() / f"orchestrator-test-{name}.log").read_text()
        assert (f"on host {host} " in log) == (host != "local")


def test_test_all_an_unreachable_host_fails_its_repos_and_the_others_carry_on(home, make_repo, inv, sshd, tmp_path):
    ws = tmp_path / "ws"
    handles = [make_repo(name, PASSING) for name in ("r1", "r2", "r3", "r4")]
    for handle in handles:
        clone_to(ws, handle)
    write_hosts(home.path, {"up": sshd.host_entry(ws), "down": sshd.host_entry(ws, port=free_port())})
    home.write_repos([{"name": h.path.name, "local": str(h.path), "language": "make"} for h in handles])
    result = inv("test-all", "--hosts", "up,down")
    assert result.code == 1
    results = home.state("test-results.json")["results"]
    by_host: dict[str, list[dict]] = {}
    for r in results:
        by_host.setdefault(r["host"], []).append(r)
    assert {r["status"] for r in by_host["up"]} == {"passed"} and len(by_host["up"]) == 2
    assert [r["status"] for r in by_host["down"]] == ["error", "error"]
    assert all("host unreachable: down (" in r["reason"] and "Connection refused" in r["reason"]
               for r in by_host["down"])


def test_unknown_host_name_is_a_usage_error(home, make_repo, inv, tmp_path):
    home.write_repos([{"name": "staking", "local": str(make_repo("staking", PASSING).path), "language": "make"}])
    result = inv("test-all", "--hosts", "nope,local")
    assert result.code == 2
    assert result.err.strip() == (f"error: unknown host 'nope' in {home.path / 'config' / 'hosts.toml'}; "
                                  "defined: none (add one with `inv host.add` or edit "
                                  f"{home.path / 'config' / 'hosts.toml'})")


def test_host_check_reports_versions_and_the_exact_reason_for_a_dead_host(home, inv, sshd, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    write_hosts(home.path, {"up": sshd.host_entry(ws), "down": sshd.host_entry(ws, port=free_port()),
                            "stranger": sshd.host_entry(ws, known_hosts=str(tmp_path / "none"))})
    result = inv("host.check")
    assert result.code == 1
    rows = {line.split()[0]: line for line in result.out.splitlines() if line.split()}
    assert " ok " in rows["up"] and str(ws) in rows["up"]
    assert "unreachable: down (" in rows["down"] and "Connection refused" in rows["down"]
    assert "unknown host key" in rows["stranger"]
    assert "up: git git version 2." in result.out and "setsid found" in result.out
    assert inv("host.check", "--name", "up").code == 0


def test_status_on_a_host_reads_the_repos_there(home, make_repo, inv, sshd, tmp_path):
    ws = tmp_path / "ws"
    clean = clone_to(ws, make_repo("clean-one"))
    dirty = clone_to(ws, make_repo("dirty-one"))
    (dirty / "new file.txt").write_text("x")
    (dirty / "README.md").write_text("changed\n")
    behind = make_repo("behind-one")
    clone_to(ws, behind)
    behind.push_from_elsewhere(tmp_path, {"up.txt": "1"})
    git(ws / "behind-one", "fetch", "-q")
    (ws / "plain").mkdir()
    (ws / "a-file").write_text("no repo\n")
    write_hosts(home.path, {"builder": sshd.host_entry(ws)})
    home.write_repos([{"name": n, "local": str(tmp_path / "here" / n)}
                      for n in ("clean-one", "dirty-one", "behind-one", "plain", "gone", "a-file")])
    result = inv("status", "--host", "builder", "--json")
    assert result.code == 1  # plain and gone are errors, as locally
    doc = json.loads(result.out)
    assert doc["host"] == "builder"
    repos = {r["name"]: r for r in doc["repos"]}
    assert repos["clean-one"]["clean"] and repos["clean-one"]["head"] == git(clean, "rev-parse", "HEAD")
    assert repos["clean-one"]["path"] == str(ws / "clean-one")
    assert (repos["dirty-one"]["modified"], repos["dirty-one"]["untracked"], repos["dirty-one"]["dirty"]) == (1, 1, 2)
    assert repos["behind-one"]["behind"] == 1 and repos["behind-one"]["upstream"] == "origin/main"
    assert repos["behind-one"]["last_commit"]["subject"] == "initial"
    assert repos["plain"]["error"] == "not a git repository (no .git)"
    assert repos["gone"]["error"] == "path does not exist" and not repos["gone"]["exists"]
    # as the local scan says it: there, only not a directory
    assert repos["a-file"]["error"] == "path is not a directory" and repos["a-file"]["exists"] is True
    table = inv("status", "--host", "builder")
    assert "1 modified, 1 untracked" in table.out and "+0/-1" in table.out and "(on host builder)" in table.out


def test_status_on_an_unreachable_host_is_an_error_per_repo(home, inv, sshd, tmp_path):
    write_hosts(home.path, {"down": sshd.host_entry(tmp_path, port=free_port())})
    home.write_repos([{"name": "r1", "local": str(tmp_path / "r1")}])
    result = inv("status", "--host", "down")
    assert result.code == 1 and "error: host unreachable: down (" in result.out
    [row] = json.loads(inv("status", "--host", "down", "--json").out)["repos"]
    assert row["error"].startswith("host unreachable: down (") and row["exists"] is True  # not read, not missing


def test_a_host_with_more_jobs_than_sshd_sessions_per_connection_runs_them_all(home, make_repo, inv, sshd, tmp_path):
    ws = tmp_path / "ws"
    slow = {"Makefile": "all:\n\t@true\ntest:\n\t@sleep 0.5; echo ok\n"}
    names = [f"r{i}" for i in range(12)]
    for name in names:
        clone_to(ws, make_repo(name, slow))
    write_hosts(home.path, {"big": sshd.host_entry(ws, jobs=12)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n), "language": "make"} for n in names])
    result = inv("test-all", "--hosts", "big")
    assert result.code == 0, result.out + result.err
    assert home.state("test-results.json")["summary"]["passed"] == 12


def test_language_is_detected_on_the_host_and_a_tool_missing_there_is_a_skip(home, make_repo, inv, sshd, tmp_path):
    ws = tmp_path / "ws"
    clone_to(ws, make_repo("tool", {"Makefile": "all:\n\t@true\n"}))
    (home.path / "config").mkdir(parents=True, exist_ok=True)
    (home.path / "config" / "workflows.json").write_text(json.dumps({"workflows": {"build": {
        "description": "b", "steps": [{"action": "run", "command": "no-such-tool-xyz --version",
                                       "condition": "repo.language == 'make'"}]}}}))
    write_hosts(home.path, {"builder": sshd.host_entry(ws)})
    home.write_repos([{"name": "tool", "local": str(tmp_path / "nowhere")}])  # no language: unknown here
    result = inv("build", "tool", "--host", "builder")
    assert result.code == 0, result.out
    assert "BUILD SKIPPED (no-such-tool-xyz not found on PATH on the host" in result.out
    entry = home.state("build-results.json")["results"][0]
    assert entry["language"] == "make" and entry["status"] == "skipped"


def test_a_process_left_behind_on_the_host_is_killed_when_the_command_ends(home, make_repo, inv, sshd, tmp_path):
    pidfile = tmp_path / "daemon.pid"
    leaves = {"Makefile": f"all:\n\t@sh -c 'echo $$$$ > {pidfile}; exec sleep 60' >/dev/null 2>&1 &\n"
                          f"\t@sh -c 'while [ ! -s {pidfile} ]; do sleep 0.05; done; echo started'\n"}
    only_on_host(home, sshd, make_repo, tmp_path, "leaves", leaves)
    result = inv("build", "leaves", "--host", "builder")
    assert result.code == 0, result.out
    assert wait_gone(int(pidfile.read_text())), "the process the build left running on the host survived"


def test_big_binary_output_reaches_the_local_log_byte_for_byte(home, make_repo, inv, sshd, tmp_path):
    noisy = {"Makefile": "all:\n\t@head -c 3000000 /dev/zero | tr '\\0' '\\377'\n"}
    only_on_host(home, sshd, make_repo, tmp_path, "noisy", noisy)
    assert inv("build", "noisy", "--host", "builder").code == 0
    log = (log_dir() / "orchestrator-build-noisy.log").read_bytes()
    assert log.count(b"\xff") == 3_000_000


def test_ctrl_c_kills_the_remote_process_group(home, make_repo, sshd, tmp_path):
    pidfile = tmp_path / "child.pid"
    sleeper = {"Makefile": f"all:\n\t@sh -c 'echo $$$$ > {pidfile}; exec sleep 60'\n"}
    only_on_host(home, sshd, make_repo, tmp_path, "slow", sleeper)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "build", "slow",
                             "--host", "builder"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert wait_gone(int(pidfile.read_text())), "the remote command survived Ctrl-C"


def test_a_chatty_login_shell_does_not_confuse_a_relative_workspace(home, make_repo, inv, sshd, tmp_path):
    login_dir = Path(os.path.expanduser(f"~{sshd.user}"))  # sshd starts sessions in the user's passwd home
    (sshd.remote_home / ".bashrc").write_text("echo 'welcome to the build farm'\n")
    ws = tmp_path / "ws"
    clone_to(ws, make_repo("staking", PASSING))
    relative = os.path.relpath(ws, login_dir)
    write_hosts(home.path, {"builder": sshd.host_entry(Path(relative))})
    home.write_repos([{"name": "staking", "local": str(tmp_path / "nowhere")}])  # language detected there
    result = inv("build", "staking", "--host", "builder")
    assert result.code == 0, result.out
    log = (log_dir() / "orchestrator-build-staking.log").read_text()
    assert f"$ cd {ws / 'staking'}" in log and "welcome to the build farm" in log


@pytest.fixture
def silent_port():
    """A port where the kernel completes the TCP handshake and nobody ever speaks."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        yield silent.getsockname()[1]


@pytest.mark.parametrize("dead,reason", [("closed", "cannot connect: Connection refused"),
                                         ("silent", "no SSH banner within 1s")])
def test_a_dead_host_fails_fast_with_the_exact_reason(dead, reason, home, inv, sshd, tmp_path, silent_port):
    port = free_port() if dead == "closed" else silent_port
    write_hosts(home.path, {"dead": sshd.host_entry(tmp_path, port=port, connect_timeout=1)})
    home.write_repos([{"name": "staking", "local": str(tmp_path / "nowhere"), "language": "make"}])
    started = time.monotonic()
    result = inv("build", "staking", "--host", "dead")
    assert time.monotonic() - started < 10
    assert result.code == 1 and "BUILD ERROR (host unreachable: dead (" in result.out
    assert reason in result.out


def test_a_key_the_host_does_not_accept_is_an_authentication_failure(home, inv, sshd, tmp_path):
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    write_hosts(home.path, {"builder": sshd.host_entry(tmp_path, key_file=str(stranger))})
    result = inv("host.check")
    assert result.code == 1
    assert "unreachable: builder (" in result.out and "authentication failed with key" in result.out


def test_workflow_all_runs_each_repo_on_its_own_host(home, make_repo, inv, sshd, tmp_path):
    ws = tmp_path / "ws"
    there, here = make_repo("there", PASSING), make_repo("here", PASSING)
    clone_to(ws, there)
    write_hosts(home.path, {"builder": sshd.host_entry(ws)})
    home.write_repos([{"name": "there", "local": str(tmp_path / "nowhere"), "language": "make", "host": "builder"},
                      {"name": "here", "local": str(here.path), "language": "make"}])
    dry = inv("workflow-all", "build", "--dry-run")
    assert f"there: would run build on host builder in {ws / 'there'}" in dry.out
    assert f"cd {here.path} && make" in dry.out
    result = inv("workflow-all", "build")
    assert result.code == 0, result.out + result.err
    rows = {line.split()[0]: line.split()[2] for line in result.out.splitlines()[2:] if line.strip()}
    assert rows == {"there": "builder", "here": "local"}
    assert f"in {ws / 'there'}" in (log_dir() / "orchestrator-build-there.log").read_text()


def test_the_test_all_script_spreads_over_hosts_like_inv(home, make_repo, sshd, tmp_path):
    ws = tmp_path / "ws"
    clone_to(ws, make_repo("there", PASSING))
    here = make_repo("here", PASSING)
    write_hosts(home.path, {"builder": sshd.host_entry(ws)})
    home.write_repos([{"name": "there", "local": str(tmp_path / "nowhere"), "language": "make", "host": "builder"},
                      {"name": "here", "local": str(here.path), "language": "make"}])
    result = run_script("run_all_tests.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {r["repo"]: r["host"] for r in home.state("test-results.json")["results"]} == {
        "there": "builder", "here": "local"}
    bad = run_script("run_all_tests.py", "--hosts", "nope", cwd=tmp_path)
    assert bad.returncode == 2 and "error: unknown host 'nope'" in bad.stderr


def test_a_stopped_test_all_over_a_host_names_every_repo_in_its_junit(home, make_repo, sshd, tmp_path):
    # As a stopped run here: CI's report says the run was interrupted, and which repos never ran or were killed.
    from xml.etree import ElementTree

    pidfile = tmp_path / "hung.pid"
    ws = tmp_path / "ws"
    suites = {"r1": PASSING,
              "r2": {"Makefile": f"test:\n\t@sh -c 'echo $$$$ > {pidfile}; exec sleep 60'\n"},
              "r3": PASSING}
    handles = [make_repo(name, files) for name, files in suites.items()]
    for handle in handles:
        clone_to(ws, handle)
    write_hosts(home.path, {"builder": sshd.host_entry(ws, jobs=1)})
    home.write_repos([{"name": h.path.name, "local": str(h.path), "language": "make", "host": "builder"}
                      for h in handles])
    report = tmp_path / "junit.xml"
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "test-all",
                             "--junit-xml", str(report)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, err = stop_when(proc, lambda: pidfile.exists() and pidfile.read_text().strip(), signal.SIGTERM, seconds=90)
    assert proc.returncode == 128 + signal.SIGTERM, err
    suite = ElementTree.parse(report).getroot().find("testsuite")
    assert suite.get("name") == "orchestrator test-all (interrupted by SIGTERM)", ElementTree.tostring(suite)
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert list(cases) == ["r1", "r2", "r3"]
    assert cases["r1"].find("failure") is None and cases["r1"].find("error") is None
    assert cases["r2"].find("error").get("message") == "interrupted"
    assert cases["r3"].find("skipped") is not None, ElementTree.tostring(cases["r3"])
    assert cases["r3"].find("skipped").get("message") == "not run: interrupted"
    assert all("host: builder" in case.find("system-out").text for case in cases.values())
    assert wait_gone(int(pidfile.read_text())), "the remote test survived the stop"
