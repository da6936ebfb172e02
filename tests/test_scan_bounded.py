"""A scan ends, whatever its gits or helpers do: a hung git or a silent helper is killed after a stated limit,
and its repos are reported as not read (an error row), never as clean. No fork while another thread runs."""
from __future__ import annotations

import ast
import json
import os
import pty
import subprocess
import sys
import threading
import time

import pytest

from lib.gitstatus import GIT_TIMEOUT_S, HELPER_SLACK_S, scan
from tests.conftest import ROOT, wait_gone
from tests.test_scan_pool import REAL_GIT, mixed_repos, repo_of, rows, scan_in_a_fresh_process, wrapper

# A test's limit for one git: far above what a healthy git in a small repo takes on a busy machine.
LIMIT = 8


def hanging_hook(tmp_path, name: str) -> tuple[str, object]:
    """(an fsmonitor hook that records its pid and never answers, its pid file)."""
    pid_file = tmp_path / f"{name}.pid"
    hook = tmp_path / f"{name}-hook"
    hook.write_text(f'#!/bin/sh\necho $$ > "{pid_file}"\nexec sleep 300\n')
    hook.chmod(0o755)
    return str(hook), pid_file


def hung_by_fsmonitor(handle, tmp_path) -> object:
    hook, pid_file = hanging_hook(tmp_path, handle.path.name)
    handle.git("config", "core.fsmonitor", hook)
    return pid_file


def hung_by_clean_filter(handle, tmp_path) -> object:
    """A clean filter that never ends, run by `git status` for a tracked file whose stat changed."""
    pid_file = tmp_path / f"{handle.path.name}.pid"
    handle.commit({".gitattributes": "*.txt filter=hang\n", "a.txt": "text\n"}, "filtered")
    handle.git("config", "filter.hang.clean", f'echo $$ > "{pid_file}"; exec sleep 300')
    os.utime(handle.path / "a.txt", (1_000_000_000, 1_000_000_000))
    return pid_file


@pytest.mark.parametrize("hang", [hung_by_fsmonitor, hung_by_clean_filter])
@pytest.mark.parametrize("processes", [1, 2])
def test_a_git_that_hangs_is_killed_at_the_limit_and_its_repo_is_an_error_row_never_clean(
        make_repo, tmp_path, processes, hang):
    """With 2 processes the hung repo (the second) is the helper's: the helper reports it, the scan goes on."""
    handles = [make_repo(f"r{i:02d}") for i in range(4)]
    (handles[2].path / "README.md").write_text("edited\n")
    repos = [repo_of(handle) for handle in handles]
    pid_file = hang(handles[1], tmp_path)
    expected = rows(scan([r for r in repos if r.name != "r01"], jobs=2, processes=1))
    report = scan(repos, jobs=2, processes=processes, git_timeout=LIMIT)
    row = report.repos[1]
    assert row.name == "r01" and not row.clean
    assert row.error == f"git status did not finish within {LIMIT} s: killed"
    assert [r for r in rows(report) if r["name"] != "r01"] == expected
    assert pid_file.exists() and wait_gone(int(pid_file.read_text())), "the hung hook outlived the scan"


STOPPED_HELPER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from lib.config import Repo
from lib.gitstatus import scan
os.environ["SCAN_PID"] = str(os.getpid())  # the git wrapper stops only a helper, never this process
report = scan([Repo(name=Path(p).name, local=Path(p)) for p in sys.argv[3:]], jobs=2, processes=2, git=sys.argv[2],
              helper_silence=3)
print(json.dumps([status.to_json() for status in report.repos]))
"""


def test_a_stopped_helper_is_killed_after_its_silence_and_its_repos_are_not_read_never_clean(make_repo, tmp_path):
    """A helper stopped (SIGSTOP) by the first git it starts: it sends nothing more. The parent's own share is read.
    The scan runs in a fresh interpreter: a thread another test left in this one would forbid the fork."""
    repos = mixed_repos(make_repo, 6)
    helpers = tmp_path / "helpers"
    # Only a helper, a child of the scan (a git whose helper is gone may have our own process as its parent).
    stopper = wrapper(tmp_path, f'[ "$PPID" != "$SCAN_PID" ] && '
                                f'[ "$(sed "s/.*) //" /proc/$PPID/stat | cut -d" " -f2)" = "$SCAN_PID" ] && '
                                f'echo $PPID >> "{helpers}" && kill -STOP $PPID')
    out = subprocess.run([sys.executable, "-c", STOPPED_HELPER, str(ROOT), stopper, *(str(r.local) for r in repos)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    by_name = {row["name"]: row for row in json.loads(out.stdout)}
    assert helpers.exists(), "no helper was forked: the test could not test a stopped one"
    helper_share = {r.name for r in repos[1::2]}
    expected = {row["name"]: row for row in rows(scan(repos, jobs=2, processes=1))}
    for name, row in by_name.items():
        if name in helper_share:
            assert not row["clean"] and row["error"] == "not read: the scan's helper process sent nothing for 3 s: killed"
        else:
            assert row == expected[name]
    pid = int(helpers.read_text().split()[0])
    assert wait_gone(pid), "the stopped helper outlived the scan"


FORKS_WITH_A_TICKER = """
import io, os, sys, threading
sys.path.insert(0, sys.argv[1])
threads_at_fork = []
os.register_at_fork(before=lambda: threads_at_fork.append(threading.active_count()))
if sys.argv[2] == "script":  # the scan script on a terminal: its live progress line ticks in a thread
    import runpy
    sys.argv = [sys.argv[1] + "/scripts/scan_all_repos.py"]
    try:
        runpy.run_path(sys.argv[0], run_name="not main")["main"]([])
    except SystemExit:
        pass
    ticking = None
else:
    from pathlib import Path
    from lib.config import Repo
    from lib.gitstatus import scan
    from lib.progress import Progress
    with Progress("scanning", 3, stream=io.StringIO(), live=True):
        scan([Repo(name=Path(p).name, local=Path(p)) for p in sys.argv[3:]], jobs=3, processes=3)
        ticking = threading.active_count()
print(threads_at_fork, ticking)
"""


@pytest.mark.parametrize("through", ["script", "lib"])
def test_no_fork_while_the_progress_ticker_thread_runs_and_the_ticker_goes_on_after(home, make_repo, through):
    """A fork copies every lock another thread holds (the ticker's, mid-write to stderr) into the child, held for
    good: the keeper and every helper are forked with this process's one thread, and the live line ticks again."""
    handles = [make_repo(f"t{i}") for i in range(3)]
    home.add(*handles)
    main_end, terminal = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-c", FORKS_WITH_A_TICKER, str(ROOT), through,
                               *(str(h.path) for h in handles)],
                              stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120)
    finally:
        os.close(terminal)
        os.close(main_end)
    assert done.returncode == 0
    counts, ticking = done.stdout.splitlines()[-1].rsplit(maxsplit=1)
    forks = ast.literal_eval(counts)
    assert forks and set(forks) == {1}, f"threads alive at each fork: {forks}"
    if through == "lib":
        assert len(forks) == 3  # the keeper and two helpers: pausing the ticker costs the scan no helper
        assert ticking == "2", "the progress line's ticker did not come back after the forks"


def test_with_another_thread_running_the_scan_forks_nothing_and_reads_every_repo_itself(make_repo, monkeypatch):
    """A thread no pause is registered for (a library's, say) may hold any lock: no keeper, no helper."""
    repos = mixed_repos(make_repo, 6)
    expected = rows(scan(repos, jobs=2, processes=1))
    forks = []
    real_fork = os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or real_fork())
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        report = scan(repos, jobs=2, processes=3)
    finally:
        release.set()
        other.join()
    assert forks == [] and rows(report) == expected


def barrier_git(tmp_path, count: int, seconds: int = 20) -> tuple[str, object]:
    """(a `git` whose status waits until `count` of them have started (`seconds` at most), then notes how many
    run at that moment; that note's file). It counts the gits in flight: no timing is asserted."""
    arrived, flight, seen = tmp_path / "arrived", tmp_path / "in-flight", tmp_path / "seen"
    arrived.mkdir()
    flight.mkdir()
    script = tmp_path / "barrier-git"
    script.write_text(f"""#!/bin/sh
case " $* " in *" status "*) ;; *) exec {REAL_GIT} "$@";; esac
touch "{flight}/$$" "{arrived}/$$"  # in flight before it counts as arrived: the count never misses it
waited=0
while [ "$(ls "{arrived}" | wc -l)" -lt {count} ] && [ $waited -lt {seconds * 20} ]; do
    sleep 0.05; waited=$((waited + 1))
done
ls "{flight}" | wc -l >> "{seen}"
{REAL_GIT} "$@"; code=$?
rm -f "{flight}/$$"
exit $code
""")
    script.chmod(0o755)
    return str(script), seen


def another_thread_alive(monkeypatch):
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    return lambda: (release.set(), other.join())


def no_fork_to_be_had(monkeypatch):
    def refused():
        raise OSError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(os, "fork", refused)
    return lambda: None


@pytest.mark.parametrize("no_helper", [another_thread_alive, no_fork_to_be_had])
def test_a_scan_that_forks_no_helper_runs_its_whole_jobs_itself(make_repo, tmp_path, monkeypatch, no_helper):
    """--jobs 8 over two processes, but no helper could be forked: the 8 gits all run here, not half of them."""
    repos = mixed_repos(make_repo, 8)
    expected = rows(scan(repos, jobs=2, processes=1))
    git, seen = barrier_git(tmp_path, 8)
    done = no_helper(monkeypatch)
    try:
        report = scan(repos, jobs=8, processes=2, git=git)
    finally:
        done()
    assert rows(report) == expected
    assert max(int(n) for n in seen.read_text().split()) == 8, "fewer gits ran at once than --jobs allows"


@pytest.mark.parametrize("jobs, processes, count, wait", [(8, 3, 12, 10), (5, 4, 16, 3)])
def test_with_helpers_the_scan_runs_its_jobs_in_all_and_never_more(make_repo, tmp_path, jobs, processes, count,
                                                                    wait):
    """--jobs 8 over three processes: 2 + 2 in the helpers and 4 here, never 3 each (9 gits at once); --jobs 5
    over four: 1 + 1 + 1 and 2 here, never 2 each (7: each share rounded up)."""
    repos = mixed_repos(make_repo, count)
    git, seen = barrier_git(tmp_path, jobs + 1, seconds=wait)  # one git more, if one may start, gets `wait` s to show
    report = scan(repos, jobs=jobs, processes=processes, git=git)
    assert all(row.error is None for row in report.repos)
    assert max(int(n) for n in seen.read_text().split()) == jobs


def test_a_git_whose_output_a_hooks_daemon_holds_open_is_read_at_the_limit_not_called_hung(make_repo, tmp_path):
    """git exits, but a process it started keeps its stdout open: its status is complete, never 'did not finish'.
    The scan runs in a fresh interpreter: its keeper, whose group the scan kills at its end, is forked only there."""
    daemons = tmp_path / "daemons"
    holder = wrapper(tmp_path, f'case "$PWD $*" in *held*status*) sleep 300 & echo $! >> "{daemons}";; esac')
    handles = [make_repo("held"), make_repo("other")]
    (handles[0].path / "README.md").write_text("edited\n")
    repos = [repo_of(handle) for handle in handles]
    held = scan_in_a_fresh_process(repos, jobs=2, processes=1, git=holder, more={"git_timeout": LIMIT})["rows"]
    assert held == rows(scan(repos, jobs=2, processes=1))
    assert held[0]["modified"] == 1 and held[0]["error"] is None
    assert all(wait_gone(int(pid)) for pid in daemons.read_text().split())


def test_a_git_whose_output_waited_while_the_scan_was_held_up_is_read_whole_not_killed(make_repo, tmp_path):
    """The scan's loop held up past the limit (a progress line on a frozen terminal, here a slow callback) while a
    git's output filled its pipe: that git is writing, not hung."""
    big = make_repo("big")
    for i in range(1500):  # about 150 KB of porcelain: more than a pipe holds, so this git waits for the scan
        (big.path / f"untracked-file-with-a-long-name-{i:05d}-{'x' * 40}").write_text("")
    small = make_repo("a-small")
    held_up = []
    stalled = tmp_path / "stalled"
    # The big repo's status starts once the scan is held up, so it is the one whose output waits (on a busy
    # machine it could otherwise be read whole before the small one's ends).
    gated = wrapper(tmp_path, f'case "$*" in *"{big.path}"*status*) until [ -e "{stalled}" ]; do sleep 0.05; done;; esac')

    def slow_callback(status):
        if not held_up:
            held_up.append(status.name)
            stalled.touch()
            time.sleep(LIMIT + 2)  # the stall under test, not a wait for something to happen

    report = scan([repo_of(small), repo_of(big)], jobs=2, processes=1, git_timeout=LIMIT, on_result=slow_callback,
                  git=gated)
    assert held_up == ["a-small"]
    row = report.repos[1]
    assert row.error is None and row.untracked == 1500, row.error


def test_the_docs_state_the_limits_the_scan_has():
    text = " ".join((ROOT / "docs" / "status-and-scan.md").read_text().split())
    assert f"did not finish within {GIT_TIMEOUT_S:g} s: killed" in text
    assert f"sent nothing for {2 * GIT_TIMEOUT_S + HELPER_SLACK_S:g} s: killed" in text


class FrozenTerminal:
    """A live line's stream whose writes block until released (a terminal stopped with Ctrl-S)."""

    def __init__(self) -> None:
        self.entered, self.released = threading.Event(), threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.released.wait(120)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_a_ticker_stuck_writing_to_a_frozen_terminal_makes_the_scan_fork_nothing_not_hang(make_repo, monkeypatch):
    from lib.progress import Progress

    repos = mixed_repos(make_repo, 6)
    expected = rows(scan(repos, jobs=2, processes=1))
    forks = []
    real_fork = os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or real_fork())
    terminal = FrozenTerminal()
    progress = Progress("scanning", 6, stream=terminal, live=True)
    try:
        assert terminal.entered.wait(60), "the ticker never drew"
        report = scan(repos, jobs=2, processes=3)
    finally:
        terminal.released.set()
        progress.close()
    assert forks == [] and rows(report) == expected


def test_a_slow_but_healthy_git_is_read_with_the_default_limits_never_called_an_error(make_repo, tmp_path):
    """An fsmonitor hook that answers after 32 s (watchman on a big, cold tree; a loaded machine): the limit is
    there so a scan never hangs, not to make a slow repo an error. Its edit is shown, as plain git shows it."""
    handle = make_repo("slow")
    (handle.path / "README.md").write_text("edited\n")
    hook = tmp_path / "slow-hook"
    hook.write_text("#!/bin/sh\nsleep 32\nexit 1\n")  # then "don't know": git looks at every file itself
    hook.chmod(0o755)
    handle.git("config", "core.fsmonitor", str(hook))
    row = scan([repo_of(handle)], jobs=2, processes=1).repos[0]
    assert row.error is None and row.modified == 1 and not row.clean
