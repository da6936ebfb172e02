#!/usr/bin/env python3
"""Benchmark one monitor cycle with N busy workers: wall time, tmux calls and git calls per cycle.

    python bench/monitor_bench.py [--workers 8] [--cycles 20]

Builds a throwaway project (real repo + bare remote) under a temp
ORCHESTRATOR_HOME, starts a tmux server on a private socket, lets the first
cycle assign one issue per worker (each agent then sleeps), and times the
following cycles, which probe every worker and decide that nothing is due.
The session, its agents and the temp dirs are removed at the end.
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


def make_project(base: Path, workers: int) -> None:
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
    (home / "config" / "proof-issues.json").write_text(json.dumps({
        "project": "bench", "repo_path": str(repo), "worktree_base": str(base / "worktrees"),
        "branch_prefix": "bench-", "pipeline": ["implement"], "num_workers": workers, "cycle_interval": 1,
        "stall_timeout": 3600, "wall_clock_timeout": 3600, "stagger_delay": 0, "tmux_session": "bench",
        "agent_command": agent, "issues": [{"number": n, "title": f"issue {n}"} for n in range(1, workers + 1)]}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
        base = Path(tmp)
        make_project(base, args.workers)
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
            times, tmux_per, git_per = [], [], []
            for number in range(2, args.cycles + 2):
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
    rows = [[args.workers, busy, len(times), f"{statistics.median(times) * 1000:.0f}",
             f"{max(times) * 1000:.0f}", max(tmux_per), max(git_per)]]
    print(plain_table(rows, ["workers", "busy", "cycles", "median ms", "max ms", "tmux calls", "git calls"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
