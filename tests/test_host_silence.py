"""`sync-all --host` and `status --host` when the host goes quiet: a silent connection, a hung login shell.

The "host" is this machine (the sshd fixture): what a run leaves there shows in /proc.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.sync_fixtures import full_snapshot
from tests.test_hosts_remote import clone_to
from tests.test_hosts_robust import host_processes, nothing_left_on_the_host
from tests.test_sync_host import push_new_commit, results, setup


def hang_logins_counted(sshd, lock: Path, logins: Path) -> None:
    """A stale lock in a shell start-up file: every login waits while it exists (and says it came)."""
    (sshd.remote_home / ".bashrc").write_text(f"echo login >> {logins}\nwhile [ -e {lock} ]; do sleep 0.1; done\n")


def test_status_on_a_host_whose_login_shell_hangs_names_the_timeout_once_per_repo_without_a_login_each(
        home, make_repo, inv, sshd, tmp_path):
    ws = tmp_path / "ws"
    names = [f"r{i}" for i in range(4)]
    for name in names:
        clone_to(ws, make_repo(name))
    write_hosts(home.path, {"b1": sshd.host_entry(ws, connect_timeout=1)})
    home.write_repos([{"name": n, "local": str(tmp_path / "nowhere" / n)} for n in names])
    lock, logins = tmp_path / "stale.lock", tmp_path / "logins"
    lock.touch()
    hang_logins_counted(sshd, lock, logins)
    result = inv("status", "--host", "b1", "--json", "--jobs", "1")
    assert result.code == 1, result.out + result.err
    errors = {r["name"]: r["error"] for r in json.loads(result.out)["repos"]}
    assert errors == {n: "host b1: the login shell did not answer within 3 s" for n in names}, errors
    assert "timed out" not in result.out
    assert logins.read_text().count("login") == 1  # one repo found out; the others were told at once
    lock.unlink()
    assert nothing_left_on_the_host(sshd), [Path(f"/proc/{p}/cmdline").read_bytes() for p in host_processes(sshd)]


def test_sync_on_a_host_whose_login_shell_hangs_names_the_timeout_and_runs_nothing(home, make_repo, inv, sshd,
                                                                                  tmp_path):
    handles = [make_repo("api"), make_repo("web")]
    workspace = setup(home, sshd, tmp_path, handles, connect_timeout=1)
    for handle in handles:
        push_new_commit(handle)
    before = {h.path.name: full_snapshot(workspace / h.path.name) for h in handles}
    lock, logins = tmp_path / "stale.lock", tmp_path / "logins"
    lock.touch()
    hang_logins_counted(sshd, lock, logins)
    result = inv("sync-all", "--host", "builder")
    assert result.code == 1, result.out + result.err
    said = "host builder: the login shell did not answer within 3 s"
    assert {n: (e["status"], e["reason"]) for n, e in results(home).items()} == \
        {"api": ("failed", said), "web": ("failed", said)}
    assert "within 30s" not in result.out + result.err and "Traceback" not in result.err
    lock.unlink()
    assert nothing_left_on_the_host(sshd), [Path(f"/proc/{p}/cmdline").read_bytes() for p in host_processes(sshd)]
    assert logins.read_text().count("login") == 1
    assert {h.path.name: full_snapshot(workspace / h.path.name) for h in handles} == before
    assert not (sshd.remote_home / ".cache" / "orchestrator").exists()  # nothing was uploaded
