#!/usr/bin/env python3
"""Run the tests of every repo with a known language; writes state/test-results.json (same as `inv test-all`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.batch import check_state  # noqa: E402
from lib.config import load_workspace, split_names  # noqa: E402
from lib.errors import script_main  # noqa: E402
from lib.paths import Paths  # noqa: E402
from lib.remote.fleet import plan_groups, test_all_in_groups  # noqa: E402
from lib.testall import plan_test_all  # noqa: E402
from lib.views import outcomes_table  # noqa: E402


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=0, help="repos tested at once (default: one per core)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per repo (0: no limit)")
    parser.add_argument("--junit-xml", type=Path, help="also write a JUnit XML report here")
    parser.add_argument("--tag", action="append", default=[], help="only repos with this tag (repeatable)")
    parser.add_argument("--only", default="", help="only these repos, comma-separated")
    parser.add_argument("--failed", action="store_true", help="rerun only what failed or timed out last time")
    parser.add_argument("--hosts", default="", help="spread the repos over these build hosts of config/hosts.toml, "
                        "comma-separated; `local` is this machine (default: each repo on its `host`, else here)")
    parser.add_argument("--accept-new-host-key", action="store_true",
                        help="trust and remember a host key never seen before; a changed key is always refused")
    args = parser.parse_args(argv)
    paths = Paths.from_env()
    workspace = load_workspace(paths.repos_file)
    only = split_names(args.only)
    warn(check_state(paths, "test"))
    plans = plan_test_all(workspace, paths, args.tag, only, args.failed, args.junit_xml)
    fleet, groups = plan_groups(paths, [p.repo for p in plans], args.hosts, args.jobs)
    if not plans:
        print("nothing to test" + (" (nothing failed last time)" if args.failed else ""))
        return 0
    report = test_all_in_groups(paths, workspace, plans, fleet, groups, args.jobs, args.timeout or None,
                                args.junit_xml, args.accept_new_host_key)
    print(outcomes_table(report.outcomes))
    print(f"{report.summary_line()} -> {report.state_file}")
    warn(report.notes)
    return 1 if report.failing else 0


def warn(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
