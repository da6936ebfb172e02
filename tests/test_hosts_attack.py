"""Build hosts attacked: signals, host keys, dead and hostile hosts, odd input; every verdict matches the host."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from lib.hosts import load_hosts
from tests.conftest import ROOT, wait_gone
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.test_honest_runs import PASSING, hanging_repo, inv_command, start, wait_for
from tests.test_hosts_remote import clone_to


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
@pytest.mark.parametrize("entry", ["inv", "script"])
def test_a_signal_during_test_all_over_a_host_stops_both_sides_and_keeps_what_finished(
        home, make_repo, sshd, tmp_path, signum, entry):
    ws = tmp_path / "ws"
    there, here = tmp_path / "there.pid", tmp_path / "here.pid"
    clone_to(ws, make_repo("quick-there", PASSING))
    clone_to(ws, hanging_repo(make_repo, "hang-there", there))
    write_hosts(home.path, {"h1": sshd.host_entry(ws, jobs=2)})
    home.write_repos([{"name": "quick-there", "local": str(tmp_path / "nowhere" / "q"), "language": "make", "host": "h1"},
                      {"name": "hang-there", "local": str(tmp_path / "nowhere" / "h"), "language": "make", "host": "h1"},
                      {"name": "quick-here", "local": str(make_repo("quick-here", PASSING).path),
                       "language": "make"},
                      {"name": "hang-here", "local": str(hanging_repo(make_repo, "hang-here", here).path),
                       "language": "make"}])
    args = (inv_command("test-all", "--hosts", "h1,local", "--jobs", "2") if entry == "inv"
            else [sys.executable, str(ROOT / "scripts" / "run_all_tests.py"), "--hosts", "h1,local", "--jobs", "2"])
    child, err = start(args, tmp_path)
    try:
        wait_for(lambda: child.poll() is None and there.exists() and here.exists()
                 and b"quick-there: passed" in err.read_bytes() and b"quick-here: passed" in err.read_bytes())
        child.send_signal(signum)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    text = err.read_text()
    assert child.returncode == 128 + signum, text
    assert "Traceback" not in text
    assert text.splitlines()[-1] == f"interrupted: stopped 2 running commands ({signal.Signals(signum).name})"
    assert wait_gone(int(there.read_text()), 2), "the remote test outlived the interrupted run"
    assert wait_gone(int(here.read_text()), 2), "the local test outlived the interrupted run"
    results = home.state("test-results.json")["results"]
    assert [(r["repo"], r["status"], r["host"]) for r in results] == [
        ("quick-here", "passed", "local"), ("quick-there", "passed", "h1")]


def sshd_processes(sshd) -> list[int]:
    """The fixture's sshd and every session process under it (the host, as far as ssh goes)."""
    listener = int((sshd.root / "sshd.pid").read_text())
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [listener]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [c for c in children.get(pid, []) if Path(f"/proc/{c}/comm").read_text().strip().startswith("sshd")]
    return found


def one_on_host(home, sshd, make_repo, tmp_path, name, files, **host_fields) -> Path:
    ws = tmp_path / "ws"
    clone_to(ws, make_repo(name, files))
    write_hosts(home.path, {"h1": sshd.host_entry(ws, **host_fields)})
    home.write_repos([{"name": name, "local": str(tmp_path / "nowhere" / name), "language": "make", "host": "h1"}])
    return ws


def test_a_host_that_freezes_mid_command_times_out_and_says_the_kill_failed(home, make_repo, inv, sshd, tmp_path):
    started_file = tmp_path / "started"
    one_on_host(home, sshd, make_repo, tmp_path, "frozen",
                {"Makefile": f"test:\n\t@touch {started_file}; exec sleep 30\n"}, connect_timeout=1)
    frozen: list[int] = []

    def freeze() -> None:
        wait_for(started_file.exists)
        frozen.extend(sshd_processes(sshd))
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)

    thread = threading.Thread(target=freeze)
    thread.start()
    try:
        began = time.monotonic()
        result = inv("test", "frozen", "--timeout", "2")
        took = time.monotonic() - began
    finally:
        thread.join()
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert took < 20, f"a frozen host hung the run for {took:.0f}s"
    assert result.code == 1, result.out
    # The kill could not reach the frozen host: the verdict says so rather than "killed".
    assert "TEST TIMEOUT (timed out after 2s; may still run on the host (kill failed: " in result.out
    log = (Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-test-frozen.log").read_text()
    assert "killed after" not in log and "could not kill it on the host, it may still run" in log


@pytest.mark.parametrize("how", ["setsid", "setsid env -i"], ids=["marked", "unmarked"])
def test_a_daemon_that_leaves_the_group_and_keeps_writing_does_not_hold_the_run(how, home, make_repo, inv, sshd,
                                                                                tmp_path):
    """Marked (its environment kept) it is killed, as locally; unmarked it cannot be found: the log says so."""
    pidfile = tmp_path / "daemon.pid"
    one_on_host(home, sshd, make_repo, tmp_path, "daemon", {"Makefile": (
        f"test:\n\t@{how} /bin/sh -c 'echo $$$$ > {pidfile}; while :; do echo tick; sleep 0.1; done' &\n"
        f"\t@sh -c 'while [ ! -s {pidfile} ]; do sleep 0.05; done; echo started'\n")})
    began = time.monotonic()
    result = inv("test", "daemon", "--timeout", "20")
    took = time.monotonic() - began
    try:
        assert took < 15, f"took {took:.0f}s: {result.out}"
        assert result.code == 0 and "TEST PASSED" in result.out, result.out
        log = (Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-test-daemon.log").read_text()
        if how == "setsid":
            assert wait_gone(int(pidfile.read_text()), 2), "the daemon the test left on the host survived"
            assert "warning" not in log
        else:
            assert "still holds its output on the host; it was not killed" in log
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_host_add_takes_relative_paths_from_where_they_were_typed(home, inv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = inv("host.add", "--name", "b1", "--host", "h", "--workspace", "w", "--key-file", "keys/id",
                 "--known-hosts", "kh")
    assert result.code == 0, result.err
    host = load_hosts(home.path / "config" / "hosts.toml")["b1"]
    assert (host.key_file, host.known_hosts) == (tmp_path / "keys" / "id", tmp_path / "kh")
