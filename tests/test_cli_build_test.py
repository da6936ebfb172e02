"""inv build / inv test / inv test-all / inv workflow on real repos running real commands."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import require_tool, run_script, wait_gone

PASSING = {"Makefile": "all:\n\t@echo built ok\ntest:\n\t@echo all tests passed\n"}
FAILING = {"Makefile": "all:\n\t@echo compile error; exit 2\ntest:\n" + "".join(
    f"\t@echo line {i}\n" for i in range(80)) + "\t@echo 1 test failed; exit 1\n"}


def log_dir() -> Path:
    return Path(os.environ["ORCHESTRATOR_LOG_DIR"])


def test_build_passes_prints_log_path_and_verdict_and_records_state(home, make_repo, inv):
    home.write_repos([{"name": "staking", "local": str(make_repo("staking", PASSING).path), "language": "make"}])
    result = inv("build", "staking")
    assert result.code == 0, result.err
    log = log_dir() / "orchestrator-build-staking.log"
    assert f"log: {log}" in result.out
    assert "BUILD PASSED (" in result.out
    assert "built ok" in log.read_text()
    doc = home.state("build-results.json")
    assert doc["summary"]["passed"] == 1
    entry = doc["results"][0]
    assert entry["repo"] == "staking" and entry["status"] == "passed" and entry["exit_code"] == 0
    assert entry["command"] == "make" and entry["log"] == str(log)


def test_failed_test_shows_exit_code_and_the_last_50_lines(home, make_repo, inv, monkeypatch):
    # As under `make test-all`: the repo's own make must not inherit our make's level.
    monkeypatch.setenv("MAKELEVEL", "1")
    monkeypatch.setenv("MAKEFLAGS", "w")
    home.write_repos([{"name": "ledger", "local": str(make_repo("ledger", FAILING).path), "language": "make"}])
    result = inv("test", "ledger")
    assert result.code == 1
    assert "TEST FAILED (exit 2, " in result.out
    tail = result.out.split("--- last 50 lines of")[1].splitlines()[1:]
    assert len(tail) == 50 and tail[-1].startswith("make: ***")
    assert "1 test failed" in result.out and "line 29" not in result.out
    assert home.state("test-results.json")["results"][0]["status"] == "failed"


def test_timeout_kills_the_build_and_its_sigterm_ignoring_grandchild(home, make_repo, inv, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    repo = make_repo("slow", {"Makefile": "all:\n\t@echo start\n"
                              f"\t@sh -c 'trap \"\" TERM; echo $$$$ > {pidfile}; while :; do sleep 0.1; done' & sleep 60\n"})
    home.write_repos([{"name": "slow", "local": str(repo.path), "language": "make"}])
    started = time.monotonic()
    # --grace 1: the background grandchild also ignores the SIGINT sent first (sh starts `&` jobs so).
    result = inv("build", "slow", "--timeout", "1", "--grace", "1")
    assert time.monotonic() - started < 15
    assert result.code == 1 and "BUILD TIMEOUT (timed out after 1s" in result.out
    assert home.state("build-results.json")["results"][0]["status"] == "timeout"
    assert wait_gone(int(pidfile.read_text())), "the grandchild that ignores SIGTERM survived"


def test_unknown_repo_is_exit_2_with_close_matches(home, make_repo, inv):
    home.write_repos([{"name": "staking", "local": str(make_repo("staking", PASSING).path)}])
    result = inv("build", "stakin")
    assert result.code == 2
    assert result.err.strip() == f"error: unknown repo 'stakin' in {home.repos_file}; did you mean staking?"


def test_dry_run_prints_the_rendered_command_and_runs_nothing(home, make_repo, inv):
    repo = make_repo("staking", PASSING)
    home.write_repos([{"name": "staking", "local": str(repo.path), "language": "make"}])
    result = inv("build", "staking", "--dry-run")
    assert result.code == 0
    assert f"cd {repo.path} && make" in result.out
    assert not (log_dir() / "orchestrator-build-staking.log").exists()
    assert not (home.path / "state" / "build-results.json").exists()


def test_missing_toolchain_is_skipped_with_the_reason(home, make_repo, inv):
    if shutil.which("go"):
        pytest.skip("go is installed here; the skip path is covered with a made-up tool below")
    home.write_repos([{"name": "staking", "local": str(make_repo("staking").path), "language": "go"}])
    result = inv("test", "staking")
    assert result.code == 0
    assert "TEST SKIPPED (go not found on PATH" in result.out
    assert home.state("test-results.json")["results"][0]["reason"] == "go not found on PATH"


def test_repo_path_missing_is_an_error_not_a_crash(home, inv, tmp_path):
    home.write_repos([{"name": "gone", "local": str(tmp_path / "gone"), "language": "make"}])
    result = inv("build", "gone")
    assert result.code == 1 and "BUILD ERROR (path does not exist" in result.out


def test_shell_metacharacters_in_repo_fields_are_quoted_not_executed(home, make_repo, inv, tmp_path):
    marker = tmp_path / "pwned"
    repo = make_repo("quoted", PASSING)
    (home.path / "config").mkdir(parents=True, exist_ok=True)
    (home.path / "config" / "workflows.json").write_text(json.dumps({"workflows": {"describe": {
        "description": "echo the description",
        "steps": [{"action": "run", "command": "echo {{repo.description}} {{repo.remote}}"}]}}}))
    home.write_repos([{"name": "quoted", "local": str(repo.path), "language": "make",
                       "description": f"x; touch {marker}; $(touch {marker}) `touch {marker}`",
                       "remote": f"' && touch {marker} && echo '"}])
    result = inv("workflow", "describe", "quoted")
    assert result.code == 0, result.out + result.err
    assert not marker.exists()
    log = (log_dir() / "orchestrator-describe-quoted.log").read_text()
    assert f"x; touch {marker}; $(touch {marker}) `touch {marker}`" in log


INJECTION_TEMPLATES = [
    "echo {{repo.description}}",
    "cat <<'EOF'\nfixed text\nEOF\necho {{repo.description}}",
    "echo `echo {{repo.description}}`",
    "echo $(echo {{repo.description}})",
    "echo ${UNSET_VAR:-{{repo.description}}}",
    "x={{repo.description}}; echo \"$x\"",
    "printf '%s' {{repo.tags}} {{repo.remote}}",
]


def test_no_accepted_template_runs_a_repo_field_as_code(home, make_repo, inv, tmp_path):
    marker = tmp_path / "pwned"
    payload = f"$(touch {marker}) `touch {marker}` ; touch {marker} # '$(touch {marker})' \\"
    repo = make_repo("target", PASSING)
    (home.path / "config").mkdir(parents=True, exist_ok=True)
    workflows = {f"t{i}": {"description": "", "steps": [{"action": "run", "command": t}]}
                 for i, t in enumerate(INJECTION_TEMPLATES)}
    (home.path / "config" / "workflows.json").write_text(json.dumps({"workflows": workflows}))
    home.write_repos([{"name": "target", "local": str(repo.path), "language": "make", "description": payload,
                       "remote": payload, "tags": [payload, "x"]}])
    for name in workflows:
        result = inv("workflow", name, "target")
        assert result.code == 0, (name, result.out, result.err)
        assert not marker.exists(), f"{workflows[name]['steps'][0]['command']!r} ran the payload"
    assert f"touch {marker}" in result.out, "the value itself reached the command's output"


def test_workflow_review_shows_commits_ahead_of_the_default_branch(home, make_repo, inv):
    repo = make_repo("wallet")
    repo.commit({"a.txt": "1"}, "unpushed work")
    home.write_repos([{"name": "wallet", "local": str(repo.path)}])
    result = inv("workflow", "review", "wallet")
    assert result.code == 0
    assert "unpushed work" in result.out and "REVIEW PASSED" in result.out


def test_user_defined_workflow_on_all_repos(home, make_repo, inv):
    a, b = make_repo("a", PASSING), make_repo("b", FAILING)
    (home.path / "config").mkdir(parents=True, exist_ok=True)
    (home.path / "config" / "workflows.json").write_text(json.dumps({"workflows": {"compile": {
        "description": "make all", "steps": [{"action": "run", "command": "make all"}]}}}))
    home.add(a, b, language="make")
    result = inv("workflow-all", "compile")
    assert result.code == 1
    rows = {line.split()[0]: line for line in result.out.splitlines()[2:]}
    assert "PASSED" in rows["a"] and "FAILED" in rows["b"]


def test_unknown_workflow_is_exit_2(home, make_repo, inv):
    home.add(make_repo("a"))
    result = inv("workflow", "deploy", "a")
    assert result.code == 2 and "unknown workflow 'deploy'" in result.err


def test_bad_workflows_file_is_exit_2_before_anything_runs(home, make_repo, inv):
    repo = make_repo("a", PASSING)
    home.add(repo, language="make")
    (home.path / "config" / "workflows.json").write_text(json.dumps({"workflows": {"build": {
        "steps": [{"action": "run", "command": "make"}, {"action": "launch", "command": "x"}]}}}))
    result = inv("build", "a")
    assert result.code == 2 and "steps[1].action: unknown action" in result.err
    assert not (log_dir() / "orchestrator-build-a.log").exists()


# ---------------------------------------------------------------- test-all

def slow_repo(make_repo, name, seconds, ok=True):
    return make_repo(name, {"Makefile": f"test:\n\t@sleep {seconds}; echo done; {'true' if ok else 'false'}\n"})


def test_test_all_runs_concurrently_records_json_and_junit(home, make_repo, inv, tmp_path):
    bad = make_repo("bad", {"Makefile": "test:\n\t@printf '\\033[31mred\\033[0m \\001 failure\\n'; false\n"})
    # Each suite notes when it starts and ends; running concurrently means the spans overlap.
    spans = tmp_path / "spans"
    spans.mkdir()
    repos = [make_repo(f"r{i}", {"Makefile": f"test:\n\t@date +%s.%N > {spans}/r{i}.start; sleep 1; "
                                             f"date +%s.%N > {spans}/r{i}.end\n"}) for i in range(3)] + [bad]
    home.write_repos([{"name": r.path.name, "local": str(r.path), "language": "make"} for r in repos]
                     + [{"name": "docs", "local": str(make_repo("docs").path), "language": "unknown"}])
    junit = tmp_path / "junit.xml"
    result = inv("test-all", "--jobs", "4", "--junit-xml", str(junit))
    assert result.code == 1
    starts = [float((spans / f"r{i}.start").read_text()) for i in range(3)]
    ends = [float((spans / f"r{i}.end").read_text()) for i in range(3)]
    assert max(starts) < min(ends), "the three suites did not run at the same time"
    doc = home.state("test-results.json")
    assert set(doc) == {"generated_at", "summary", "results"}
    assert doc["summary"]["passed"] == 3 and doc["summary"]["failed"] == 1 and doc["summary"]["total"] == 4
    first = doc["results"][0]
    assert set(first) >= {"repo", "language", "status", "exit_code", "duration_s", "command", "log", "reason"}
    assert "docs" not in {r["repo"] for r in doc["results"]}
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "1"
    assert {case.get("name") for case in suite.iter("testcase")} == {"r0", "r1", "r2", "bad"}
    failure = next(c for c in suite.iter("testcase") if c.get("name") == "bad").find("failure")
    assert "red" in failure.text and "failure" in failure.text, "the log tail (escape codes and all) is in the report"


def test_test_all_failed_reruns_only_what_failed(home, make_repo, inv):
    good, bad = slow_repo(make_repo, "good", 0), slow_repo(make_repo, "bad", 0, ok=False)
    home.add(good, bad, language="make")
    assert inv("test-all").code == 1
    (bad.path / "Makefile").write_text("test:\n\t@echo fixed\n")
    before = home.state("test-results.json")["results"]
    good_entry = next(r for r in before if r["repo"] == "good")
    result = inv("test-all", "--failed")
    assert result.code == 0
    after = {r["repo"]: r for r in home.state("test-results.json")["results"]}
    assert after["bad"]["status"] == "passed"
    assert after["good"] == good_entry, "a repo not rerun keeps its earlier result"
    assert "nothing failed last time" in inv("test-all", "--failed").out


def test_test_all_only_and_tag_filters(home, make_repo, inv):
    a, b, c = (slow_repo(make_repo, n, 0) for n in "abc")
    home.write_repos([{"name": "a", "local": str(a.path), "language": "make", "tags": ["core"]},
                      {"name": "b", "local": str(b.path), "language": "make", "tags": ["web"]},
                      {"name": "c", "local": str(c.path), "language": "make", "tags": ["core"]}])
    assert inv("test-all", "--only", "b").code == 0
    assert [r["repo"] for r in home.state("test-results.json")["results"]] == ["b"]
    assert inv("test-all", "--tag", "core").code == 0
    assert [r["repo"] for r in home.state("test-results.json")["results"]] == ["a", "b", "c"]
    assert inv("test-all", "--only", "zz").code == 2


def test_test_all_timeout_per_repo(home, make_repo, inv):
    home.add(slow_repo(make_repo, "hang", 60), slow_repo(make_repo, "quick", 0), language="make")
    result = inv("test-all", "--timeout", "1")
    assert result.code == 1
    statuses = {r["repo"]: r["status"] for r in home.state("test-results.json")["results"]}
    assert statuses == {"hang": "timeout", "quick": "passed"}


def test_test_all_with_javascript_and_python_repos(home, make_repo, inv):
    require_tool("node")
    js = make_repo("js", {"package.json": json.dumps({"name": "js", "scripts": {"test": "node --test"}}),
                          "test/a.test.js": "require('node:test')('ok', () => {});\n"})
    py = make_repo("py", {"pyproject.toml": "[project]\nname='py'\n", "tests/test_a.py": "def test_a():\n    assert True\n"})
    home.add(js, py)
    result = inv("test-all")
    assert result.code == 0, result.out
    langs = {r["repo"]: (r["language"], r["status"]) for r in home.state("test-results.json")["results"]}
    assert langs == {"js": ("javascript", "passed"), "py": ("python", "passed")}


def test_run_all_tests_script_from_another_directory(home, make_repo, tmp_path):
    home.add(slow_repo(make_repo, "a", 0), language="make")
    result = run_script("run_all_tests.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tested 1 repos" in result.stdout
    assert home.state("test-results.json")["results"][0]["status"] == "passed"


def test_make_build_without_repo_is_a_usage_error():
    import subprocess

    from tests.conftest import ROOT

    result = subprocess.run(["make", "--no-print-directory", "build"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "usage: make build REPO=name" in result.stderr
