"""scripts/run_all_tests.py and `inv test-all` are one command: the same options, through the same lib path."""
from __future__ import annotations

import copy
import inspect
import json
import re

import pytest

from tests.conftest import ROOT, run_script

SUITE = "test:\n\t@touch {runs}/$$(basename $(CURDIR)).$$$$; echo '1 passed in 0.01s'\n"


def script_flags() -> set[str]:
    result = run_script("run_all_tests.py", "--help", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", result.stdout)) - {"--help"}


def task_flags() -> set[str]:
    import tasks

    names = [name for name in inspect.signature(tasks.test_all.body).parameters if name != "c"]
    return {"--" + name.replace("_", "-") for name in names}


def test_the_script_takes_every_option_of_inv_test_all():
    assert script_flags() == task_flags()


def test_the_script_takes_the_short_flags_of_inv_test_all_with_the_same_meaning():
    import tasks

    result = run_script("run_all_tests.py", "--help", cwd=ROOT)
    script = dict(re.findall(r"(?<![\w-])-([a-z])(?: [A-Z_]+)?, (--[a-z][\w-]*)", result.stdout))
    # On a copy: Invoke's get_arguments pops each help text off the task (later tests would find none).
    task = {short: f"--{long}" for long, *shorts in (a.names for a in copy.deepcopy(tasks.test_all).get_arguments())
            for short in shorts}
    assert task and {k: v for k, v in script.items() if k != "h"} == task


def test_the_script_reports_unchanged_repos_from_their_last_pass_like_inv(home, make_repo, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    a, b = (make_repo(name, {"Makefile": SUITE.format(runs=runs)}) for name in "ab")
    home.add(a, b, language="make")
    first = run_script("run_all_tests.py", "--changed", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    b.commit({"new.txt": "x"}, "a new commit")
    second = run_script("run_all_tests.py", "--changed", "--json", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    results = {r["repo"]: r for r in json.loads(second.stdout)["results"]}
    assert results["a"]["cached"] and not results["b"]["cached"]
    assert sorted(p.name.split(".")[0] for p in runs.iterdir()) == ["a", "b", "b"]


def test_the_script_prints_a_dry_run_and_a_matrix_and_runs_nothing(home, make_repo, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    repo = make_repo("a", {"Makefile": SUITE.format(runs=runs)})
    home.add(repo, language="make")
    dry = run_script("run_all_tests.py", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[1:] == [f"  cd {repo.path} && make test"]
    matrix = run_script("run_all_tests.py", "--matrix", cwd=tmp_path)
    assert json.loads(matrix.stdout) == {"include": [{"repo": "a", "language": "make", "host": "local"}]}
    assert not list(runs.iterdir()) and not (home.path / "state" / "test-results.json").exists()


@pytest.mark.parametrize("flag, value", [("--timeout", "-1"), ("--timeout", "nan"), ("--grace", "inf"),
                                         ("--jobs", "-2")])
def test_a_bad_number_is_one_error_line_and_exit_2_before_anything_runs(home, make_repo, tmp_path, flag, value):
    runs = tmp_path / "runs"
    runs.mkdir()
    home.add(make_repo("a", {"Makefile": SUITE.format(runs=runs)}), language="make")
    result = run_script("run_all_tests.py", flag, value, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {flag}: expected ") and len(result.stderr.splitlines()) == 1, \
        result.stderr
    assert not list(runs.iterdir())


def test_changed_over_hosts_is_a_usage_error_for_the_script_too(home, make_repo, tmp_path):
    home.write_repos([{"name": "a", "local": str(make_repo("a").path), "language": "make", "host": "b1"}])
    (home.path / "config" / "hosts.toml").write_text('[hosts.b1]\nhost = "127.0.0.1"\nworkspace = "ws"\n')
    result = run_script("run_all_tests.py", "--changed", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == "error: --changed: only for repos tested here; leave out --hosts and repos' `host`\n"


@pytest.mark.parametrize("door", ["inv", "script"])
def test_with_json_every_answer_is_one_json_document_through_both_front_doors(home, make_repo, inv, tmp_path, door):
    """Nothing to test, --failed with nothing to rerun and a dry run printed plain text under --json."""
    import os
    from pathlib import Path

    runs = tmp_path / "runs"
    runs.mkdir()
    repo = make_repo("a", {"Makefile": SUITE.format(runs=runs)})
    home.add(repo, language="make")

    def run(*args: str):
        if door == "inv":
            result = inv("test-all", "--json", *args)
            return result.code, result.out
        done = run_script("run_all_tests.py", "--json", *args, cwd=tmp_path)
        return done.returncode, done.stdout

    nothing = {"duration_s": 0, "summary": {"total": 0, "passed": 0, "failed": 0, "timeout": 0, "skipped": 0,
                                            "error": 0}, "results": []}
    code, out = run("--dry-run")
    assert code == 0, out
    log = Path(os.environ["ORCHESTRATOR_LOG_DIR"]) / "orchestrator-test-a.log"
    assert json.loads(out) == {"dry_run": [{"repo": "a", "host": "local", "skip": None, "log": str(log),
                                            "commands": [{"cwd": str(repo.path), "command": "make test"}]}]}
    (home.path / "config" / "hosts.toml").write_text('[hosts.b1]\nhost = "127.0.0.1"\nworkspace = "/srv/ws"\n')
    code, out = run("--dry-run", "--hosts", "b1")  # a dry run connects to no host
    assert code == 0, out
    assert json.loads(out) == {"dry_run": [{"repo": "a", "host": "b1", "directory": "/srv/ws/a", "log": str(log)}]}
    code, out = run("--failed")  # nothing failed last time (nothing ran yet)
    assert code == 0, out
    assert json.loads(out) == {**nothing, "note": "nothing to test (nothing failed last time)"}
    home.write_repos([{"name": "plain", "local": str(make_repo("plain").path)}])  # no language known
    code, out = run()
    assert code == 0, out
    assert json.loads(out) == {**nothing, "note": "nothing to test"}
    assert not list(runs.iterdir())
