#!/usr/bin/env python3
"""Start-up cost of the front doors: `inv --list` and `import tasks` (target: under 0.2 s).

    python bench/startup_bench.py [--runs 15]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib.views import plain_table  # noqa: E402


def median_s(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    inv = str(Path(sys.executable).parent / "inv")
    rows = [
        ["python -c pass", f"{median_s([sys.executable, '-c', 'pass'], args.runs) * 1000:.0f}"],
        ["python -c 'import tasks'", f"{median_s([sys.executable, '-c', 'import tasks'], args.runs) * 1000:.0f}"],
        ["inv --list", f"{median_s([inv, '--list'], args.runs) * 1000:.0f}"],
    ]
    print(f"median of {args.runs} runs")
    print(plain_table(rows, ["command", "ms"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
