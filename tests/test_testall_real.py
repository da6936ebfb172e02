"""test-all on repos like real projects: their own environments and commands, the suite's own counts."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import ROOT, require_tool
from tests.test_sync_speed import git_log  # noqa: F401  (a fixture)

ENV_PROBE = {"Makefile": "test:\n\t@echo PATH=$$PATH; echo VIRTUAL_ENV=$${VIRTUAL_ENV-unset}; "
                         "echo PYTHONPATH=$${PYTHONPATH-unset}; echo PYTHONHOME=$${PYTHONHOME-unset}\n"}


def log_dir() -> Path:
    return Path(os.environ["ORCHESTRATOR_LOG_DIR"])


def probe_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if line.split("=", 1)[0] in ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))


def test_our_venv_and_python_variables_never_reach_a_repos_commands(home, make_repo, inv, monkeypatch, tmp_path):
    # As under `make test-all`: the Makefile puts this checkout's .venv/bin first, an activated venv sets the rest.
    venv_bin = str(ROOT / ".venv" / "bin")
    running_bin = os.path.join(sys.prefix, "bin")
    elsewhere = tmp_path / "tools-bin"
    elsewhere.mkdir()
    monkeypatch.setenv("PATH", os.pathsep.join([venv_bin, running_bin, str(elsewhere), os.environ["PATH"]]))
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PYTHONHOME", sys.base_prefix)
    repo = make_repo("probe", ENV_PROBE)
    home.write_repos([{"name": "probe", "local": str(repo.path), "language": "make"}])
    ours = {os.path.realpath(venv_bin), os.path.realpath(running_bin)}
    for args, log in ((("test", "probe"), "orchestrator-test-probe.log"),
                      (("test-all",), "orchestrator-test-probe.log"),
                      (("workflow", "test", "probe"), "orchestrator-test-probe.log"),
                      (("foreach", "make -s test"), "orchestrator-foreach-probe.log")):
        result = inv(*args)
        assert result.code == 0, (args, result.out, result.err)
        seen = probe_lines((log_dir() / log).read_text())
        entries = seen["PATH"].split(os.pathsep)
        assert not ours & {os.path.realpath(e) for e in entries if e}, (args, seen["PATH"])
        assert str(elsewhere) in entries, args  # every other entry stays
        assert (seen["VIRTUAL_ENV"], seen["PYTHONPATH"], seen["PYTHONHOME"]) == ("unset",) * 3, (args, seen)


PYTEST_SITE = str(Path(pytest.__file__).resolve().parent.parent)
USES_DEP = {"test_dep.py": "import mydep\n\n\ndef test_dep():\n    assert mydep.VALUE == 42\n",
            "pyproject.toml": "[project]\nname = 'uses-dep'\nversion = '0'\n",
            ".gitignore": ".venv/\nvenv/\n"}


def make_venv(repo: Path, name: str = ".venv") -> Path:
    """A repo's own virtualenv: a real `python -m venv`, pytest reachable through a .pth, `mydep` only here."""
    venv = repo / name
    subprocess.run([os.path.join(sys.base_prefix, "bin", "python3"), "-m", "venv", "--without-pip", str(venv)],
                   check=True, capture_output=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "outer.pth").write_text(PYTEST_SITE + "\n")
    (site / "mydep.py").write_text("VALUE = 42\n")
    return venv


def on_path_first(monkeypatch, *dirs: str) -> None:
    monkeypatch.setenv("PATH", os.pathsep.join([*dirs, os.environ["PATH"]]))


def test_python_tests_run_in_the_repos_own_venv_and_the_log_says_why(home, make_repo, inv, monkeypatch):
    on_path_first(monkeypatch, str(ROOT / ".venv" / "bin"))  # as make does
    dotvenv = make_repo("dotvenv", USES_DEP)
    plainvenv = make_repo("plainvenv", USES_DEP)
    make_venv(dotvenv.path)
    make_venv(plainvenv.path, "venv")
    home.add(dotvenv, plainvenv)
    result = inv("test-all")
    assert result.code == 0, result.out + result.err
    assert "# python: .venv/bin/python -m pytest (the repo has .venv)" in (
        log_dir() / "orchestrator-test-dotvenv.log").read_text()
    plain_log = (log_dir() / "orchestrator-test-plainvenv.log").read_text()
    assert "# python: venv/bin/python -m pytest (the repo has venv)" in plain_log and "1 passed" in plain_log
    assert {r["status"] for r in home.state("test-results.json")["results"]} == {"passed"}


def test_python_without_venv_uses_uv_with_uv_lock_else_python3(home, make_repo, inv, monkeypatch, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "uv").write_text("#!/bin/sh\necho \"uv called with: $*\"\n")
    (tools / "uv").chmod(0o755)
    plain = {"test_x.py": "def test_x():\n    assert True\n", "pyproject.toml": "[project]\nname = 'x'\n"}
    locked = make_repo("locked", {**plain, "uv.lock": "version = 1\n"})
    bare = make_repo("bare", plain)
    home.add(locked, bare)
    on_path_first(monkeypatch, str(tools))
    assert inv("test-all").code == 0
    locked_log = (log_dir() / "orchestrator-test-locked.log").read_text()
    assert "# python: uv run pytest (the repo has uv.lock and uv is on PATH)" in locked_log
    assert "uv called with: run pytest -q" in locked_log
    bare_log = (log_dir() / "orchestrator-test-bare.log").read_text()
    assert "# python: python3 -m pytest (no runnable .venv/bin/python or venv/bin/python, no uv.lock with uv on PATH)" \
        in bare_log
    (tools / "uv").unlink()  # uv.lock without uv: python3
    assert inv("test", "locked").code == 0
    assert "# python: python3 -m pytest" in (log_dir() / "orchestrator-test-locked.log").read_text()


NODE_SUITE = {"package.json": json.dumps({"name": "js", "version": "1.0.0", "scripts": {"test": "node --test"}}),
              "test/a.test.js": "const test = require('node:test');\nconst assert = require('node:assert');\n"
                                "test('a', () => assert.ok(true));\ntest('b', () => assert.ok(true));\n"
                                "test('c', {skip: true}, () => {});\n",
              ".gitignore": "node_modules/\n"}
LOCK = json.dumps({"name": "js", "version": "1.0.0", "lockfileVersion": 3, "requires": True,
                   "packages": {"": {"name": "js", "version": "1.0.0"}}})


def test_javascript_runs_npm_ci_only_when_node_modules_is_missing(home, make_repo, inv):
    require_tool("node")
    require_tool("npm")
    installed = make_repo("installed", {**NODE_SUITE, "package-lock.json": LOCK})
    (installed.path / "node_modules").mkdir()
    fresh = make_repo("fresh", {**NODE_SUITE, "package-lock.json": LOCK})
    unlocked = make_repo("unlocked", NODE_SUITE)
    home.add(installed, fresh, unlocked)
    result = inv("test-all")
    assert result.code == 0, result.out + result.err
    logs = {name: (log_dir() / f"orchestrator-test-{name}.log").read_text()
            for name in ("installed", "fresh", "unlocked")}
    assert "# javascript: node_modules present, no install" in logs["installed"]
    assert "# javascript: node_modules missing: npm ci" in logs["fresh"]
    assert "no package-lock.json: npm test without installing" in logs["unlocked"]
    assert all("# pass 2" in text for text in logs.values())


def test_a_repos_own_commands_replace_the_workflows_run_steps(home, make_repo, inv):
    special = make_repo("special", {"Makefile": "test:\n\t@echo the make test step; exit 9\n",
                                    "check.sh": "echo \"own test of $1\"\n"})
    usual = make_repo("usual", {"Makefile": "test:\n\t@echo usual make test\nall:\n\t@true\n"})
    home.write_repos([{"name": "special", "local": str(special.path), "language": "make",
                       "description": "x'; touch pwned; '",
                       "commands": {"test": "sh check.sh {{repo.description}} && echo {{repo.name}} done",
                                    "build": "echo own build"}},
                      {"name": "usual", "local": str(usual.path), "language": "make"}])
    result = inv("test-all")
    assert result.code == 0, result.out + result.err
    log = (log_dir() / "orchestrator-test-special.log").read_text()
    assert "own test of x'; touch pwned; '" in log and "special done" in log and "the make test step" not in log
    assert not (special.path / "pwned").exists()
    assert "usual make test" in (log_dir() / "orchestrator-test-usual.log").read_text()
    entry = next(r for r in home.state("test-results.json")["results"] if r["repo"] == "special")
    assert entry["command"].startswith("sh check.sh ") and entry["status"] == "passed"
    dry = inv("build", "special", "--dry-run")
    assert f"cd {special.path} && echo own build" in dry.out
    assert inv("workflow", "status", "special").code == 0  # a workflow it names no command for: the steps


def test_bad_per_repo_commands_are_config_errors_before_anything_runs(home, make_repo, inv):
    repo = make_repo("r")
    for commands, expected in (
            ("make test", "repositories[0] (r).commands: must be an object like"),
            ({"test": ""}, "repositories[0] (r).commands.test: must be a non-empty string"),
            ({"test": ["make"]}, "repositories[0] (r).commands.test: must be a non-empty string"),
            ({"-x": "make"}, "is not a workflow name"),
            ({"test": "make {{repo.nope}}"}, "commands.test: unknown variable {{repo.nope}}"),
            ({"test": "echo '{{repo.name}}'"}, "commands.test: {{repo.name}} is inside single quotes")):
        home.write_repos([{"name": "r", "local": str(repo.path), "language": "make", "commands": commands}])
        result = inv("test-all")
        assert result.code == 2, (commands, result.out, result.err)
        assert expected in result.err and result.err.startswith("error: "), (commands, result.err)
        assert not (log_dir() / "orchestrator-test-r.log").exists()


COUNT_CASES = {
    "pytest -q": ("....F\n1 failed, 615 passed, 3 skipped, 2 warnings in 12.30s\n", (615, 1, 3, 0)),
    "pytest framed": ("= 2 failed, 5 passed, 1 xfailed, 1 xpassed, 1 error in 123.45s (0:02:03) =\n", (6, 2, 1, 1)),
    "pytest colored": ("\x1b[31m\x1b[1m2 errors\x1b[0m\x1b[31m in 0.05s\x1b[0m\n", (0, 0, 0, 2)),
    "pytest nothing": ("no tests ran in 0.01s\n", (0, 0, 0, 0)),
    "jest": ("Test Suites: 1 failed, 1 passed, 2 total\nTests:       1 failed, 1 skipped, 1 todo, 3 passed, 6 total\n"
             "Snapshots:   0 total\nTime:        1.2 s\nRan all test suites.\n", (3, 1, 2, 0)),
    "vitest": (" Test Files  1 failed | 1 passed (2)\n      Tests  1 failed | 3 passed | 1 skipped (5)\n"
               "   Start at  12:00:00\n   Duration  1.23s\n", (3, 1, 1, 0)),
    "node tap": ("# tests 4\n# suites 0\n# pass 2\n# fail 1\n# cancelled 1\n# skipped 0\n# todo 0\n"
                 "# duration_ms 30.1\n", (2, 1, 0, 1)),
    "node spec": ("ℹ tests 3\nℹ suites 0\nℹ pass 3\nℹ fail 0\nℹ cancelled 0\nℹ skipped 0\nℹ todo 0\n",
                  (3, 0, 0, 0)),
    "cargo, summed": ("test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; "
                      "finished in 0.17s\n"
                      "\nerror: test failed\n"
                      "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n",
                      (5, 1, 1, 0)),
    "unittest": ("..F.s\n---\nRan 5 tests in 0.012s\n\nFAILED (failures=1, errors=1, skipped=1, "
                 "expected failures=1)\n", (1, 1, 2, 1)),
    "unittest ok": ("Ran 1 test in 0.000s\n\nOK\n", (1, 0, 0, 0)),
    "go -v": ("=== RUN   TestA\n--- PASS: TestA (0.00s)\n=== RUN   TestB\n    --- FAIL: TestB/sub (0.00s)\n"
              "--- FAIL: TestB (0.00s)\n--- SKIP: TestC (0.00s)\nFAIL\nFAIL\texample.com/x\t0.01s\n", (1, 2, 1, 0)),
    "go without -v": ("--- FAIL: TestB (0.00s)\nFAIL\texample.com/x\t0.01s\n", None),
    "make": ("running checks\n1 of 3 checks failed\nmake: *** [Makefile:7: test] Error 1\n", None),
    "a summary-like line mid-log, then pytest": ("1 passed in 0.1s\nmore\n= 3 passed in 0.2s =\n", (3, 0, 0, 0)),
}


def test_counts_are_read_from_each_runners_own_summary(tmp_path):
    from lib.testcounts import parse_counts, read_counts

    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    assert read_counts(fifo) is None and read_counts(tmp_path / "missing.log") is None  # never blocks
    (tmp_path / "big.log").write_bytes(b"x" * (2 << 20) + b"\n= 3 passed in 0.2s =\n")
    assert read_counts(tmp_path / "big.log")["passed"] == 3

    for name, (text, expected) in COUNT_CASES.items():
        counts = parse_counts(text)
        got = None if counts is None else (counts["passed"], counts["failed"], counts["skipped"], counts["errors"])
        assert got == expected, name
    assert parse_counts(COUNT_CASES["cargo, summed"][0], whole=False) is None  # a sum needs every line


def test_pytest_and_node_counts_reach_the_results_file_json_table_and_junit(home, make_repo, inv, tmp_path):
    suite = {"test_x.py": "import pytest\n\n" + "".join(f"def test_ok{i}():\n    pass\n\n" for i in range(3))
             + "def test_bad1():\n    assert 1 == 2\n\ndef test_bad2():\n    assert 0\n\n"
             + "@pytest.mark.skip\ndef test_skip():\n    pass\n",
             "pyproject.toml": "[project]\nname = 'x'\n", ".gitignore": ".venv/\n"}
    py = make_repo("py", suite)
    make_venv(py.path)
    plain = make_repo("plain", {"Makefile": "test:\n\t@echo fine\n"})
    repos = [{"name": "py", "local": str(py.path)}, {"name": "plain", "local": str(plain.path), "language": "make"}]
    if shutil.which("node"):
        repos.append({"name": "js", "local": str(make_repo("js", {**NODE_SUITE, "package-lock.json": LOCK}).path)})
    home.write_repos(repos)
    junit = tmp_path / "junit.xml"
    table = inv("test-all", "--junit-xml", str(junit))
    assert table.code == 1
    row = next(line for line in table.out.splitlines() if line.startswith("py "))
    assert "2 failed, 3 passed, 1 skipped; exit 1" in row
    results = {r["repo"]: r for r in home.state("test-results.json")["results"]}
    assert results["py"]["counts"] == {"passed": 3, "failed": 2, "skipped": 1, "errors": 0}
    assert results["plain"]["counts"] is None
    if "js" in results:
        assert results["js"]["counts"] == {"passed": 2, "failed": 0, "skipped": 1, "errors": 0}
    cases = {c.get("name"): c for c in ElementTree.parse(junit).iter("testcase")}
    assert {p.get("name"): p.get("value") for p in cases["py"].iter("property")} == {
        "passed": "3", "failed": "2", "skipped": "1", "errors": "0"}
    assert cases["plain"].find("properties") is None
    as_json = json.loads(inv("test-all", "--only", "py", "--json").out)
    assert as_json["results"][0]["counts"]["failed"] == 2 and as_json["summary"]["failed"] == 1


def test_a_stopped_runs_junit_names_the_killed_and_the_never_started_repos(home, make_repo, tmp_path):
    import time

    from tests.conftest import stop_when

    hang = {"Makefile": "test:\n\t@touch $(CURDIR).started; exec sleep 60\n"}
    repos = [make_repo("quick", {"Makefile": "test:\n\t@echo ok\n"}),
             *(make_repo(f"hang{i}", hang) for i in range(3))]
    home.add(*repos, language="make")
    junit = tmp_path / "junit.xml"
    err = tmp_path / "stderr.txt"
    began = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "test-all", "--jobs", "2",
                              "--junit-xml", str(junit)], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=open(err, "wb"))
    started = [Path(f"{r.path}.started") for r in repos[1:]]
    stop_when(child, lambda: sum(p.exists() for p in started) == 2 and b"quick: passed" in err.read_bytes())
    wall = time.monotonic() - began
    assert child.returncode == 130, err.read_text()
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite.get("name") == "orchestrator test-all (interrupted by SIGINT)"
    assert {p.get("name"): p.get("value") for p in suite.find("properties")} == {"interrupted": "SIGINT"}
    assert [suite.get(key) for key in ("tests", "failures", "errors", "skipped")] == ["4", "0", "2", "1"]
    assert 0 < float(suite.get("time")) <= wall
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    killed = [name for name, c in cases.items() if c.find("error") is not None]
    never = [name for name, c in cases.items() if c.find("skipped") is not None]
    assert sorted(killed + never) == ["hang0", "hang1", "hang2"] and len(killed) == 2
    assert all(cases[n].find("error").get("message") == "interrupted" for n in killed)
    assert cases[never[0]].find("skipped").get("message") == "not run: interrupted"
    assert not Path(f"{repos[1].path.parent / never[0]}.started").exists()
    assert cases["quick"].find("error") is None and cases["quick"].find("skipped") is None
    assert [r["repo"] for r in home.state("test-results.json")["results"]] == ["quick"]  # only what finished


def test_junit_time_is_the_runs_wall_time_not_the_sum(home, make_repo, inv, tmp_path):
    slow = {"Makefile": "test:\n\t@sleep 1\n"}
    home.add(*(make_repo(f"s{i}", slow) for i in range(3)), language="make")
    junit = tmp_path / "junit.xml"
    assert inv("test-all", "--jobs", "3", "--junit-xml", str(junit)).code == 0
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    total = sum(float(c.get("time")) for c in suite.iter("testcase"))
    assert float(suite.get("time")) < total  # three 1 s repos side by side: about 1 s, not 3


def test_a_skipped_repo_writes_no_log_and_every_command_reads_dev_null(home, make_repo, inv, tmp_path):
    skipped = make_repo("skipped", {"README.md": "x"})
    reader = make_repo("reader", {"Makefile": "test:\n\t@cat; echo stdin=$$(readlink /proc/self/fd/0)\n"})
    home.write_repos([{"name": "skipped", "local": str(skipped.path), "language": "make",
                       "commands": {"test": "no-such-tool-here --run"}},
                      {"name": "reader", "local": str(reader.path), "language": "make"}])
    for args in (("test-all",), ("test", "skipped")):
        result = inv(*args)
        assert result.code == 0, result.out + result.err
        assert not (log_dir() / "orchestrator-test-skipped.log").exists(), args
        assert "log: " not in result.out
    entry = next(r for r in home.state("test-results.json")["results"] if r["repo"] == "skipped")
    assert entry["status"] == "skipped" and entry["log"] is None
    assert "stdin=/dev/null" in (log_dir() / "orchestrator-test-reader.log").read_text()
    junit = tmp_path / "junit.xml"
    inv("test-all", "--junit-xml", str(junit))
    assert "log: none" in junit.read_text()


def test_make_targets_pass_args_through(home, make_repo, tmp_path):
    require_tool("make")
    home.add(make_repo("alpha", {"Makefile": "test:\n\t@echo alpha tested\n"}), language="make",
             tags=["x"])
    env = {**os.environ, "ORCHESTRATOR_HOME": str(home.path)}
    junit = tmp_path / "out.xml"

    def make(*args: str) -> subprocess.CompletedProcess[str]:
        # -o: this checkout's venv is shared and set up already; make must not try to rebuild it.
        return subprocess.run(["make", "-s", "-o", ".venv/.installed", "-C", str(ROOT), *args],
                              capture_output=True, text=True, env=env, timeout=300)

    result = make("test-all", f"ARGS=--tag x --junit-xml {junit}")
    assert result.returncode == 0, result.stderr
    assert junit.is_file() and "alpha" in result.stdout
    result = make("sync-all", "ARGS=--tag x --dry-run")
    assert result.returncode == 0 and "(dry run)" in result.stdout, result.stdout + result.stderr
    result = make("foreach", "CMD=echo hi from $ORCH_REPO_NAME", "ARGS=--tag x")
    assert result.returncode == 0 and "hi from alpha" in result.stdout, result.stderr
    assert make("test-all", "ARGS=--tag nope").returncode == 2


def stash_list_count(path: Path) -> int:
    out = subprocess.run(["git", "stash", "list"], cwd=path, capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def test_status_and_scan_count_stashes_as_git_stash_list_does(home, make_repo, inv, tmp_path):
    repo = make_repo("stashy")
    plain = make_repo("plain")
    for i in range(3):
        (repo.path / "README.md").write_text(f"change {i}\n")
        repo.git("stash", "push", "-q", "-m", f"wip {i}")
    repo.git("stash", "drop", "-q", "stash@{1}")
    linked = tmp_path / "linked"
    repo.git("worktree", "add", "-q", str(linked), "-b", "side")
    home.write_repos([{"name": "stashy", "local": str(repo.path)}, {"name": "plain", "local": str(plain.path)},
                      {"name": "linked", "local": str(linked)}])
    assert inv("scan").code == 0
    rows = {r["name"]: r for r in home.state("repo-status.json")["repos"]}
    assert rows["stashy"]["stashes"] == stash_list_count(repo.path) == 2
    assert rows["linked"]["stashes"] == stash_list_count(linked) == 2  # a worktree sees its repo's stash
    assert rows["plain"]["stashes"] == stash_list_count(plain.path) == 0
    table = inv("status").out
    assert "clean; 2 stashed" in next(line for line in table.splitlines() if line.startswith("stashy"))
    assert "stashed" not in next(line for line in table.splitlines() if line.startswith("plain"))
    repo.git("stash", "clear")
    assert inv("scan").code == 0
    assert home.state("repo-status.json")["repos"][0]["stashes"] == stash_list_count(repo.path) == 0
    reflog = repo.path / ".git" / "logs" / "refs" / "stash"
    (repo.path / "README.md").write_text("x\n")
    repo.git("stash", "push", "-q", "-m", "again")
    reflog.unlink()  # a stash ref without its reflog: in doubt, no number
    os.mkfifo(plain.path / ".git" / "logs" / "refs" / "stash")  # a FIFO never blocks the scan
    assert inv("scan").code == 0
    rows = {r["name"]: r for r in home.state("repo-status.json")["repos"]}
    assert rows["stashy"]["stashes"] is None and rows["plain"]["stashes"] is None


def test_changed_skips_only_what_is_unchanged_since_its_last_passed_run(home, make_repo, inv, tmp_path):
    counter = tmp_path / "runs"
    counter.mkdir()
    suite = {"Makefile": f"test:\n\t@touch {counter}/$$(basename $(CURDIR)).$$$$; echo '1 passed in 0.01s'\n",
             ".gitignore": "ignored.txt\n"}
    a, b, c, d = (make_repo(n, suite) for n in "abcd")
    home.add(a, b, c, d, language="make")

    def runs(name: str) -> int:
        return len(list(counter.glob(f"{name}.*")))

    assert inv("test-all", "--changed").code == 0  # nothing known yet: everything runs
    assert [runs(n) for n in "abcd"] == [1, 1, 1, 1]
    first = {r["repo"]: r for r in home.state("test-results.json")["results"]}
    assert first["a"]["last_passed"] == {"head": a.head(), "command": "make test", "host": "local",
                                         "machine": socket.gethostname(), "at": first["a"]["finished_at"]}
    b.commit({"new.txt": "x"}, "a new commit")            # another HEAD
    (c.path / "README.md").write_text("edited\n")         # a dirty tree
    (d.path / "ignored.txt").write_text("ignored\n")      # ignored files do not count
    result = inv("test-all", "--changed", "--json")
    assert result.code == 0, result.err
    results = {r["repo"]: r for r in json.loads(result.out)["results"]}
    assert [runs(n) for n in "abcd"] == [1, 2, 2, 1]
    assert results["a"]["cached"] and results["d"]["cached"] and not results["b"]["cached"]
    assert results["a"]["reason"] == f"unchanged since {first['a']['finished_at']}"
    assert results["a"]["counts"] == {"passed": 1, "failed": 0, "skipped": 0, "errors": 0}
    assert results["c"]["last_passed"] is None  # passed on a dirty tree: nothing to trust
    state = home.state("test-results.json")
    next(r for r in state["results"] if r["repo"] == "a")["cached"] = False
    (home.path / "state" / "test-results.json").write_text(json.dumps(state))
    table = inv("test-all", "--changed", "--only", "a").out  # only cached repos: still recorded
    assert f"unchanged since {first['a']['finished_at']}" in next(line for line in table.splitlines()
                                                                  if line.startswith("a "))
    assert next(r for r in home.state("test-results.json")["results"] if r["repo"] == "a")["cached"]
    inv("test-all", "--changed")
    assert [runs(n) for n in "abcd"] == [1, 2, 3, 1]
    state = {r["repo"]: r for r in home.state("test-results.json")["results"]}
    assert state["a"]["cached"] and state["a"]["last_passed"] == first["a"]["last_passed"]
    # Another command: runs. Without --changed: everything runs.
    home.write_repos([{"name": n, "local": str(h.path), "language": "make",
                       **({"commands": {"test": "make test V=1"}} if n == "a" else {})}
                      for n, h in zip("abcd", (a, b, c, d))])
    inv("test-all", "--changed")
    assert runs("a") == 2 and runs("d") == 1
    inv("test-all")
    assert [runs(n) for n in "abcd"] == [3, 3, 5, 2]


def test_a_run_without_changed_starts_no_git(home, make_repo, inv, git_log):
    # --changed's bookkeeping (a status scan before and after the tests, and what git status may hide: two gits
    # a passed repo, one repo at a time) is for --changed runs only; a plain run records nothing it may trust.
    suite = {"Makefile": "test:\n\t@echo '1 passed in 0.01s'\n"}
    a, b = make_repo("a", suite), make_repo("b", suite)
    home.add(a, b, language="make")
    git_log.write_bytes(b"")
    assert inv("test-all").code == 0
    assert git_log.read_bytes() == b"", "a run without --changed started git"
    assert [r["last_passed"] for r in home.state("test-results.json")["results"]] == [None, None]
    assert inv("test-all", "--changed").code == 0  # nothing trusted yet: both run, and are trusted
    assert git_log.read_bytes(), "the logging git sees no git at all: this test could not fail"
    result = inv("test-all", "--changed", "--json")
    assert result.code == 0, result.err
    assert [r["cached"] for r in json.loads(result.out)["results"]] == [True, True]


def test_a_failure_drops_what_changed_trusts(home, make_repo, inv, tmp_path):
    flag = tmp_path / "fail"
    repo = make_repo("r", {"Makefile": f"test:\n\t@test ! -e {flag}\n"})
    home.add(repo, language="make")
    assert inv("test-all", "--changed").code == 0
    assert home.state("test-results.json")["results"][0]["last_passed"] is not None
    flag.touch()  # something outside the repo broke it: the last verdict stands, --changed reruns
    assert inv("test-all").code == 1
    assert home.state("test-results.json")["results"][0]["last_passed"] is None
    assert inv("test-all", "--changed").code == 1


def test_repos_start_longest_known_first_and_unknown_before_all(home, make_repo, inv, tmp_path):
    order = tmp_path / "order.txt"
    record = {"Makefile": f"test:\n\t@echo $$(basename $(CURDIR)) >> {order}\n"}
    names = ["quick", "slow", "middle", "new"]
    repos = {n: make_repo(n, record) for n in names}
    home.add(*(repos[n] for n in names[:3]), language="make")
    assert inv("test-all", "--jobs", "1").code == 0
    assert order.read_text().split() == ["quick", "slow", "middle"]  # nothing known yet: config order
    state = home.state("test-results.json")
    for entry, seconds in zip(state["results"], (5.0, 1.0, 9.0)):  # sorted by name: middle, quick, slow
        entry["duration_s"] = seconds
    (home.path / "state" / "test-results.json").write_text(json.dumps(state))
    home.add(*(repos[n] for n in names), language="make")
    order.unlink()
    result = inv("test-all", "--jobs", "1")
    assert result.code == 0
    assert order.read_text().split() == ["new", "slow", "middle", "quick"]
    table = [line.split()[0] for line in result.out.splitlines()[2:6]]
    assert table == names  # the table stays in config order


def test_matrix_prints_the_selected_repos_for_ci_and_runs_nothing(home, make_repo, inv, tmp_path):
    marker = tmp_path / "ran"
    repos = [make_repo(n, {"Makefile": f"test:\n\t@touch {marker}\n"}) for n in ("a", "b")]
    home.write_repos([{"name": "a", "local": str(repos[0].path), "language": "make", "tags": ["x"]},
                      {"name": "b", "local": str(repos[1].path), "language": "make"}])
    result = inv("test-all", "--matrix")
    assert result.code == 0 and len(result.out.splitlines()) == 1
    assert json.loads(result.out) == {"include": [{"repo": "a", "language": "make", "host": "local"},
                                                  {"repo": "b", "language": "make", "host": "local"}]}
    assert json.loads(inv("test-all", "--matrix", "--tag", "x").out)["include"] == [
        {"repo": "a", "language": "make", "host": "local"}]
    assert not marker.exists() and not (home.path / "state" / "test-results.json").exists()


def yaml_python() -> str:
    """A Python with PyYAML (a system package; never a dependency of ours), else the test is skipped."""
    from lib.commandenv import without_our_venv

    candidates = ["/usr/bin/python3", shutil.which("python3", path=without_our_venv(os.environ["PATH"]))]
    for python in filter(None, candidates):
        if subprocess.run([python, "-c", "import yaml"], capture_output=True).returncode == 0:
            return python
    require_tool("python3-with-PyYAML")
    raise AssertionError("unreachable")


def strings_in(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in strings_in(key) + strings_in(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings_in(item)]
    return []


INV_IN_TEXT = re.compile(r'''(?:^|(?<=[\s"'(\[]))(?:\.venv/bin/)?(inv|make) ((?:[^"'\n)>]|(?<=\s)"[^"\n]*")*)''', re.M)
SCRIPT_IN_TEXT = re.compile(r'''(scripts/\w+\.py)((?:[^"'\n)>]|(?<=\s)"[^"\n]*")*)''')


def test_the_ci_pages_yaml_parses_and_names_only_real_commands_and_options():
    import shlex

    from tests.test_docs import check_inv, check_make, check_script

    ci = (ROOT / "docs" / "ci.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", ci, re.S)
    assert len(blocks) == 4
    parsed = json.loads(subprocess.run(
        [yaml_python(), "-c", "import json, sys, yaml; print(json.dumps([yaml.safe_load(b) for b in "
                              "json.load(sys.stdin)]))"], input=json.dumps(blocks), capture_output=True,
        text=True, check=True).stdout)
    github, gitlab = parsed[2], parsed[3]
    assert github["jobs"]["test"]["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert gitlab["test"]["trigger"]["include"][0]["artifact"] == "child-pipeline.json"
    problems, checked = [], []
    for text in (s for document in parsed for s in strings_in(document)):
        text = re.sub(r"\$\{\{[^}]*\}\}|\{repo\}", "REPO", text)
        for match in INV_IN_TEXT.finditer(text):
            words = (match.group(1), *shlex.split(match.group(2)))
            problem = check_inv(words) if words[0] == "inv" else check_make(words)
            checked.append(" ".join(words))
            if problem:
                problems.append(f"{' '.join(words)}: {problem}")
        for match in SCRIPT_IN_TEXT.finditer(text):
            words = ("python", match.group(1), *shlex.split(match.group(2)))
            checked.append(" ".join(words))
            if problem := check_script(words):
                problems.append(problem)
    assert not problems, problems
    assert "inv test-all --matrix" in checked
    assert "inv test-all --only REPO --junit-xml reports/junit.xml" in checked
    assert "inv test-all --only REPO --junit-xml reports/junit-REPO.xml" in checked


TRAPS = ("trap 'echo got INT, was at step $i; exit 3' INT; trap 'echo got TERM; exit 4' TERM; "
         "i=0; while :; do i=$((i+1)); sleep 0.1; done")


def test_a_timeout_sends_sigint_first_so_the_suite_can_say_where_it_hung(home, make_repo, inv):
    repo = make_repo("hangs")
    home.write_repos([{"name": "hangs", "local": str(repo.path), "language": "make", "commands": {"test": TRAPS}}])
    result = inv("test-all", "--timeout", "2")
    assert result.code == 1
    log = (log_dir() / "orchestrator-test-hangs.log").read_text()
    assert re.search(r"^got INT, was at step \d+$", log, re.M) and not re.search("^got TERM", log, re.M), log
    assert "timeout: stopped with SIGINT after 2s" in log
    assert home.state("test-results.json")["results"][0]["status"] == "timeout"


def test_a_command_that_ignores_sigint_gets_sigterm_after_the_grace(home, make_repo, inv):
    repo = make_repo("deaf")
    deaf = "trap '' INT; trap 'echo got TERM; exit 4' TERM; while :; do sleep 0.1; done"
    home.write_repos([{"name": "deaf", "local": str(repo.path), "language": "make", "commands": {"test": deaf}}])
    result = inv("test", "deaf", "--timeout", "1", "--grace", "1")
    assert result.code == 1 and "TEST TIMEOUT" in result.out
    log = (log_dir() / "orchestrator-test-deaf.log").read_text()
    assert re.search("^got TERM$", log, re.M) and "timeout: stopped with SIGINT, then SIGTERM after 1s" in log


def test_foreach_timeouts_keep_sigterm(home, make_repo, inv):
    home.add(make_repo("r"))
    result = inv("foreach", "--timeout", "2", TRAPS)
    assert result.code == 1
    log = (log_dir() / "orchestrator-foreach-r.log").read_text()
    assert re.search("^got TERM$", log, re.M) and not re.search("^got INT", log, re.M), log


def test_a_hung_pytest_prints_what_passed_when_its_timeout_comes(home, make_repo, inv):
    repo = make_repo("stuck", {"test_a.py": "def test_quick():\n    pass\n",
                               "test_b.py": "import time\n\n\ndef test_hangs():\n    time.sleep(600)\n",
                               "pyproject.toml": "[project]\nname = 'stuck'\n", ".gitignore": ".venv/\n"})
    make_venv(repo.path)
    home.add(repo)
    result = inv("test-all", "--timeout", "20")  # generous: pytest must have started on a busy machine
    assert result.code == 1
    log = (log_dir() / "orchestrator-test-stuck.log").read_text()
    assert "KeyboardInterrupt" in log and "test_b.py" in log and "1 passed" in log
    entry = home.state("test-results.json")["results"][0]
    assert entry["status"] == "timeout" and entry["counts"]["passed"] == 1
