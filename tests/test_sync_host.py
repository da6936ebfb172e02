"""`sync-all --host NAME` over a real OpenSSH server on 127.0.0.1: lib.sync itself runs on the host."""
from __future__ import annotations

import json
from pathlib import Path

from lib.statefile import one_run_at_a_time
from tests.conftest import git, run_script
from tests.test_hosts_remote import clone_to as on_host, log_dir
from tests.sshd_fixtures import free_port, sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.sync_fixtures import full_snapshot, outside_remote_tracking, ref


def setup(home, sshd, tmp_path, handles, **host_fields) -> Path:
    """Host `builder` with a clone of each repo in its workspace; repos.json points elsewhere locally."""
    workspace = tmp_path / "host ws '$(q)"  # quoting is tried by every test
    for handle in handles:
        on_host(workspace, handle)
    write_hosts(home.path, {"builder": sshd.host_entry(workspace, **host_fields)})
    home.write_repos([{"name": h.path.name, "local": str(tmp_path / "here" / h.path.name), "remote": str(h.remote)}
                      for h in handles])
    return workspace


def push_new_commit(handle, name: str = "upstream.txt") -> str:
    handle.commit({name: "new upstream work\n"}, "upstream work")
    handle.git("push", "-q", "origin", "main")
    return handle.git("rev-parse", "HEAD")


def results(home) -> dict[str, dict]:
    return {r["repo"]: r for r in home.state("sync-results.json")["results"]}


def test_behind_repo_on_the_host_is_fast_forwarded_as_locally(home, make_repo, inv, sshd, tmp_path):
    handle = make_repo("staking")
    workspace = setup(home, sshd, tmp_path, [handle])
    local = on_host(tmp_path / "here", handle)  # the same repo here, at the same commit
    target = push_new_commit(handle)
    result = inv("sync-all", "--host", "builder")
    assert result.code == 0, result.out + result.err
    remote_entry = results(home)["staking"]
    assert remote_entry["host"] == "builder" and remote_entry["status"] == "updated"
    assert ref(workspace / "staking", "refs/heads/main") == target
    assert git(workspace / "staking", "rev-list", "--merges", "--count", "HEAD") == "0"
    # The same sync here: the same outcome and the same refs.
    assert inv("sync-all").code == 0
    local_entry = results(home)["staking"]
    assert "host" not in local_entry
    for key in ("status", "reason", "branch", "before", "after", "checked_out"):
        assert remote_entry[key] == local_entry[key], key
    assert full_snapshot(local)["refs"] == full_snapshot(workspace / "staking")["refs"]
    assert "updated" in result.out and "synced 1 repos" in result.out


def test_dirty_and_diverged_repos_on_the_host_are_skipped_and_keep_their_work(home, make_repo, inv, sshd, tmp_path):
    dirty, diverged = make_repo("dirty"), make_repo("diverged")
    workspace = setup(home, sshd, tmp_path, [dirty, diverged])
    push_new_commit(dirty)
    push_new_commit(diverged)
    (workspace / "dirty" / "README.md").write_text("uncommitted edit\n")
    git(workspace / "diverged", "commit", "-q", "--allow-empty", "-m", "local only")
    before = {name: outside_remote_tracking(full_snapshot(workspace / name)) for name in ("dirty", "diverged")}
    result = inv("sync-all", "--host", "builder")
    assert result.code == 0, result.out + result.err
    entries = results(home)
    assert entries["dirty"]["status"] == "skipped" and entries["dirty"]["reason"].startswith("dirty:")
    assert entries["diverged"]["status"] == "skipped"
    assert entries["diverged"]["reason"] == "diverged: ahead 1, behind 1"
    for name in ("dirty", "diverged"):
        assert outside_remote_tracking(full_snapshot(workspace / name)) == before[name]
    assert (workspace / "dirty" / "README.md").read_text() == "uncommitted edit\n"


def test_the_hosts_logs_land_in_the_local_log_dir(home, make_repo, inv, sshd, tmp_path):
    handle = make_repo("ledger")
    setup(home, sshd, tmp_path, [handle])
    push_new_commit(handle)
    assert inv("sync-all", "--host", "builder").code == 0
    log = log_dir() / "orchestrator-sync-ledger.log"
    text = log.read_text()
    assert "$ git fetch" in text and "outcome: ledger: updated" in text
    assert results(home)["ledger"]["log"] == str(log)


def test_unknown_host_key_is_refused_and_nothing_runs_until_accepted(home, make_repo, inv, sshd, tmp_path):
    handle = make_repo("staking")
    empty_known_hosts = tmp_path / "empty_known_hosts"
    empty_known_hosts.write_text("")
    workspace = setup(home, sshd, tmp_path, [handle], known_hosts=str(empty_known_hosts))
    push_new_commit(handle)
    before = full_snapshot(workspace / "staking")
    result = inv("sync-all", "--host", "builder")
    assert result.code == 1
    entry = results(home)["staking"]
    assert entry["status"] == "failed" and "unknown host key" in entry["reason"] and entry["host"] == "builder"
    assert full_snapshot(workspace / "staking") == before  # not even fetched
    assert not (workspace / ".orchestrator").exists() and not (sshd.remote_home / ".cache").exists()
    assert empty_known_hosts.read_text() == ""
    assert inv("sync-all", "--host", "builder", "--accept-new-host-key").code == 0  # the user's opt-in
    assert results(home)["staking"]["status"] == "updated"
    assert sshd.host_key_pub in empty_known_hosts.read_text()


def test_closed_port_fails_every_repo_with_the_reason(home, make_repo, tmp_path, sshd):
    first, second = make_repo("alpha"), make_repo("beta")
    setup(home, sshd, tmp_path, [first, second], port=free_port())
    result = run_script("sync_all_repos.py", "--host", "builder", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    entries = results(home)
    for name in ("alpha", "beta"):
        assert entries[name]["status"] == "failed"
        assert entries[name]["reason"].startswith("host unreachable: builder (")
        assert "cannot connect" in entries[name]["reason"]
    assert "Traceback" not in result.stderr and "failed" in result.stdout


def test_a_second_sync_of_the_same_host_workspace_refuses(home, make_repo, inv, sshd, tmp_path):
    handle = make_repo("staking")
    workspace = setup(home, sshd, tmp_path, [handle])
    target = push_new_commit(handle)
    before = ref(workspace / "staking", "refs/heads/main")
    # The lock on the host is the one a running sync (from any machine) holds.
    with one_run_at_a_time(workspace / ".orchestrator" / "state" / "sync.lock", "sync-all"):
        result = inv("sync-all", "--host", "builder")
    assert result.code == 2
    assert "on host builder: sync-all is already running in this workspace" in result.err
    assert ref(workspace / "staking", "refs/heads/main") == before
    assert inv("sync-all", "--host", "builder").code == 0  # once it is free
    assert ref(workspace / "staking", "refs/heads/main") == target


def test_lib_is_uploaded_once_privately_and_reused(home, make_repo, inv, sshd, tmp_path):
    handle = make_repo("staking")
    setup(home, sshd, tmp_path, [handle])
    assert inv("sync-all", "--host", "builder").code == 0
    cache = sshd.remote_home / ".cache" / "orchestrator"
    copies = list(cache.iterdir())
    assert len(copies) == 1 and copies[0].name.startswith("lib-")
    assert (cache.stat().st_mode & 0o777) == 0o700
    assert (copies[0] / "lib" / "sync.py").read_bytes() == (Path(__file__).parent.parent / "lib" / "sync.py").read_bytes()
    assert inv("sync-all", "--host", "builder", "--dry-run").code == 0
    assert list(cache.iterdir()) == copies  # reused, no temp dirs left


def test_python_older_than_3_11_on_the_host_is_named_with_the_version_found():
    from lib.remote.sync import python_problem

    assert python_problem("3.8.10", "builder") == "python3 >= 3.11 needed on host builder (found 3.8.10)"
    assert python_problem("", "builder") == "python3 >= 3.11 needed on host builder (found none)"
    assert python_problem("Python?", "b") == "python3 >= 3.11 needed on host b (found Python?)"
    assert python_problem("3.11.2", "builder") is None and python_problem("3.13.0", "builder") is None


def test_the_driver_runs_sync_with_the_standard_library_alone(make_repo, tmp_path):
    """What runs on the host imports nothing but the standard library and the uploaded lib/.

    Run from a copy made of the snapshot alone, as the host's cache is: lib/'s modules without the
    build-host package (lib/remote/ needs fabric and is never uploaded), so a sync that came to need
    one of its modules fails here.
    """
    import subprocess
    import sys

    from lib.config import Repo
    from lib.remote.sync import DRIVER, LibSnapshot, host_repos_json

    snapshot = LibSnapshot.read()
    assert "sync.py" in snapshot.files and "__init__.py" in snapshot.files
    assert not {"connection.py", "fleet.py", "hosts.py", "known_hosts.py"} & set(snapshot.files)
    copy = tmp_path / "host-copy"
    (copy / "lib").mkdir(parents=True)
    for name, data in snapshot.files.items():
        (copy / "lib" / name).write_bytes(data)
    handle = make_repo("solo")
    workspace = tmp_path / "ws"
    on_host(workspace, handle)
    target = push_new_commit(handle)
    home = workspace / ".orchestrator"
    (home / "config").mkdir(parents=True)
    (home / "config" / "repos.json").write_text(json.dumps(host_repos_json([Repo("solo", Path("x"))], str(workspace))))
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        top = name.split('.')[0]\n"
               "        if top != 'lib' and top not in sys.stdlib_module_names:\n"
               "            raise ImportError('blocked third-party import: ' + name)\n"
               "sys.meta_path.insert(0, Block())\n")
    args = {"root": str(copy), "manifest": snapshot.manifest, "home": str(home), "mark": "MARK",
            "run_var": "ORCHESTRATOR_SYNC_RUN",
            "report": str(tmp_path / "report.json"), "net_jobs": 2, "timeout": 30, "clone_missing": False,
            "dry_run": False}
    result = subprocess.run([sys.executable, "-I", "-B", "-c", blocker + DRIVER, json.dumps(args)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("MARK result "))
    outcome = json.loads(line[len("MARK result "):])["outcomes"][0]
    assert outcome["status"] == "updated" and outcome["after"] == target
    assert ref(workspace / "solo", "refs/heads/main") == target
    streamed = next(ln for ln in result.stdout.splitlines() if ln.startswith("MARK outcome "))
    assert json.loads(streamed[len("MARK outcome "):]) == outcome


def test_ctrl_c_here_kills_the_sync_running_on_the_host(home, make_repo, sshd, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, stop_when, wait_gone
    from tests.sync_fixtures import wait_for_file

    handle = make_repo("slow")
    workspace = setup(home, sshd, tmp_path, [handle])
    push_new_commit(handle)
    pid_file = tmp_path / "upload-pack.pid"
    # The host's fetch hangs in its upload-pack, which says its pid first.
    git(workspace / "slow", "config", "remote.origin.uploadpack", f"echo $$ > {pid_file}; exec sleep 60 #")
    before = full_snapshot(workspace / "slow")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py"), "--host", "builder"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = stop_when(proc, lambda: wait_for_file(pid_file))
    hung = int(pid_file.read_text().split()[0])
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert wait_gone(hung, 10), "the fetch on the host outlived the run"
    assert outside_remote_tracking(full_snapshot(workspace / "slow")) == outside_remote_tracking(before)


def test_an_unknown_host_name_is_one_line_exit_2(home, make_repo, inv, sshd, tmp_path):
    setup(home, sshd, tmp_path, [make_repo("staking")])
    result = inv("sync-all", "--host", "nosuch")
    assert result.code == 2
    assert result.err.startswith("error: unknown host 'nosuch'") and "defined: builder" in result.err
    assert not (home.path / "state" / "sync-results.json").exists()
