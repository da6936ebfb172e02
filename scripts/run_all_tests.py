#!/usr/bin/env python3
"""Run the tests of every repo with a known language; writes state/test-results.json (same as `inv test-all`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.config import load_workspace, split_names  # noqa: E402
from lib.errors import OrchestratorError, error_lines  # noqa: E402
from lib.paths import Paths  # noqa: E402
from lib.testall import plan_test_all, run_test_all  # noqa: E402
from lib.views import outcomes_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=0, help="repos tested at once (default: one per core)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per repo (0: no limit)")
    parser.add_argument("--junit-xml", type=Path, help="also write a JUnit XML report here")
    parser.add_argument("--tag", action="append", default=[], help="only repos with this tag (repeatable)")
    parser.add_argument("--only", default="", help="only these repos, comma-separated")
    parser.add_argument("--failed", action="store_true", help="rerun only what failed or timed out last time")
    args = parser.parse_args(argv)
    try:
        paths = Paths.from_env()
        workspace = load_workspace(paths.repos_file)
        only = split_names(args.only)
        plans = plan_test_all(workspace, paths, args.tag, only, args.failed)
    except OrchestratorError as err:
        print(error_lines(err), file=sys.stderr)
        return 2
    if not plans:
        print("nothing to test" + (" (nothing failed last time)" if args.failed else ""))
        return 0
    report = run_test_all(workspace, paths, plans, args.jobs, args.timeout or None, args.junit_xml)
    print(outcomes_table(report.outcomes))
    print(f"{report.summary_line()} -> {report.state_file}")
    return 1 if report.failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
