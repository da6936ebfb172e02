#!/usr/bin/env python3
"""Fetch every repo and fast-forward its default branch when safe (same as `inv sync-all`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.errors import leave, print_report, script_main  # noqa: E402
from lib.paths import Paths  # noqa: E402
from lib.syncall import run_command  # noqa: E402
from lib.views import sync_table  # noqa: E402


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--net-jobs", type=int, default=4, help="repos fetched at once (default 4)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per fetch or clone (0: no limit)")
    parser.add_argument("--clone-missing", action="store_true", help="clone repos whose path does not exist")
    parser.add_argument("--tag", action="append", default=[], help="only repos with this tag (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="fetch nothing, change nothing")
    parser.add_argument("--host", default="", help="sync the repos in this build host's workspace instead (local: here)")
    parser.add_argument("--accept-new-host-key", action="store_true", help="trust a host key never seen before")
    args = parser.parse_args(argv)
    report = run_command(Paths.from_env(), args.tag, args.net_jobs, args.timeout or None, args.clone_missing,
                         args.dry_run, args.host, args.accept_new_host_key)
    return print_report([sync_table(report.outcomes), report.closing_line()], report.notes,
                        1 if report.failing else 0)


if __name__ == "__main__":
    leave(main)
