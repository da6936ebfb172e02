#!/usr/bin/env python3
"""Benchmark `sync-all` against raw git (fetch + ff-only merge per repo, 4 at a time), steady and 10% behind.

    python bench/sync_bench.py [--sizes 200 500] [--runs 5] [--keep DIR] [--other CHECKOUT]

Makes workspaces with the project's own generator (bare remotes as plain paths),
syncs once to settle them, then alternates the commands and prints medians:
wall time, CPU time of the whole process tree (every git included; a busy
machine inflates it far less than wall time) and their ratios to raw git, and
the git processes started per repo (counted by a `git` first on PATH that logs
each call, in one extra untimed run). "10% behind": before every timed run a
new commit lands on the remote default branch of every tenth repo. Ours runs as
`python3 scripts/sync_all_repos.py`, start-up and the closing scan included.
`vcs pull` (vcstool) and `gita pull` get rows of their own when installed, and
`--other` adds another checkout's sync-all (an older commit, say) as a row.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.status_bench import ENV as STATUS_ENV, timed  # noqa: E402
from lib.demo import bench_specs, generate  # noqa: E402
from lib.runner import become_subreaper  # noqa: E402
from lib.views import plain_table  # noqa: E402

# status_bench's (Python's bytecode cache as a user has it, no system or global git config), with an author.
ENV = {**STATUS_ENV, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}
WRAPPER = '#!/bin/sh\necho x >> "$GIT_CALLS"\nexec "{git}" "$@"\n'


def push_behind(remotes: list[Path], round_: int) -> None:
    """A new commit on each remote's main, made in the bare repo itself (the same tree: nothing to check out)."""
    for remote in remotes:
        def git(*args: str) -> str:
            return subprocess.run(["git", f"--git-dir={remote}", *args], env=ENV, check=True, capture_output=True,
                                  text=True).stdout.strip()
        commit = git("commit-tree", "main^{tree}", "-p", "main", "-m", f"upstream change {round_}")
        git("update-ref", "refs/heads/main", commit)


def commands(home: Path, other: Path | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    repos_dir = home / "repos"
    ours_env = {**ENV, "ORCHESTRATOR_HOME": str(home), "ORCHESTRATOR_LOG_DIR": str(home / "logs")}
    found = {"raw git": (["sh", str(ROOT / "bench" / "raw_git_sync.sh"), str(home), "4"], ENV),
             "sync-all": ([sys.executable, str(ROOT / "scripts" / "sync_all_repos.py")], ours_env)}
    if other is not None:
        found[f"sync-all ({other.name})"] = ([sys.executable, str(other / "scripts" / "sync_all_repos.py")], ours_env)
    if shutil.which("vcs"):
        found["vcs pull -w 4"] = (["vcs", "pull", "-w", "4", "-n", str(repos_dir)], ENV)
    if shutil.which("gita"):
        gita_env = {**ENV, "XDG_CONFIG_HOME": str(home / "gita-config")}
        if not (home / "gita-config").exists():
            subprocess.run(["gita", "add", *map(str, sorted(repos_dir.iterdir()))], env=gita_env,
                           stdout=subprocess.DEVNULL, check=True)
        found["gita pull"] = (["gita", "pull"], gita_env)
    return found


def gits_per_repo(argv: list[str], env: dict[str, str], home: Path, repos: int) -> float:
    """Git processes one run starts, per repo (a fetch's own helpers are not `git` on PATH: not counted)."""
    wrapper_dir = home / "git-wrapper"
    wrapper_dir.mkdir(exist_ok=True)
    wrapper = wrapper_dir / "git"
    wrapper.write_text(WRAPPER.format(git=shutil.which("git")))
    wrapper.chmod(0o755)
    calls = home / "git-calls.log"
    calls.write_text("")
    subprocess.run(argv, env={**env, "PATH": f"{wrapper_dir}:{env['PATH']}", "GIT_CALLS": str(calls)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return len(calls.read_text().splitlines()) / repos


def bench(size: int, runs: int, workdir: Path, other: Path | None) -> list[list[object]]:
    home = workdir / f"ws-{size}"
    if not (home / "config" / "repos.json").exists():  # else kept from an earlier run (--keep)
        generate(home, bench_specs(size))
    repos = sorted((home / "repos").iterdir())
    (home / "repos.txt").write_text("".join(f"{p}\n" for p in repos))
    remotes = sorted((home / "remotes").iterdir())[::10]
    runners = commands(home, other)
    for argv, env in runners.values():  # settle: what can be fast-forwarded is, every index is fresh
        timed(argv, env)
    rows = []
    for scenario in ("steady", "10% behind"):
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
        order = list(runners)
        for round_ in range(runs):
            for name in order[round_ % len(order):] + order[:round_ % len(order)]:  # alternate who goes first
                if scenario != "steady":
                    push_behind(remotes, round_ * len(order) + order.index(name) + size)
                times[name].append(timed(*runners[name]))
        gits = {}
        for name in runners:  # each counted run finds the same repos behind (the one before caught up)
            if scenario != "steady":
                push_behind(remotes, -1 - order.index(name))
            gits[name] = gits_per_repo(*runners[name], home, size)
        wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
        for name in runners:
            rows.append([size, scenario, name, f"{wall[name] * 1000:.0f}", f"{wall[name] / wall['raw git']:.2f}",
                         f"{cpu[name] * 1000:.0f}", f"{cpu[name] / cpu['raw git']:.2f}", f"{gits[name]:.2f}"])
        print(f"  {size} repos, {scenario}: done", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the workspaces here and keep them (reused when there)")
    parser.add_argument("--other", type=Path, help="another checkout of this project whose sync-all gets a row")
    args = parser.parse_args(argv)
    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        rows = [row for size in args.sizes for row in bench(size, args.runs, workdir, args.other)]
    print(f"median of {args.runs} alternated runs, {os.cpu_count()} cores; gits per repo from one more run")
    print(plain_table(rows, ["repos", "state", "command", "wall ms", "wall ratio", "cpu ms", "cpu ratio",
                             "gits/repo"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
