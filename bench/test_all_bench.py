#!/usr/bin/env python3
"""Benchmark test-all's wall time against the sum of its repos' test times and the slowest one.

    python bench/test_all_bench.py [--repos 8] [--jobs 8]
    python bench/test_all_bench.py --skewed [--jobs 2]

Each generated make repo's `make test` sleeps a different time (0.5 s to 2.5 s,
I/O-like waiting, as most test suites' network and disk waits are). A serial
run costs the sum; test-all should approach the slowest repo.

--skewed: seven quick repos (0.5 s) and, last in config order, one slow one
(3 s), run twice: the first run knows no durations (config order, so the slow
repo starts last); the second starts the slowest known repo first, so the wall
time approaches max(slowest, sum / jobs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.demo import RepoSpec, generate  # noqa: E402
from lib.views import plain_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--skewed", action="store_true", help="7 quick repos and a slow last one, run twice")
    args = parser.parse_args(argv)
    if args.skewed:
        return skewed(args.jobs if args.jobs != 8 else 2)
    durations = [round(0.5 + 2.0 * i / max(1, args.repos - 1), 2) for i in range(args.repos)]
    rows = []
    with sleeping_suites(durations) as (run_tests, home):
        for jobs in sorted({1, args.jobs}):
            wall = run_tests(jobs)
            results = json.loads((home / "state" / "test-results.json").read_text())["results"]
            assert all(r["status"] == "passed" for r in results)
            rows.append([args.repos, jobs, f"{sum(durations):.1f}", f"{max(durations):.1f}", f"{wall:.2f}",
                         f"{wall / max(durations):.2f}"])
    print(plain_table(rows, ["repos", "jobs", "sum s", "slowest s", "wall s", "wall/slowest"]))
    return 0


def skewed(jobs: int) -> int:
    durations = [0.5] * 7 + [3.0]
    rows = []
    with sleeping_suites(durations) as (run_tests, _):
        for run in ("first (no durations known)", "second (longest first)"):
            wall = run_tests(jobs)
            rows.append([run, jobs, f"{sum(durations):.1f}", f"{max(max(durations), sum(durations) / jobs):.1f}",
                         f"{wall:.2f}"])
    print(plain_table(rows, ["run", "jobs", "sum s", "max(slowest, sum/jobs) s", "wall s"]))
    return 0


@contextmanager
def sleeping_suites(durations: list[float]) -> Iterator[tuple[Callable[[int], float], Path]]:
    """A generated workspace of one repo per duration whose test sleeps that long; yields a function that runs
    test-all with N jobs and returns its wall time, and the workspace's home."""
    specs = [RepoSpec(f"suite-{i:02d}", "make", "clean",
                      {"Makefile": f"test:\n\t@sleep {d}; echo ok\n"}) for i, d in enumerate(durations)]
    with tempfile.TemporaryDirectory(prefix="test-all-bench-") as tmp:
        home = Path(tmp) / "ws"
        generate(home, specs)
        env = {**os.environ, "ORCHESTRATOR_HOME": str(home), "ORCHESTRATOR_LOG_DIR": str(Path(tmp) / "logs")}

        def run_tests(jobs: int) -> float:
            start = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "scripts" / "run_all_tests.py"), "--jobs", str(jobs)],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.perf_counter() - start

        yield run_tests, home


if __name__ == "__main__":
    raise SystemExit(main())
