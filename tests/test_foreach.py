"""`inv foreach "<command>"`: any command in every selected repo, run as build/test run theirs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib

from tests.conftest import ROOT, wait_gone


def three_repos(home, make_repo, **extra):
    handles = [make_repo(n) for n in ("alpha", "beta", "gamma")]
    home.write_repos([{"name": h.path.name, "local": str(h.path), "tags": ["odd" if i % 2 == 0 else "even"],
                       **extra} for i, h in enumerate(handles)])
    return handles


def test_blocks_come_in_config_order_under_a_header_then_a_summary(home, make_repo, inv):
    three_repos(home, make_repo)
    # alpha finishes last, yet its block comes first.
    result = inv("foreach", 'if [ "$ORCH_REPO_NAME" = alpha ]; then sleep 0.5; fi; echo "in $(basename "$PWD")"',
                 "--jobs", "3")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert [ln.split()[1].rstrip(":") for ln in lines if ln.startswith("=== ")] == ["alpha", "beta", "gamma"]
    assert lines[1] == "in alpha" and lines[3] == "in beta" and lines[5] == "in gamma"
    assert lines[-1].startswith("foreach: 3 repos in ") and lines[-1].endswith("3 passed")


def test_repo_fields_arrive_as_orch_repo_variables_never_as_code(home, make_repo, inv, tmp_path):
    repo = make_repo("alpha")
    pwned = tmp_path / "pwned"
    home.write_repos([{"name": "alpha", "local": str(repo.path), "default_branch": "trunk", "tags": ["a", "b"],
                       "description": f"$(touch {pwned}); `touch {pwned}`"}])
    result = inv("foreach", "--json", 'printf "%s|" "$ORCH_REPO_NAME" "$ORCH_REPO_LOCAL" "$ORCH_REPO_DEFAULT_BRANCH" '
                 '"$ORCH_REPO_TAGS" "$ORCH_REPO_DESCRIPTION" "$ORCH_LOG_DIR"')
    assert result.code == 0, result.err
    output = json.loads(result.out)["results"][0]["output"]
    assert output.split("|")[:4] == ["alpha", str(repo.path), "trunk", "a,b"]
    assert f"$(touch {pwned})" in output and not pwned.exists()


def test_json_document_and_the_log_per_repo(home, make_repo, inv):
    three_repos(home, make_repo)
    result = inv("foreach", "--json", "--only", "gamma,alpha", 'echo out; echo err >&2; [ "$ORCH_REPO_NAME" = alpha ]')
    assert result.code == 1
    doc = json.loads(result.out)
    assert doc["command"] == 'echo out; echo err >&2; [ "$ORCH_REPO_NAME" = alpha ]'
    assert [r["repo"] for r in doc["results"]] == ["alpha", "gamma"]
    alpha, gamma = doc["results"]
    assert set(alpha) == {"repo", "exit_code", "status", "duration_s", "output", "log", "reason"}
    assert (alpha["status"], alpha["exit_code"], gamma["status"], gamma["exit_code"]) == ("passed", 0, "failed", 1)
    assert (alpha["reason"], gamma["reason"]) == (None, "exit 1")
    assert alpha["output"] == "out\nerr\n"  # combined output, without the runner's header lines
    assert alpha["log"].endswith("orchestrator-foreach-alpha.log")
    assert "out\nerr\n" in open(alpha["log"]).read()


def test_a_failure_is_exit_1_and_the_summary_names_it(home, make_repo, inv):
    three_repos(home, make_repo)
    result = inv("foreach", '[ "$ORCH_REPO_NAME" != beta ] || exit 3')
    assert result.code == 1
    assert "=== beta: failed (exit 3)" in result.out
    assert result.out.splitlines()[-1].endswith("2 passed, 1 failed; failing: beta (exit 3)")


def test_timeout_kills_the_whole_group_and_counts_as_a_failure(home, make_repo, inv, tmp_path):
    home.add(make_repo("alpha"))
    pid_file = tmp_path / "grandchild.pid"
    result = inv("foreach", "--timeout", "1.5", f"sh -c 'echo $$ > {pid_file}; sleep 60' & wait")
    assert result.code == 1
    assert "alpha: timeout" in result.out and "failing: alpha (timed out after 1.5s)" in result.out
    assert wait_gone(int(pid_file.read_text())), "the grandchild outlived the timeout"


def test_jobs_run_repos_at_the_same_time(home, make_repo, inv, tmp_path):
    """A barrier, not a stopwatch: each command waits until all three have started (only concurrency gets there)."""
    three_repos(home, make_repo)
    spans = tmp_path / "spans"
    spans.mkdir()
    barrier = (f'touch {spans}/"$ORCH_REPO_NAME"; i=0; '
               f'while [ "$(ls {spans} | wc -l)" -lt 3 ]; do i=$((i+1)); [ $i -lt 1200 ] || exit 9; sleep 0.05; done')
    assert inv("foreach", "--jobs", "3", "--json", barrier).code == 0
    for started in spans.iterdir():
        started.unlink()
    serial = inv("foreach", "--jobs", "1", "--only", "alpha,beta", "--timeout", "1", barrier)
    assert serial.code == 1, "one at a time, the barrier is never reached"


def test_selection_by_tag_and_dirty(home, make_repo, inv):
    alpha, beta, gamma = three_repos(home, make_repo)
    (beta.path / "README.md").write_text("edited\n")
    (gamma.path / "new.txt").write_text("x")
    by_tag = inv("foreach", "--tag", "odd", "pwd")
    assert by_tag.code == 0 and "alpha" in by_tag.out and "gamma" in by_tag.out and "beta" not in by_tag.out
    dirty = inv("foreach", "--dirty", "--json", "true")
    assert [r["repo"] for r in json.loads(dirty.out)["results"]] == ["beta", "gamma"]
    (beta.path / "README.md").write_text("# beta\n")
    (gamma.path / "new.txt").unlink()
    nothing = inv("foreach", "--dirty", "true")
    assert nothing.code == 0 and "no selected repo is dirty" in nothing.out
    assert json.loads(inv("foreach", "--dirty", "--json", "true").out) == {"command": "true", "results": []}


def test_bad_usage_is_exit_2_with_one_line(home, make_repo, inv):
    three_repos(home, make_repo)
    for args in (["foreach", "  "], ["foreach", "--command="], ["foreach", "--only", "alpha,nope", "true"],
                 ["foreach", "--tag", "nosuchtag", "true"], ["foreach", "--only", ",", "true"]):
        result = inv(*args)
        assert result.code == 2, (args, result.out, result.err)
        assert result.err.startswith("error: ") and "Traceback" not in result.err, args


def test_no_command_at_all_is_invokes_own_parse_error(home, make_repo, inv):
    three_repos(home, make_repo)
    result = inv("foreach")
    assert result.code == 1 and "did not receive required positional arguments: 'command'" in result.err


def test_braces_in_a_command_are_the_commands_own_text(home, make_repo, inv):
    home.add(make_repo("alpha"))
    result = inv("foreach", "--json", "echo '{{.Names}}' {{repo.name}}")
    assert json.loads(result.out)["results"][0]["output"] == "{{.Names}} {{repo.name}}\n"


def test_a_missing_repo_path_is_an_error_row_and_exit_1(home, make_repo, inv, tmp_path):
    home.write_repos([{"name": "alpha", "local": str(make_repo("alpha").path)},
                      {"name": "gone", "local": str(tmp_path / "gone")}])
    result = inv("foreach", "true")
    assert result.code == 1 and "gone: error (path does not exist)" in result.out


def test_make_foreach_passes_the_command_through_untouched(home, make_repo, tmp_path):
    home.add(make_repo("alpha"))
    env = {**os.environ, "ORCHESTRATOR_HOME": str(home.path)}
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "foreach", """CMD=echo "it's $ORCH_REPO_NAME" | tr a-z A-Z"""],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "IT'S ALPHA" in result.stdout
    unexpanded = subprocess.run(["make", "-s", "-C", str(ROOT), "foreach", "CMD=true $(info MAKE-EXPANDED)"],
                                capture_output=True, text=True, env=env, timeout=120)
    assert "MAKE-EXPANDED" not in unexpanded.stdout + unexpanded.stderr, "make expanded the command itself"
    missing = subprocess.run(["make", "-s", "-C", str(ROOT), "foreach"], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "usage: make foreach CMD=" in missing.stderr


def test_git_in_each_repo_acts_on_that_repo_even_from_a_git_hook(home, make_repo, inv, monkeypatch):
    """A hook's GIT_DIR would make `git` in every repo act on the hook's repo."""
    alpha, beta = make_repo("alpha"), make_repo("beta")
    beta.commit({"x": "1"}, "second in beta")
    home.add(alpha, beta)
    monkeypatch.setenv("GIT_DIR", str(alpha.path / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(alpha.path))
    result = inv("foreach", "--json", "git log -1 --format=%s")
    assert [r["output"] for r in json.loads(result.out)["results"]] == ["initial\n", "second in beta\n"]


def test_a_second_foreach_over_the_same_repo_is_refused_not_mixed_into_the_first(home, make_repo, inv, tmp_path):
    """Both would write orchestrator-foreach-<repo>.log, and each would show the other's output as its own."""
    alpha, beta = make_repo("alpha"), make_repo("beta")
    home.add(alpha, beta)
    started, release = tmp_path / "started", tmp_path / "release"
    hold = f"touch {started}; i=0; while [ ! -e {release} ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.05; done"
    first = subprocess.Popen([str(ROOT / ".venv" / "bin" / "inv"), "--search-root", str(ROOT), "foreach", "--only",
                              "alpha", "--json", f"{hold}; echo first"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = inv("foreach", "echo second")
        assert second.code == 2 and "already running in alpha" in second.err, second
        disjoint = inv("foreach", "--only", "beta", "echo beside")
        assert disjoint.code == 0, disjoint.err
    finally:
        release.touch()
        out, _ = first.communicate(timeout=60)
    assert json.loads(out)["results"][0]["output"] == "first\n"
    assert inv("foreach", "echo later").code == 0


def test_repos_whose_names_share_a_crc32_do_not_block_each_other(home, make_repo, inv, tmp_path):
    """`plumless` and `buckeroo` have one CRC32: a lock keyed by it took one for the other."""
    assert zlib.crc32(b"plumless") == zlib.crc32(b"buckeroo")
    home.add(make_repo("plumless"), make_repo("buckeroo"))
    started, release = tmp_path / "started", tmp_path / "release"
    hold = f"touch {started}; i=0; while [ ! -e {release} ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.05; done"
    first = subprocess.Popen([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "foreach", "--only",
                              "plumless", hold], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists()
        beside = inv("foreach", "--only", "buckeroo", "echo beside")
        assert beside.code == 0, beside.err
        again = inv("foreach", "--only", "plumless", "echo again")
        assert again.code == 2 and "already running in plumless" in again.err, again
    finally:
        release.touch()
        first.communicate(timeout=60)
    assert first.returncode == 0


def test_a_chatty_failing_commands_last_lines_survive_the_cut_on_screen_and_in_json(home, make_repo, inv):
    """3 MiB of noise, then the line that says why: the head and the tail are kept, with a mark where the middle was."""
    home.add(make_repo("alpha"))
    chatty = "echo first line; yes 'noise noise noise' | head -c 3000000; echo; echo 'error: the real cause'; exit 4"
    doc = json.loads(inv("foreach", "--json", chatty).out)
    result = doc["results"][0]
    output = result["output"]
    assert (result["status"], result["exit_code"], result["reason"]) == ("failed", 4, "exit 4")
    assert output.startswith("first line\nnoise noise")
    assert output.endswith("noise \nerror: the real cause\n")
    assert len(output.encode()) <= 1024 * 1024 + 200
    marks = [line for line in output.splitlines() if line.startswith("[... ")]
    assert len(marks) == 1 and marks[0].endswith(f"bytes cut here; the log has all of them: {result['log']}]")
    cut = int(marks[0].split()[1])
    assert len(output.encode()) - len(marks[0]) - 1 + cut == len("first line\n") + 3000000 + len(
        "\nerror: the real cause\n")  # nothing lost or made up: kept + cut is the whole output
    screen = inv("foreach", chatty)
    assert screen.code == 1 and "error: the real cause" in screen.out and "bytes cut here" in screen.out


def test_failed_timeout_and_error_results_say_why_in_json(home, make_repo, inv, tmp_path):
    home.write_repos([{"name": "alpha", "local": str(make_repo("alpha").path)},
                      {"name": "gone", "local": str(tmp_path / "gone")}])
    doc = json.loads(inv("foreach", "--json", "--timeout", "1", "sleep 30").out)
    assert [(r["repo"], r["status"], r["reason"]) for r in doc["results"]] == [
        ("alpha", "timeout", "timed out after 1s"), ("gone", "error", "path does not exist")]
