#!/usr/bin/env python3
"""Benchmark one monitor cycle with N busy workers: wall time, tmux calls and git calls per cycle.

    python bench/monitor_bench.py [--workers 8] [--cycles 20] [--events 10000]

Builds a throwaway project (real repo + bare remote) under a temp
ORCHESTRATOR_HOME, starts a tmux server on a private socket, lets the first
cycle assign one issue per worker (each agent then sleeps), and times the
following cycles, which probe every worker and decide that nothing is due.
The session, its agents and the temp dirs are removed at the end.

With --events N each agent is a Claude-like one (`"agent": "claude"`): it prints N stream-json events at
once (session init, then tool calls, results and api_retry events), then 10 more every 0.2 s. The first cycle
after they are written reads all N of every worker (the catch-up, timed apart); the timed cycles after it read
only what is new, whatever the size of the stream so far.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "proof-workers")]

from lib.views import plain_table  # noqa: E402


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


EVENTS_AGENT = r"""
import json, sys, time
def event(i):
    if i % 3 == 0:
        return {"type": "assistant", "session_id": "bench", "message": {"id": f"m{i}", "usage": {
            "input_tokens": 100, "output_tokens": 20}, "content": [{"type": "tool_use", "id": f"t{i}", "name": "Bash",
            "input": {"command": f"echo step {i}"}}]}}
    if i % 3 == 1:
        return {"type": "user", "session_id": "bench", "message": {"content": [
            {"type": "tool_result", "tool_use_id": f"t{i - 1}", "content": "step output " * 10}]}}
    return {"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 10, "retry_delay_ms": 500,
            "error_status": 429, "error": "rate_limit"}
print(json.dumps({"type": "system", "subtype": "init", "session_id": "bench", "model": "bench"}))
count = int(sys.argv[1])
for i in range(count):
    print(json.dumps(event(i)))
sys.stdout.flush()
while True:
    time.sleep(0.2)
    for _ in range(10):
        count += 1
        print(json.dumps(event(count)))
    sys.stdout.flush()
"""


def make_project(base: Path, workers: int, events: int = 0) -> None:
    repo, remote, home = base / "repo", base / "remote.git", base / "home"
    git(base, "init", "-q", "--bare", "-b", "main", str(remote))
    git(base, "init", "-q", "-b", "main", str(repo))
    (repo / "README.md").write_text("# bench\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=b", "-c", "user.email=b@example.com", "commit", "-q", "-m", "initial")
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "-u", "origin", "main")
    (home / "config").mkdir(parents=True)
    agent = shlex.join([sys.executable, "-c", "import time; time.sleep(600)"])
    if events:
        (base / "agent.py").write_text(EVENTS_AGENT)
        agent = shlex.join([sys.executable, str(base / "agent.py"), str(events)])
    (home / "config" / "proof-issues.json").write_text(json.dumps({
        "project": "bench", "repo_path": str(repo), "worktree_base": str(base / "worktrees"),
        "branch_prefix": "bench-", "pipeline": ["implement"], "num_workers": workers, "cycle_interval": 1,
        "stall_timeout": 3600, "wall_clock_timeout": 3600, "stagger_delay": 0, "tmux_session": "bench",
        "agent_command": agent, "agent": "claude" if events else "command",
        "issues": [{"number": n, "title": f"issue {n}"} for n in range(1, workers + 1)]}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--events", type=int, default=0, help="events each agent writes at once (0: a silent agent)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
        base = Path(tmp)
        make_project(base, args.workers, args.events)
        os.environ["ORCHESTRATOR_HOME"] = str(base / "home")
        os.environ["ORCHESTRATOR_TMUX_SOCKET"] = f"monitor-bench-{uuid.uuid4().hex[:8]}"
        from orchestrator import worktrees
        from orchestrator.act import kill_try
        from orchestrator.monitor import reconcile, run_cycle
        from orchestrator.run import open_run

        run = open_run()
        tmux_calls = git_calls = 0
        real_cmd, real_git, real_ok = run.server.cmd, worktrees.git, worktrees.ok

        def counted_cmd(*a, **k):
            nonlocal tmux_calls
            tmux_calls += 1
            return real_cmd(*a, **k)

        def counted_git(*a, **k):
            nonlocal git_calls
            git_calls += 1
            return real_git(*a, **k)

        run.server.cmd = counted_cmd  # type: ignore[method-assign]
        worktrees.git = counted_git  # type: ignore[assignment]
        try:
            reconcile(run, lambda _: None)
            run_cycle(run, 1, lambda _: None)  # assigns one issue per worker
            busy = sum(1 for r in run.files.load_workers(args.workers) if r.issue_number is not None)
            catch_up = None
            if args.events:
                deadline = time.monotonic() + 120
                while any(_lines(run.files.agent_events(r.worker_id, r.try_id)) < args.events
                          for r in run.files.load_workers(args.workers)):
                    if time.monotonic() > deadline:
                        raise SystemExit("the agents did not write their events within 120 s")
                    time.sleep(0.2)
                start = time.perf_counter()
                run_cycle(run, 2, lambda _: None)
                catch_up = time.perf_counter() - start
            times, tmux_per, git_per = [], [], []
            for number in range(3, args.cycles + 3):
                tmux_calls = git_calls = 0
                start = time.perf_counter()
                result = run_cycle(run, number, lambda _: None)
                times.append(time.perf_counter() - start)
                tmux_per.append(tmux_calls)
                git_per.append(git_calls)
                assert result.actions == 0, "a cycle decided something: the bench measures quiet cycles"
        finally:
            for record in run.files.load_workers(args.workers):
                kill_try(run, record)
            if run.server.is_alive():
                run.server.kill()
            worktrees.git, worktrees.ok = real_git, real_ok
    rows = [[args.workers, busy, args.events, f"{catch_up * 1000:.0f}" if catch_up is not None else "-", len(times),
             f"{statistics.median(times) * 1000:.0f}", f"{max(times) * 1000:.0f}", max(tmux_per), max(git_per)]]
    print(plain_table(rows, ["workers", "busy", "events each", "catch-up ms", "cycles", "median ms", "max ms",
                             "tmux calls", "git calls"]))
    return 0


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as stream:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))
    except OSError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
