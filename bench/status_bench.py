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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.demo import bench_specs, generate  # noqa: E402
from lib.views import plain_table  # noqa: E402

ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"{argv[0]} failed: {result.stderr.decode()}")
    return elapsed


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
    timed(["sh", str(ROOT / "bench" / "raw_git_status.sh"), str(home), "4"], ENV)
    raw_cmd = ["sh", str(ROOT / "bench" / "raw_git_status.sh"), str(home), "4"]
    scan_cmd = [sys.executable, str(ROOT / "scripts" / "scan_all_repos.py")] + (["--jobs", str(jobs)] if jobs else [])
    scan_env = {**ENV, "ORCHESTRATOR_HOME": str(home)}
    state_file = home / "state" / "repo-status.json"
    raw_times, cold_times, warm_times = [], [], []
    for _ in range(runs):
        raw_times.append(timed(raw_cmd, ENV))
        state_file.unlink(missing_ok=True)
        cold_times.append(timed(scan_cmd, scan_env))
        warm_times.append(timed(scan_cmd, scan_env))  # the cold scan's state file makes it warm
    raw, cold, warm = (statistics.median(t) for t in (raw_times, cold_times, warm_times))
    print(f"  {size} repos: generated in {made:.1f}s ({config})", file=sys.stderr)
    return [[size, "cold", f"{raw * 1000:.0f}", f"{cold * 1000:.0f}", f"{cold / raw:.2f}", f"{cold / size * 1000:.2f}"],
            [size, "warm", f"{raw * 1000:.0f}", f"{warm * 1000:.0f}", f"{warm / raw:.2f}", f"{warm / size * 1000:.2f}"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=0, help="scan --jobs (default: the tool's default)")
    parser.add_argument("--keep", type=Path, help="build the workspaces here and keep them (reused when there)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="status-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        rows = [row for size in args.sizes for row in bench(size, args.runs, args.jobs, workdir)]
    print(f"median of {args.runs} alternated runs, {os.cpu_count()} cores")
    print(plain_table(rows, ["repos", "scan", "raw git ms", "scan ms", "ratio", "scan ms/repo"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
