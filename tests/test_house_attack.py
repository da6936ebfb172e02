"""A hostile review of the house refactors (issue 22): what a user sees when things stop, fail or drift."""
from __future__ import annotations

import signal
import subprocess

from tests.conftest import stop_when, wait_gone
from tests.sync_fixtures import slow_fsmonitor, wait_for_file
from tests.test_sync_stop import reaped, results_of, start_sync


def test_a_stop_in_syncs_closing_scan_still_says_what_the_sync_did_and_its_warnings(home, make_repo, tmp_path):
    """The repos were synced and recorded; only the scan after it was stopped. The stop's one line came alone:
    the sync's own warnings (a results file set aside) and what it did were never said (the host path says it)."""
    repo = make_repo("steady")
    subprocess.run(["git", "-C", str(repo.path), "checkout", "-q", "-b", "feature"], check=True)
    repo.push_from_elsewhere(tmp_path, {"new.txt": "1"})  # main behind: moved with update-ref, no status
    pid_file = slow_fsmonitor(repo.path, tmp_path)  # only the closing scan's `git status` runs it
    home.add(repo)
    results = home.path / "state" / "sync-results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("{not json")
    sync = start_sync(tmp_path)
    out, _ = stop_when(sync, lambda: wait_for_file(pid_file, 60), signal.SIGTERM, seconds=90)
    with reaped(int(pid_file.read_text().split()[0])):
        assert sync.returncode == 143 and "Traceback" not in out, out
        assert "interrupted: scan stopped (SIGTERM)" in out.splitlines()[-1], out
        assert "set aside as sync-results.json.corrupt" in out, out
        assert "every repo had synced (synced 1 repos" in out and "1 updated" in out, out
        assert results_of(home)["steady"]["status"] == "updated"
        assert wait_gone(int(pid_file.read_text().split()[0]), 30)


def test_a_stop_in_test_alls_closing_scan_leaves_the_runs_junit_not_an_all_red_one(home, make_repo, tmp_path):
    """Every repo was tested and recorded; the status read after the tests (what --changed records) was
    stopped. The JUnit file CI reads still said every repo errored ("did not finish"), and the run's own
    warnings went unsaid: the stop's line came alone."""
    import sys
    from xml.etree import ElementTree

    from tests.conftest import ROOT

    ran = tmp_path / "tests-ran"
    repo = make_repo("r", {"Makefile": f"test:\n\t@touch '{ran}'; echo '1 passed in 0.01s'\n"})
    pid_file = slow_fsmonitor(repo.path, tmp_path, once=ran)  # holds only the status read after the tests
    home.add(repo, language="make")
    bad = home.path / "state" / "test-results.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("{not json")
    report = tmp_path / "out.xml"
    run = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_all_tests.py"), "--changed", "--junit-xml",
                            str(report)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = stop_when(run, lambda: wait_for_file(pid_file, 60), signal.SIGTERM, seconds=90)
    with reaped(int(pid_file.read_text().split()[0])):
        assert run.returncode == 143 and "Traceback" not in out, out
        assert "interrupted: scan stopped (SIGTERM)" in out.splitlines()[-1], out
        assert "set aside as test-results.json.corrupt" in out, out
        suite = ElementTree.parse(report).getroot().find("testsuite")
        assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("1", "0", "0"), \
            ElementTree.tostring(suite)
        assert home.state("test-results.json")["results"][0]["status"] == "passed"


def test_no_module_but_lib_signals_lists_the_stop_signals():
    """Issue 22: one handling of the stop signals. The pool that holds them while it forks, the progress
    ticker that holds them for good and the host's sync driver each kept a list of their own: one more stop
    signal added to lib.signals would be raised there and still hit a fork half noted."""
    import re

    from tests.conftest import ROOT

    listed = re.compile(r"\bSIG(INT|TERM|HUP)\b[,\s]+signal\.SIG(INT|TERM|HUP)\b[,\s]+signal\.SIG(INT|TERM|HUP)\b")
    sources = sorted([*(ROOT / "lib").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")])  # the workers' wrapper too
    own = sorted(str(path.relative_to(ROOT)) for path in sources
                 if path.name != "signals.py" and listed.search(path.read_text(encoding="utf-8")))
    assert own == []


def test_no_module_but_lib_signals_computes_a_signals_exit_code():
    """Gap 4: 128 + the signal is lib.signals.exit_code; the workers' wrapper and the runner wrote it by hand."""
    import ast

    from tests.conftest import ROOT

    found = []
    for path in sorted([*(ROOT / "lib").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]):
        where = str(path.relative_to(ROOT))
        if path.name == "signals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            made = ([node.left, node.right] if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)
                    else [node.left] if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) else [])
            if any(isinstance(side, ast.Constant) and side.value == 128 for side in made):  # 128 + s, 128 - (-s)
                found.append(f"{where}:{node.lineno}")
    assert found == []


def test_host_add_on_a_symlinked_hosts_toml_writes_the_file_it_points_to(home, inv, tmp_path):
    """A hosts.toml kept in a dotfiles repo and linked in: the atomic rename replaced the link with a file of
    its own, so the dotfiles copy never got the host and the link was gone (its mode came from the target)."""
    import os

    kept = tmp_path / "dotfiles" / "hosts.toml"
    kept.parent.mkdir()
    kept.write_text('[hosts.old]\nhost = "h"\nworkspace = "w"\n')
    kept.chmod(0o640)
    link = home.path / "config" / "hosts.toml"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(kept)
    result = inv("host.add", "new", "--host", "10.0.0.5", "--workspace", "/srv/src")
    assert result.code == 0, result.err
    assert link.is_symlink() and os.readlink(link) == str(kept)
    assert "[hosts.new]" in kept.read_text() and "[hosts.old]" in kept.read_text()
    assert kept.stat().st_mode & 0o777 == 0o640
    assert inv("host.list").code == 0


def test_a_stop_in_test_alls_status_read_before_the_tests_says_not_run_interrupted_in_junit(home, make_repo, tmp_path):
    """Stopped before any test ran: as a run stopped by Ctrl-C (every repo `skipped: not run: interrupted`, the
    suite `interrupted by SIGTERM`), not the report of a run killed outright (every repo an error)."""
    import sys
    from xml.etree import ElementTree

    from tests.conftest import ROOT

    ran = tmp_path / "tests-ran"
    repo = make_repo("r", {"Makefile": f"test:\n\t@touch '{ran}'; echo '1 passed in 0.01s'\n"})
    pid_file = slow_fsmonitor(repo.path, tmp_path)
    home.add(repo, language="make")
    report = tmp_path / "out.xml"
    run = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "run_all_tests.py"), "--changed", "--junit-xml",
                            str(report)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = stop_when(run, lambda: wait_for_file(pid_file, 60), signal.SIGTERM, seconds=90)
    with reaped(int(pid_file.read_text().split()[0])):
        assert run.returncode == 143 and "Traceback" not in out, out
        assert not ran.exists()
        suite = ElementTree.parse(report).getroot().find("testsuite")
        assert "interrupted by SIGTERM" in suite.get("name"), ElementTree.tostring(suite)
        assert (suite.get("errors"), suite.get("skipped")) == ("0", "1"), ElementTree.tostring(suite)


def _interrupted() -> BaseException:
    return KeyboardInterrupt()


def test_the_workers_main_turns_each_error_and_a_ctrl_c_into_its_lines_and_exit_code(monkeypatch, capsys):
    """Gap 2: the orchestrator's main mapped errors by hand and let a stopped run (signals.Stopped) end in a
    traceback; a Ctrl-C was exit 130 without a word. Every error goes through lib.errors.script_main."""
    import sys

    from tests.conftest import ROOT
    from tests.test_front_doors import ERRORS

    package = str(ROOT / "scripts" / "proof-workers")
    if package not in sys.path:
        sys.path.insert(0, package)
    from orchestrator import cli

    cases = {**ERRORS, "ctrl-c": (_interrupted, 130, "interrupted (SIGINT)\n")}
    for name, (make_error, code, err) in cases.items():
        def verb(args, out, make_error=make_error):
            raise make_error()

        monkeypatch.setitem(cli.VERBS, "status", verb)
        assert cli.main(["status"]) == code, name
        captured = capsys.readouterr()
        assert (captured.err, captured.out) == (err, ""), name
    assert cli.main(["no-such-verb"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_a_script_stopped_by_ctrl_c_outside_its_run_says_so_in_one_line(home, monkeypatch, capsys):
    """A Ctrl-C before a script's run begins (loading the config) is one line and 130, never a traceback."""
    import pytest

    from tests.test_front_doors import failing_paths, script_main

    for script in ("scan_all_repos", "sync_all_repos", "run_all_tests"):
        failing_paths(monkeypatch, _interrupted)
        try:
            code = script_main(script)([])
        except KeyboardInterrupt:
            pytest.fail(f"{script}: the Ctrl-C escaped main")
        assert code == 130, script
        assert capsys.readouterr().err == "interrupted (SIGINT)\n", script


def test_no_module_reaches_lib_procs_or_lib_signals_through_lib_runner():
    """Gap 7: the workers and lib.testall took processes_tagged, group_members and signal_name from lib.runner,
    which only imports them for its own use: a shim that hides where the /proc reader and the signals live."""
    import ast

    import lib.procs
    import lib.signals
    from tests.conftest import ROOT

    elsewhere = {name for module in (lib.procs, lib.signals) for name in vars(module)
                 if not name.startswith("_") and getattr(module, name).__class__.__name__ == "function"
                 and getattr(module, name).__module__ == module.__name__}
    found = []
    for path in sorted([*(ROOT / "lib").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]):
        where = str(path.relative_to(ROOT))
        if where == "lib/runner.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr in elsewhere and isinstance(node.value, ast.Name)
                    and node.value.id == "runner"):
                found.append(f"{where}:{node.lineno}: runner.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "lib.runner":
                found += [f"{where}:{node.lineno}: from lib.runner import {alias.name}"
                          for alias in node.names if alias.name in elsewhere]
    assert found == []


def test_the_workers_front_door_starts_no_process_and_builds_no_tmux_text():
    """Gap 3: `attach` ran its tmux commands from cli.py and `launch` composed the socket flags of its
    `launched: tmux ... attach` line there, beside show.socket_args' own copy of the same rule."""
    import ast

    from tests.conftest import ROOT

    tree = ast.parse((ROOT / "scripts" / "proof-workers" / "orchestrator" / "cli.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    named = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not imported & {"subprocess", "orchestrator.tmux"} and "SOCKET_ENV" not in named


def test_launch_names_the_attach_command_with_the_socket_attach_itself_uses(monkeypatch, tmp_path):
    """The `launched:` line and `attach` read the socket by one rule: a path is -S, a name -L, none the default;
    a path with a blank is quoted so the line can be pasted."""
    import sys
    from types import SimpleNamespace

    from tests.conftest import ROOT

    package = str(ROOT / "scripts" / "proof-workers")
    if package not in sys.path:
        sys.path.insert(0, package)
    from orchestrator import show

    monkeypatch.delenv("ORCHESTRATOR_TMUX_SOCKET", raising=False)
    run = SimpleNamespace(session="proof-x", lead=SimpleNamespace(tmux_socket=None))
    assert show.attach_command(run) == "tmux attach -t proof-x"
    run.lead.tmux_socket = "proof-workers"
    assert show.attach_command(run) == "tmux -L proof-workers attach -t proof-x"
    monkeypatch.setenv("ORCHESTRATOR_TMUX_SOCKET", str(tmp_path / "my sockets" / "s"))
    assert show.attach_command(run) == f"tmux -S '{tmp_path}/my sockets/s' attach -t proof-x"


def test_repo_local_git_vars_include_the_numbered_config_pairs_and_no_caller_filters_them_itself():
    """Gap 11: the wrapper (twice) and the workers' worktrees each filtered GIT_CONFIG_KEY_n/VALUE_n on their
    own, while lib's git env kept them: a build that sets GIT_CONFIG_COUNT for its own pair then also took an
    inherited GIT_CONFIG_KEY_1 (say core.hooksPath) that nobody meant for it."""
    from lib.gitstatus import git_env, without_repo_local_git_vars
    from tests.conftest import ROOT

    inherited = {"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "core.hooksPath", "GIT_CONFIG_VALUE_0": "/evil",
                 "GIT_CONFIG_KEY_1": "a.b", "GIT_CONFIG_VALUE_1": "c", "GIT_DIR": "/elsewhere", "HOME": "/h",
                 "GIT_CONFIG_GLOBAL": "/g", "GIT_CONFIG_KEYS": "not numbered, not git's"}
    assert without_repo_local_git_vars(inherited) == {"HOME": "/h", "GIT_CONFIG_GLOBAL": "/g",
                                                       "GIT_CONFIG_KEYS": "not numbered, not git's"}
    import os
    os.environ["GIT_CONFIG_KEY_7"] = "x.y"
    try:
        assert "GIT_CONFIG_KEY_7" not in git_env()
    finally:
        del os.environ["GIT_CONFIG_KEY_7"]
    copies = sorted(str(path.relative_to(ROOT)) for path in [*(ROOT / "lib").rglob("*.py"),
                                                             *(ROOT / "scripts").rglob("*.py")]
                    if path.name != "gitstatus.py" and '"GIT_CONFIG_KEY_"' in path.read_text(encoding="utf-8"))
    assert copies == []


def test_no_module_but_lib_procs_opens_a_file_under_proc():
    """Gap 11: statefile read /proc/self/status (the umask) itself; tests/test_procs.py only looked for
    /proc/PID paths, so a read of /proc/self slipped by."""
    import re

    from tests.conftest import ROOT

    opened = re.compile(r"""open\(\s*f?["']/proc/""")
    found = sorted(str(path.relative_to(ROOT)) for path in [*(ROOT / "lib").rglob("*.py"),
                                                            *(ROOT / "scripts").rglob("*.py")]
                   if path.name != "procs.py" and opened.search(path.read_text(encoding="utf-8")))
    assert found == []


def test_the_umask_read_from_proc_is_the_process_umask():
    """statefile's new files get the umask's mode: the value lib.procs reads is the one os.umask sets."""
    import os

    from lib import procs, statefile

    old = os.umask(0o027)
    try:
        assert procs.umask() == 0o027 == statefile.current_umask()
    finally:
        os.umask(old)
