#!/usr/bin/env python3
"""Benchmark `scan`, cold and warm, against raw git (status --porcelain=v2 --branch + log -1 per repo, 4 shells).

    python bench/status_bench.py [--sizes 200 500] [--runs 10] [--jobs 0] [--keep DIR]

Makes workspaces with the project's own generator (the one behind `make demo`),
then alternates three commands and prints median wall times and their ratios:
raw git, a cold scan (no state/repo-status.json) and a warm scan (the state
file of the scan before it). Start-up is included: ours runs as
`python3 scripts/scan_all_repos.py`.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.demo import bench_specs, generate  # noqa: E402
from lib.runner import become_subreaper  # noqa: E402  (what a command leaves is reparented to us)
from lib.views import plain_table  # noqa: E402

# Python's bytecode cache as a user has it: an inherited PYTHONDONTWRITEBYTECODE (set on some CI and sandbox
# machines) would make every run of ours compile its modules again (about 50 ms) after the first.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
       "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reap_leftovers(limit_s: float = 30.0) -> None:
    """Wait for every orphan the command left (reparented to us) to end, `limit_s` at most."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:
            time.sleep(0.01)
    print(f"warning: processes the command left were still running after {limit_s:g}s: not counted",
          file=sys.stderr)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU counts every process it started (git included, and what was left
    running when it exited: we are a subreaper), which a busy machine inflates far less than wall time."""
    start, cpu_start = time.perf_counter(), children_cpu()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    reap_leftovers()  # their CPU is the command's too; not its wall time (nobody waits for them)
    cpu = children_cpu() - cpu_start
    if result.returncode not in (0, 1):
        raise SystemExit(f"{argv[0]} failed: {result.stderr.decode()[-2000:]}")
    return elapsed, cpu


def bench(size: int, runs: int, jobs: int, workdir: Path) -> list[object]:
    home = workdir / f"ws-{size}"
    t0 = time.perf_counter()
    if (home / "config" / "repos.json").exists():  # kept from an earlier run (--keep)
        config = home / "config" / "repos.json"
    else:
        config = generate(home, bench_specs(size))
    made = time.perf_counter() - t0
    repos = sorted((home / "repos").iterdir())
    (home / "repos.txt").write_text("".join(f"{p}\n" for p in repos))
    # Settle every index once so the first timed run is not a racy-git outlier.
    raw_cmd = ["sh", str(ROOT / "bench" / "raw_git_status.sh"), str(home), "4"]
    timed(raw_cmd, ENV)
    scan_cmd = [sys.executable, str(ROOT / "scripts" / "scan_all_repos.py")] + (["--jobs", str(jobs)] if jobs else [])
    scan_env = {**ENV, "ORCHESTRATOR_HOME": str(home)}
    state_file = home / "state" / "repo-status.json"
    times: dict[str, list[tuple[float, float]]] = {"raw": [], "cold": [], "warm": []}
    for _ in range(runs):
        times["raw"].append(timed(raw_cmd, ENV))
        state_file.unlink(missing_ok=True)
        times["cold"].append(timed(scan_cmd, scan_env))
        times["warm"].append(timed(scan_cmd, scan_env))  # the cold scan's state file makes it warm
    wall = {k: statistics.median(w for w, _ in v) for k, v in times.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in times.items()}
    print(f"  {size} repos: generated in {made:.1f}s ({config})", file=sys.stderr)
    return [[size, kind, f"{wall['raw'] * 1000:.0f}", f"{wall[kind] * 1000:.0f}", f"{wall[kind] / wall['raw']:.2f}",
             f"{cpu['raw'] * 1000:.0f}", f"{cpu[kind] * 1000:.0f}", f"{cpu[kind] / cpu['raw']:.2f}"]
            for kind in ("cold", "warm")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=0, help="scan --jobs (default: the tool's default)")
    parser.add_argument("--keep", type=Path, help="build the workspaces here and keep them (reused when there)")
    args = parser.parse_args(argv)
    become_subreaper()
    with tempfile.TemporaryDirectory(prefix="status-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        rows = [row for size in args.sizes for row in bench(size, args.runs, args.jobs, workdir)]
    print(f"median of {args.runs} alternated runs, {os.cpu_count()} cores")
    print(plain_table(rows, ["repos", "scan", "raw git ms", "scan ms", "ratio", "raw cpu ms", "scan cpu ms", "cpu ratio"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
