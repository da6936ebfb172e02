"""`sync-all --host` and `status --host` when things go wrong: a stop halfway, a damaged lib cache, `--host local`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, git, process_running, wait_gone
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)
from tests.sync_fixtures import full_snapshot, outside_remote_tracking, ref
from tests.test_sync_host import push_new_commit, results, setup

COMPARED = ("status", "reason", "branch", "before", "after", "checked_out")


def inv_subprocess(cwd: Path, *args: str, stderr: Path) -> subprocess.Popen:
    """The real `inv` in its own process, its stderr in a file the test can read while it runs."""
    with open(stderr, "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args], cwd=cwd,
                                stdout=subprocess.PIPE, stderr=err, text=True)


def wait_until(condition, seconds: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def hang_fetch(path: Path, pid_file: Path) -> None:
    """The repo's fetch on the host hangs in its upload-pack, which writes its pid first."""
    git(path, "config", "remote.origin.uploadpack", f"echo $$ > '{pid_file}'; exec sleep 120 #")


def fast_and_hung_slow(home, make_repo, sshd, tmp_path: Path, **host_fields) -> tuple[Path, Path]:
    """A host workspace of `fast` and `slow`, both behind their remotes, `slow`'s fetch hanging on the host;
    returns (workspace, the file the hung fetch writes its pid to)."""
    fast, slow = make_repo("fast"), make_repo("slow")
    workspace = setup(home, sshd, tmp_path, [slow, fast], **host_fields)
    push_new_commit(fast)
    push_new_commit(slow)
    pid_file = tmp_path / "slow.pid"
    hang_fetch(workspace / "slow", pid_file)
    return workspace, pid_file


def until_fast_is_done(err_file: Path, pid_file: Path, workspace: Path | None = None) -> None:
    """Wait until the host has reported `fast` and `slow`'s fetch hangs (with `workspace`: its driver runs)."""
    wait_until(lambda: "fast: updated" in err_file.read_text() and pid_file.exists()
               and pid_file.read_text().strip() and (workspace is None or driver_pids(workspace)),
               what="the fast repo's line")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_records_what_the_host_finished_and_counts_what_it_stopped(home, make_repo, sshd, tmp_path, signum):
    fast = [make_repo(f"fast{i}") for i in range(3)]
    slow = [make_repo(f"slow{i}") for i in range(2)]
    workspace = setup(home, sshd, tmp_path, [*slow, *fast])
    for handle in [*slow, *fast]:
        push_new_commit(handle)
    pid_files = [tmp_path / f"{h.path.name}.pid" for h in slow]
    for handle, pid_file in zip(slow, pid_files):
        hang_fetch(workspace / handle.path.name, pid_file)
    before = {h.path.name: outside_remote_tracking(full_snapshot(workspace / h.path.name)) for h in slow}
    err_file = tmp_path / "stderr.txt"
    proc = inv_subprocess(tmp_path, "sync-all", "--host", "builder", stderr=err_file)
    try:
        # Each outcome is shown as the host reports it: the fast repos' lines come while the slow ones hang.
        wait_until(lambda: all(f"fast{i}: updated" in err_file.read_text() for i in range(3))
                   and all(p.exists() and p.read_text().strip() for p in pid_files), what="the fast repos' lines")
        assert proc.poll() is None
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = err_file.read_text()
    assert proc.returncode == 128 + signum, out + err
    assert "Traceback" not in err
    # Two fetches were running on the host when it was stopped.
    assert f"interrupted: stopped 2 running commands ({signal.Signals(signum).name})" in err, err
    hung = [int(p.read_text().split()[0]) for p in pid_files]
    assert all(wait_gone(pid, 30) for pid in hung), "a fetch on the host outlived the run"
    # Recorded here exactly as the host recorded them in its own state.
    here = results(home)
    there = {r["repo"]: r for r in json.loads((workspace / ".orchestrator" / "state" / "sync-results.json")
                                               .read_text())["results"]}
    assert set(here) == set(there) == {"fast0", "fast1", "fast2"}
    for name in there:
        assert {k: here[name][k] for k in COMPARED} == {k: there[name][k] for k in COMPARED}, name
        assert here[name]["host"] == "builder" and here[name]["status"] == "updated"
        assert "outcome: " + name + ": updated" in Path(here[name]["log"]).read_text()
    for handle in slow:
        name = handle.path.name
        assert outside_remote_tracking(full_snapshot(workspace / name)) == before[name]


def host_lib_cache(sshd) -> Path:
    copies = [p for p in (sshd.remote_home / ".cache" / "orchestrator").iterdir() if p.name.startswith("lib-")]
    assert len(copies) == 1, copies
    return copies[0]


def assert_cache_whole(sshd) -> None:
    """The host's copy of lib/ is this checkout's, byte for byte, and nothing else is left in the cache."""
    cache = host_lib_cache(sshd)
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]
    here = {p.name: p.read_bytes() for p in (ROOT / "lib").glob("*.py")}
    assert {p.name: p.read_bytes() for p in (cache / "lib").iterdir()} == here


def cut_short(lib: Path) -> None:
    data = (lib / "sync.py").read_bytes()
    (lib / "sync.py").write_bytes(data[:len(data) // 2])


def deleted(lib: Path) -> None:
    (lib / "gitstatus.py").unlink()


def replaced(lib: Path) -> None:
    size = (lib / "config.py").stat().st_size
    (lib / "config.py").write_bytes(b"#" * (size - 1) + b"\n")  # same size, other bytes


def emptied(lib: Path) -> None:
    for path in lib.iterdir():
        path.unlink()


def a_fifo(lib: Path) -> None:
    (lib / "runner.py").unlink()
    os.mkfifo(lib / "runner.py")


def lib_dir_gone(lib: Path) -> None:
    for path in lib.iterdir():
        path.unlink()
    lib.rmdir()


def stray_module(lib: Path) -> None:
    (lib / "json.py").write_text("raise SystemExit('a module that is not ours')\n")


@pytest.mark.parametrize("damage", [cut_short, deleted, replaced, emptied, a_fifo, stray_module, lib_dir_gone])
def test_a_damaged_lib_cache_on_the_host_is_replaced_and_the_sync_runs(home, make_repo, inv, sshd, tmp_path, damage):
    handle = make_repo("staking")
    workspace = setup(home, sshd, tmp_path, [handle])
    assert inv("sync-all", "--host", "builder").code == 0
    damage(host_lib_cache(sshd) / "lib")
    target = push_new_commit(handle)
    result = inv("sync-all", "--host", "builder")
    assert result.code == 0, result.out + result.err
    assert results(home)["staking"]["status"] == "updated"
    assert ref(workspace / "staking", "refs/heads/main") == target
    assert_cache_whole(sshd)


def test_a_lib_cache_that_cannot_be_made_whole_is_named_and_nothing_runs(home, make_repo, inv, sshd, tmp_path,
                                                                         monkeypatch):
    """The manifest is checked on the host: a copy that still differs after a fresh upload fails every repo."""
    from lib.remote import sync as remote_sync

    handle = make_repo("staking")
    workspace = setup(home, sshd, tmp_path, [handle])
    push_new_commit(handle)
    before = full_snapshot(workspace / "staking")
    real = remote_sync.LibSnapshot.read()

    class Lying(remote_sync.LibSnapshot):
        @property
        def manifest(self) -> dict[str, str]:
            return {**real.manifest, "sync.py": "0" * 64}

    monkeypatch.setattr(remote_sync.LibSnapshot, "read", classmethod(lambda cls: Lying(real.files)))
    result = inv("sync-all", "--host", "builder")
    assert result.code == 1, result.out + result.err
    cache = host_lib_cache(sshd)
    reason = results(home)["staking"]["reason"]
    assert reason.startswith(f"the lib cache {cache} on the host still differs from this checkout"), reason
    assert "sync.py differs" in reason and "Traceback" not in result.err
    assert full_snapshot(workspace / "staking") == before


def test_what_is_uploaded_is_exactly_what_was_hashed(home, make_repo, sshd, tmp_path):
    """A lib/ file edited after it was read is not stored under the old content's hash."""
    from lib.remote import sync as remote_sync
    from lib.remote.connection import connect
    from lib.remote.hosts import load_hosts

    edited = tmp_path / "lib"
    edited.mkdir()
    for path in (ROOT / "lib").glob("*.py"):
        (edited / path.name).write_bytes(path.read_bytes())
    snapshot = remote_sync.LibSnapshot.read(edited)
    (edited / "sync.py").write_text("# edited after it was read\n")
    setup(home, sshd, tmp_path, [make_repo("staking")])
    connection = connect(load_hosts(home.path / "config" / "hosts.toml")["builder"])
    try:
        cache = remote_sync._cache_dir(connection)
        final = f"{cache}/lib-{snapshot.key}"
        remote_sync._install_lib(connection, snapshot, cache, final, replace=False)
    finally:
        connection.close()
    stored = {p.name: p.read_bytes() for p in (Path(final) / "lib").iterdir()}
    assert stored == snapshot.files and stored["sync.py"] == (ROOT / "lib" / "sync.py").read_bytes()


def test_host_local_is_this_machine_for_status_and_sync_all(home, make_repo, inv, tmp_path):
    """As for build and test, `--host local` means here; hosts.toml is not needed (nor read)."""
    handle = make_repo("staking")
    home.add(handle)
    (home.path / "config" / "hosts.toml").write_text("this is not toml [")  # never read for `local`
    target = handle.push_from_elsewhere(tmp_path, {"up.txt": "1"})
    status = inv("status", "--host", "local", "--json")
    assert status.code == 0, status.out + status.err
    doc = json.loads(status.out)
    assert "host" not in doc and doc["repos"][0]["name"] == "staking" and doc["repos"][0]["behind"] == 0
    table = inv("status", "--host", "local")
    assert table.code == 0 and "(on host" not in table.out
    synced = inv("sync-all", "--host", "local")
    assert synced.code == 0, synced.out + synced.err
    entry = results(home)["staking"]
    assert entry["status"] == "updated" and "host" not in entry
    assert handle.head() == target
    script = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py"), "--host", "local"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert script.returncode == 0, script.stdout + script.stderr
    assert results(home)["staking"]["status"] == "up to date"


def test_status_on_a_host_reads_each_repo_as_the_local_scan_does(home, make_repo, inv, sshd, tmp_path):
    """Same repo, same row: replace refs not applied, the subject in UTF-8 whatever the repo's encoding, untracked
    files counted whatever status.showUntrackedFiles says, and a `.git` that is no repo never the repo around it."""
    from tests.test_hosts_remote import clone_to

    ws = tmp_path / "ws"
    replaced = clone_to(ws, make_repo("replaced"))
    other = git(replaced, "commit-tree", "-m", "a replacement subject", "HEAD^{tree}")
    git(replaced, "replace", "HEAD", other)
    encoded = clone_to(ws, make_repo("encoded"))
    git(encoded, "commit", "-q", "--allow-empty", "-m", "café crème")
    git(encoded, "config", "i18n.logOutputEncoding", "ISO-8859-1")
    hiding = clone_to(ws, make_repo("hiding"))
    (hiding / "new.txt").write_text("untracked\n")
    git(hiding, "config", "status.showUntrackedFiles", "no")
    git(ws, "init", "-q")  # the workspace is a repo; `hollow/.git` is an empty directory in it
    (ws / "hollow" / ".git").mkdir(parents=True)
    names = ("replaced", "encoded", "hiding", "hollow")
    write_hosts(home.path, {"builder": sshd.host_entry(ws)})
    home.write_repos([{"name": name, "local": str(ws / name)} for name in names])
    here = {r["name"]: r for r in json.loads(inv("status", "--json").out)["repos"]}
    there = inv("status", "--host", "builder", "--json")
    assert there.code == 1, there.out + there.err  # hollow is an error, as here
    rows = {r["name"]: r for r in json.loads(there.out)["repos"]}
    for name in names:
        for key in ("head", "branch", "last_commit", "untracked", "dirty", "clean"):
            assert rows[name][key] == here[name][key], (name, key)
    assert rows["encoded"]["last_commit"]["subject"] == "café crème"
    assert rows["replaced"]["last_commit"]["subject"] == "initial"
    assert rows["hiding"]["untracked"] == 1
    assert "not a git repository" in rows["hollow"]["error"] and "not a git repository" in here["hollow"]["error"]


def test_status_on_a_host_shows_an_operation_under_way_and_a_stale_lock_as_locally(home, make_repo, inv, sshd,
                                                                                  tmp_path):
    from tests.test_hosts_remote import clone_to

    ws = tmp_path / "ws"
    merging = clone_to(ws, make_repo("merging", {"f.txt": "base\n"}))
    git(merging, "checkout", "-q", "-b", "side")
    (merging / "f.txt").write_text("side\n")
    git(merging, "commit", "-q", "-am", "side")
    git(merging, "checkout", "-q", "main")
    (merging / "f.txt").write_text("main\n")
    git(merging, "commit", "-q", "-am", "main")
    subprocess.run(["git", "merge", "-q", "side"], cwd=merging, capture_output=True)  # stops on the conflict
    picking = clone_to(ws, make_repo("picking", {"g.txt": "base\n"}))
    git(picking, "checkout", "-q", "-b", "other")
    for n in (1, 2):
        (picking / "g.txt").write_text(f"other {n}\n")
        git(picking, "commit", "-q", "-am", f"other {n}")
    git(picking, "checkout", "-q", "main")
    (picking / "g.txt").write_text("main\n")
    git(picking, "commit", "-q", "-am", "main")
    subprocess.run(["git", "revert", "--no-edit", "other~1", "other"], cwd=picking, capture_output=True)
    locked = clone_to(ws, make_repo("locked"))
    (locked / ".git" / "index.lock").write_text("")  # left by a killed git
    linked = ws / "linked"
    git(locked, "worktree", "add", "-q", str(linked), "-b", "wt")
    git(linked, "bisect", "start")
    busy = clone_to(ws, make_repo("busy"))
    (busy / ".git" / "index.lock").write_text("")
    names = ("merging", "picking", "locked", "linked", "busy")
    write_hosts(home.path, {"builder": sshd.host_entry(ws)})
    home.write_repos([{"name": name, "local": str(ws / name)} for name in names])
    running = subprocess.Popen(["git", "hash-object", "--stdin"], cwd=busy, stdin=subprocess.PIPE)  # holds it
    try:
        here = {r["name"]: r for r in json.loads(inv("status", "--json").out)["repos"]}
        there = {r["name"]: r for r in json.loads(inv("status", "--host", "builder", "--json").out)["repos"]}
    finally:
        running.communicate(b"")
    assert {n: (r["operation"], r["index_lock"]) for n, r in there.items()} == \
        {n: (r["operation"], r["index_lock"]) for n, r in here.items()}
    assert here["merging"]["operation"] == "merge" and here["picking"]["operation"] == "revert"
    assert here["locked"]["index_lock"] == "stale" and here["linked"]["operation"] == "bisect"
    assert here["busy"]["index_lock"] == "held"


def driver_pids(workspace: Path) -> list[int]:
    """The sync drivers for `workspace` running on the host (this machine; other tests' are left alone)."""
    wanted = (b"orchestrator-sync-", json.dumps(str(workspace / ".orchestrator"))[1:-1].encode())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"python3") and any(all(w in a for w in wanted) for a in argv[1:]):
            found.append(int(entry.name))
    return found


def test_a_sync_stopped_on_the_host_records_what_it_finished_and_fails_the_rest(home, make_repo, sshd, tmp_path):
    workspace, pid_file = fast_and_hung_slow(home, make_repo, sshd, tmp_path)
    err_file = tmp_path / "stderr.txt"
    proc = inv_subprocess(tmp_path, "sync-all", "--host", "builder", stderr=err_file)
    try:
        until_fast_is_done(err_file, pid_file, workspace)
        for pid in driver_pids(workspace):  # someone on the host stops the sync there
            os.kill(pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = err_file.read_text()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    entries = results(home)
    assert entries["fast"]["status"] == "updated"
    assert entries["slow"]["status"] == "failed"
    assert entries["slow"]["reason"] == "the sync on host builder was stopped there (SIGTERM) before this repo finished"
    assert wait_gone(int(pid_file.read_text().split()[0]), 30)
    assert not list((workspace / ".orchestrator" / "state").glob(".host-sync-*"))


def closing_scan_stopped(home, make_repo, sshd, tmp_path: Path, how: str) -> tuple[int, str, str, Path]:
    """Every repo syncs on the host, whose closing scan hangs in an fsmonitor hook; then `how`: "stop", Ctrl-C
    here; "frozen", the driver SIGSTOPped first, so it cannot handle the Ctrl-C and is SIGKILLed after its
    grace (as on a machine too busy to run it); "killed", the driver SIGKILLed on the host, no stop here.
    Returns (exit code, stderr, the synced commit, the host's workspace)."""
    handle = make_repo("steady")
    workspace = setup(home, sshd, tmp_path, [handle])
    # Its work tree on another branch, main behind: sync moves main with update-ref and never runs a
    # `git status` there (it reads one of each repo it leaves as it was, for the closing scan to reuse).
    git(workspace / "steady", "checkout", "-q", "-b", "feature")
    target = push_new_commit(handle)
    pid_file = tmp_path / "fsmonitor.pid"
    hook = tmp_path / "fsmonitor-hook"
    hook.write_text(f"#!/bin/sh\necho $$ > '{pid_file}'\nexec sleep 120\n")
    hook.chmod(0o755)
    git(workspace / "steady", "config", "core.fsmonitor", str(hook))  # only `git status` runs it: the scan's
    err_file = tmp_path / "stderr.txt"
    proc = inv_subprocess(tmp_path, "sync-all", "--host", "builder", stderr=err_file)
    frozen_pids: list[int] = []
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the host's closing scan")
        if how != "stop":
            wait_until(lambda: driver_pids(workspace), what="the host's driver")
            frozen_pids = driver_pids(workspace)
            for pid in frozen_pids:
                os.kill(pid, signal.SIGSTOP if how == "frozen" else signal.SIGKILL)
        if how != "killed":
            proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in frozen_pids:  # the stop SIGKILLs it; a failed test must not leave it stopped
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    err = err_file.read_text()
    assert "Traceback" not in err, err
    assert wait_gone(int(pid_file.read_text().split()[0]), 30)
    return proc.returncode, out + err, target, workspace


def test_a_stop_in_the_hosts_closing_scan_records_every_repo(home, make_repo, sshd, tmp_path):
    """Every repo had synced there; the scan after it was stopped: all are recorded here, and it is said."""
    code, err, target, workspace = closing_scan_stopped(home, make_repo, sshd, tmp_path, "stop")
    assert code == 130, err
    assert "on host builder every repo had synced; its closing scan was stopped" in err, err
    assert "interrupted: stopped 0 running commands (SIGINT)" in err
    entry = results(home)["steady"]
    assert entry["status"] == "updated" and entry["after"] == target and entry["host"] == "builder", entry
    assert not list((workspace / ".orchestrator" / "state").glob(".host-sync-*"))


def test_a_driver_killed_in_its_closing_scan_still_says_every_repo_had_synced(home, make_repo, sshd, tmp_path):
    """The driver cannot handle the stop in time (frozen, then SIGKILLed after its grace): the report it wrote
    before its closing scan still says every repo had synced, and every repo is recorded."""
    code, err, target, workspace = closing_scan_stopped(home, make_repo, sshd, tmp_path, "frozen")
    assert code == 130, err
    assert "on host builder every repo had synced; its closing scan was stopped" in err, err
    assert "ended before it said what it had finished" not in err, err
    assert "interrupted: stopped 1 running command (SIGINT)" in err, err
    entry = results(home)["steady"]
    assert entry["status"] == "updated" and entry["after"] == target and entry["host"] == "builder", entry
    assert not list((workspace / ".orchestrator" / "state").glob(".host-sync-*"))


def test_a_driver_killed_on_the_host_in_its_closing_scan_says_every_repo_had_synced(home, make_repo, sshd,
                                                                                   tmp_path):
    """No stop here: the driver is killed there in its closing scan; its report from before the scan is the
    host's word, every repo is recorded as synced, and the note says the scan did not finish."""
    code, err, target, workspace = closing_scan_stopped(home, make_repo, sshd, tmp_path, "killed")
    assert code == 0, err
    assert "on host builder every repo had synced; its closing scan did not finish" in err, err
    entry = results(home)["steady"]
    assert entry["status"] == "updated" and entry["after"] == target and entry["host"] == "builder", entry
    assert not list((workspace / ".orchestrator" / "state").glob(".host-sync-*"))


def children_of_sshd(sshd) -> list[int]:
    """The session processes of this test's sshd (children of its listener)."""
    config = str(sshd.root / "sshd_config").encode()
    listeners, parents = set(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            parents[int(entry.name)] = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if config in cmdline and b"[listener]" in cmdline:
            listeners.add(int(entry.name))
    return [pid for pid, parent in parents.items() if parent in listeners]


def test_a_lost_connection_keeps_what_the_host_reported_and_fails_the_rest(home, make_repo, sshd, tmp_path):
    workspace, pid_file = fast_and_hung_slow(home, make_repo, sshd, tmp_path)
    stale = Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-sync-fast.log"
    stale.write_text("a log from an earlier run\n")
    err_file = tmp_path / "stderr.txt"
    proc = inv_subprocess(tmp_path, "sync-all", "--host", "builder", stderr=err_file)
    try:
        until_fast_is_done(err_file, pid_file)
        wait_until(lambda: children_of_sshd(sshd), what="the sshd session")
        for pid in children_of_sshd(sshd):  # the connection drops
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        hung = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        if hung is not None and process_running(hung):  # the host's sync is no concern of this test
            os.killpg(os.getpgid(hung), signal.SIGKILL)
    err = err_file.read_text()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    entries = results(home)
    assert entries["fast"]["status"] == "updated", entries["fast"]
    # Its log comes over a new connection, never the old run's under this outcome.
    assert entries["fast"]["reason"] == "fast-forward: 1 commit(s)", entries["fast"]
    assert "a log from an earlier run" not in stale.read_text() and "outcome: fast: updated" in stale.read_text()
    said = "connection to host builder was lost; the sync was killed on the host over a new connection"
    assert (entries["slow"]["status"], entries["slow"]["reason"]) == ("failed", said), entries["slow"]


def test_the_hosts_output_is_read_line_by_line_and_only_our_marked_lines_count(monkeypatch):
    """Lines split across reads, lines without this run's mark, cut or odd JSON: none is a traceback or a lie."""
    from lib.remote import sync as remote_sync
    from lib.config import Repo
    from lib.remote.hosts import Host
    from lib.remote.sync import _HostOutput, _outcome

    monkeypatch.setattr(remote_sync, "MAX_LINE", 1024)

    seen = []
    output = _HostOutput(seen.append)
    mark = output.mark.encode()
    outcome = {"repo": "api", "status": "updated", "reason": None, "branch": "main", "before": "a", "after": "b",
               "log": "/host/log", "duration_s": 1.5, "checked_out": "main"}
    line = mark + b" outcome " + json.dumps(outcome).encode() + b"\n"
    for chunk in (line[:10], line[10:], b"[1/2] api: updated\n"):  # the host's own progress line is not ours
        output.write(chunk)
    output.write(b"orchestrator-sync-0000 outcome " + json.dumps({**outcome, "repo": "forged"}).encode() + b"\n")
    output.write(mark + b" outcome {\"repo\": \"web\", \"stat\n")  # cut short by a stop
    output.write(mark + b" outcome " + b"[" * 100_000 + b"\n")  # nested past the parser's depth
    output.write(mark + b" result [1, 2]\n" + mark + b" damaged {\"no\": 1}\n")
    output.write(b"x" * 4096)  # a line too long to keep (its start is dropped)
    output.write(b"\n" + mark + b" result {\"outcomes\": []}\n")
    assert seen == [outcome]
    assert output.result == {"outcomes": []} and output.damaged is None
    assert "[1/2] api: updated" not in output.tail  # the host's progress line is no problem to report
    host = Host("b1", "h", "ws")
    selected = {"api": Repo("api", Path("x"))}
    made = _outcome(outcome, selected, host, Path("/logs"), False)
    assert (made.repo, made.status, made.after, made.host, made.log) == \
        ("api", "updated", "b", "b1", "/logs/orchestrator-sync-api.log")
    for odd in ([1], {"repo": ["api"], "status": "updated"}, {"repo": "other", "status": "updated"},
                {"repo": "api", "status": 3}, {"repo": "api"}, {"repo": "api", "status": "pwned"}):
        assert _outcome(odd, selected, host, Path("/logs"), False) is None, odd
    assert _outcome({"repo": "api", "status": "failed", "reason": {"a": 1}, "duration_s": "x"}, selected, host,
                    Path("/logs"), False).reason == "{'a': 1}"


def test_a_driver_killed_before_it_reports_keeps_what_it_reported_and_leaves_no_git_behind(
        home, make_repo, inv, sshd, tmp_path, monkeypatch):
    """The sync there takes longer to stop than we wait: it is killed, and the git it had not stopped yet too."""
    import threading

    from lib.remote import sync as remote_sync

    fast, slow = make_repo("fast"), make_repo("slow")
    workspace = setup(home, sshd, tmp_path, [slow, fast])
    push_new_commit(fast)
    push_new_commit(slow)
    pid_file = tmp_path / "slow.pid"
    # The host's fetch ignores SIGTERM: the host's runner waits runner.GRACE_S before its SIGKILL.
    git(workspace / "slow", "config", "remote.origin.uploadpack",
        f"trap '' TERM HUP INT; echo $$ > '{pid_file}'; exec sleep 120 #")
    monkeypatch.setattr(remote_sync, "DRIVER_GRACE_S", 0.5)  # we wait less than that
    shown = outcome_shown(monkeypatch, "fast")

    def interrupt_when_ready() -> None:
        wait_until(lambda: shown.is_set() and pid_file.exists() and pid_file.read_text().strip(),
                   what="the fast repo's outcome")
        os.kill(os.getpid(), signal.SIGINT)

    stopper = threading.Thread(target=interrupt_when_ready)
    stopper.start()
    try:
        result = inv("sync-all", "--host", "builder")
    finally:
        stopper.join()
    hung = int(pid_file.read_text().split()[0])
    try:
        assert result.code == 130, result.out + result.err
        assert "the sync on host builder ended before it said what it had finished; recorded the 1 repo(s)" \
            in result.err and "interrupted: stopped 1 running command (SIGINT)" in result.err, result.err
        assert results(home).keys() == {"fast"} and results(home)["fast"]["status"] == "updated"
        assert wait_gone(hung, 30), "the host's fetch outlived the sync that started it"
    finally:
        if process_running(hung):
            os.kill(hung, signal.SIGKILL)


def test_a_driver_killed_on_the_host_keeps_what_it_reported_and_leaves_no_git_behind(home, make_repo, sshd,
                                                                                      tmp_path):
    workspace, pid_file = fast_and_hung_slow(home, make_repo, sshd, tmp_path)
    err_file = tmp_path / "stderr.txt"
    proc = inv_subprocess(tmp_path, "sync-all", "--host", "builder", stderr=err_file)
    try:
        until_fast_is_done(err_file, pid_file, workspace)
        for pid in driver_pids(workspace):  # the OOM killer, say
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = err_file.read_text()
    hung = int(pid_file.read_text().split()[0])
    try:
        assert proc.returncode == 1, out + err
        assert "Traceback" not in err
        entries = results(home)
        assert entries["fast"]["status"] == "updated"
        assert entries["slow"]["status"] == "failed"
        assert entries["slow"]["reason"].startswith("sync on host builder gave no result"), entries["slow"]
        assert wait_gone(hung, 30), "the host's fetch outlived the sync that started it"
    finally:
        if process_running(hung):
            os.kill(hung, signal.SIGKILL)


def outcome_shown(monkeypatch, repo: str):
    """An event set once sync-all --host has shown `repo`'s outcome here (its progress line)."""
    import threading

    from lib.remote import sync as remote_sync

    shown = threading.Event()

    class Watched(remote_sync.Progress):
        def finish(self, name, line, failed=False):
            super().finish(name, line, failed)
            if name == repo:
                shown.set()

    monkeypatch.setattr(remote_sync, "Progress", Watched)
    return shown
