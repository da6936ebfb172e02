"""The scan attacked as a hostile user would: odd paths, signals, concurrent runs. It must never lie or leave things behind."""
from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

import lib.scan
import lib.signals
from lib.config import Repo, load_workspace
from lib.gitstatus import scan
from lib.paths import Paths
from tests.conftest import ROOT, git, wait_gone


def test_a_broken_repo_under_a_directory_with_a_colon_never_reports_the_repo_around_it(home, make_repo, tmp_path):
    """GIT_CEILING_DIRECTORIES is colon-separated with no escape: `a:b` must not unconfine git."""
    outer = make_repo("outer")
    broken = outer.path / "a:b" / "inner"
    (broken / ".git").mkdir(parents=True)  # a .git that is no repository
    home.write_repos([{"name": "inner", "local": str(broken)}])
    row = scan(load_workspace(home.repos_file).repos, jobs=1).repos[0]
    assert row.error and "not a git repository" in row.error
    assert row.head is None and row.last_commit is None  # not the outer repo's "initial"


def test_a_repo_under_a_directory_with_a_colon_still_scans(home, make_repo, tmp_path):
    parent = tmp_path / "x:y"
    parent.mkdir()
    git(parent, "init", "-q", "-b", "main", "repo")
    git(parent / "repo", "commit", "-q", "--allow-empty", "-m", "in x:y")
    home.write_repos([{"name": "repo", "local": str(parent / "repo")}])
    row = scan(load_workspace(home.repos_file).repos, jobs=1).repos[0]
    assert row.error is None and row.last_commit.subject == "in x:y"


def hanging_git(tmp_path):
    """(env, pid file): a `git` first on PATH that records its pid and hangs (a status stuck on a hook or a dead mount)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    pids = tmp_path / "git-pids"
    (shim / "git").write_text(f'#!/bin/sh\necho $$ >> "{pids}"\nexec sleep 60\n')
    (shim / "git").chmod(0o755)
    return {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}, pids


SCAN_SCRIPT = [sys.executable, str(ROOT / "scripts" / "scan_all_repos.py")]
INV = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]


@pytest.mark.parametrize("command, signum, writes_state", [
    (SCAN_SCRIPT, signal.SIGINT, True), (SCAN_SCRIPT, signal.SIGTERM, True),
    (INV + ["scan"], signal.SIGINT, True), (INV + ["status"], signal.SIGTERM, False)])
def test_a_stopped_scan_says_so_in_one_line_and_leaves_no_git(home, make_repo, tmp_path, command, signum,
                                                              writes_state):
    home.add(make_repo("a"), make_repo("b"))
    env, pids = hanging_git(tmp_path)
    scanning = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        text=True, env=env, start_new_session=True,  # as a terminal's Ctrl-C: the signal goes to the whole group
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60  # generous: a busy machine starts Python and git slowly
        while not (pids.exists() and len(pids.read_text().split()) == 2):
            assert time.monotonic() < deadline, "the gits never started"
            time.sleep(0.02)
        os.killpg(scanning.pid, signum)
        out, err = scanning.communicate(timeout=60)
    finally:
        if scanning.poll() is None:
            scanning.kill()
            scanning.communicate()
    gits = [int(pid) for pid in pids.read_text().split()]
    assert all(wait_gone(pid, 10) for pid in gits), "a git outlived the stopped scan"
    assert scanning.returncode == 128 + signum, err
    state = home.path / "state" / "repo-status.json"
    unwritten = f"; {state} not written" if writes_state else ""
    assert "Traceback" not in err and err.strip().splitlines() == [
        f"interrupted: scan stopped ({signal.Signals(signum).name}){unwritten}"]
    assert not state.exists()


def test_two_tag_scans_at_once_keep_each_others_fresh_rows(home, make_repo, monkeypatch):
    """`scan --tag x` and `scan --tag y` finishing at the same time: neither may put back the other's old row."""
    alpha, beta = make_repo("alpha"), make_repo("beta")
    home.write_repos([{"name": "alpha", "local": str(alpha.path), "tags": ["x"]},
                      {"name": "beta", "local": str(beta.path), "tags": ["y"]}])
    paths = Paths.from_env()
    lib.scan.scan_and_save(paths)
    alpha.commit({"a": "1"}, "alpha moved")
    beta.commit({"b": "1"}, "beta moved")
    real_scan = lib.scan.scan_workspace

    def scan_while_the_other_one_saves(workspace, jobs, tags, previous, reuse):
        report = real_scan(workspace, jobs, tags, previous, reuse)
        if tags == ["x"]:  # the y scan writes its rows after ours read the old file
            lib.scan.scan_and_save(paths, tags=["y"])
        return report

    monkeypatch.setattr(lib.scan, "scan_workspace", scan_while_the_other_one_saves)
    lib.scan.scan_and_save(paths, tags=["x"])
    subjects = {r["name"]: r["last_commit"]["subject"] for r in home.state("repo-status.json")["repos"]}
    assert subjects == {"alpha": "alpha moved", "beta": "beta moved"}


def test_more_jobs_than_descriptors_run_fewer_gits_at_once_not_a_traceback(make_repo):
    """`--jobs 1000` under a small `ulimit -n`: the pool waits for a git to end instead of failing the scan."""
    repos = [Repo(name=h.path.name, local=h.path) for h in (make_repo(f"r{i}") for i in range(8))]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 6, hard))
    try:
        report = scan(repos, jobs=1000, processes=1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [(r.error, r.last_commit.subject) for r in report.repos] == [(None, "initial")] * 8


SCAN_ONE = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from lib.config import Repo
from lib.gitstatus import scan
row = scan([Repo(name="r", local=Path(sys.argv[2]))], jobs=1, processes=1).repos[0]
Path(sys.argv[3]).write_text(json.dumps(row.to_json()))
"""


@pytest.mark.parametrize("closed", [(1,), (0, 1)])
def test_a_scan_started_with_closed_standard_descriptors_keeps_gits_output_apart(make_repo, tmp_path, closed):
    """Run from cron or with `>&-`: a git's stderr (here an fsmonitor hook's noise) must not land in its stdout."""
    repo = make_repo("r")
    hook = tmp_path / "fsmonitor-hook"
    hook.write_text("#!/bin/sh\necho fsmonitor noise >&2\nexit 1\n")
    hook.chmod(0o755)
    repo.git("config", "core.fsmonitor", str(hook))
    (repo.path / "README.md").write_text("edited\n")
    out = tmp_path / "row.json"
    subprocess.run([sys.executable, "-c", SCAN_ONE, str(ROOT), str(repo.path), str(out)], check=True, timeout=30,
                   preexec_fn=lambda: [os.close(fd) for fd in closed])
    row = json.loads(out.read_text())
    assert (row["error"], row["head"], row["modified"]) == (None, repo.head(), 1)


@pytest.mark.parametrize("stdout, code", [("full", 1), ("closed", 0)])
def test_the_scan_script_with_nowhere_to_print_records_the_scan_without_a_traceback(home, make_repo, tmp_path,
                                                                                    stdout, code):
    home.add(make_repo("a"))
    with open("/dev/full", "w") as full:
        done = subprocess.run(SCAN_SCRIPT, cwd=tmp_path, stderr=subprocess.PIPE, text=True, timeout=60,
                              stdout=full if stdout == "full" else None,
                              preexec_fn=None if stdout == "full" else lambda: os.close(1))
    assert done.returncode == code and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == code  # "full": one line saying why
    assert [r["name"] for r in home.state("repo-status.json")["repos"]] == ["a"]


def test_sync_all_stopped_in_its_closing_scan_says_so_in_one_line(home, make_repo, inv, monkeypatch):
    home.add(make_repo("a"))

    def stopped(*args, **kwargs):
        raise lib.scan.ScanStopped(signal.SIGTERM)

    monkeypatch.setattr(lib.scan, "scan_workspace", stopped)
    result = inv("sync-all")
    state = home.path / "state" / "repo-status.json"
    assert result.code == 143 and "Traceback" not in result.err
    assert result.err.strip().splitlines()[-1] == f"interrupted: scan stopped (SIGTERM); {state} not written"
    assert home.state("sync-results.json")  # the sync itself was recorded


def test_a_second_stop_signal_does_not_cut_the_cleanup_of_the_first_short():
    """An impatient second Ctrl-C must not interrupt the killing of the gits the first one started."""
    cleaned = []
    with pytest.raises(lib.scan.ScanStopped):
        try:
            with lib.signals.raised():
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(5)  # the scan, waiting on its gits
                finally:  # GitPool.close and the helpers' killpg run here
                    os.kill(os.getpid(), signal.SIGINT)
                    cleaned.append(True)
        except lib.signals.Signalled as stop:
            raise lib.scan.ScanStopped(stop.signum) from None
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # and the handlers are back


SCAN_WITH_HELPERS = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from lib.config import Repo
from lib.gitstatus import scan
scan([Repo(name=Path(p).name, local=Path(p)) for p in sys.argv[2:]], jobs=4, processes=2)
"""


@pytest.mark.parametrize("entry", ["helpers", "inv scan"])
def test_a_scan_killed_outright_leaves_no_git(home, make_repo, tmp_path, entry):
    """SIGKILL (the OOM killer, a hard CI cancel) runs no cleanup: the scan's gits go anyway, helpers' ones too."""
    handles = [make_repo(name) for name in ("a", "b", "c", "d")]
    home.add(*handles)
    env, pids = hanging_git(tmp_path)
    command = (INV + ["scan"] if entry == "inv scan"
               else [sys.executable, "-c", SCAN_WITH_HELPERS, str(ROOT), *(str(h.path) for h in handles)])
    scanning = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gits: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(gits) < 4:
            assert time.monotonic() < deadline, "the gits never started"
            time.sleep(0.05)
            gits = [int(pid) for pid in pids.read_text().split()] if pids.exists() else []
        scanning.kill()
        scanning.wait(timeout=30)
        assert all(wait_gone(pid, 30) for pid in gits), "a git outlived the killed scan"
    finally:
        if scanning.poll() is None:
            scanning.kill()
            scanning.wait()
        for pid in gits:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
