#!/usr/bin/env python3
"""Scan every configured repo and write state/repo-status.json (standard library only)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.errors import leave, print_report, script_main  # noqa: E402
from lib.paths import Paths  # noqa: E402
from lib.scan import scan_and_save  # noqa: E402


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=0, help="repos scanned at once (default: 4 per core)")
    parser.add_argument("--tag", action="append", default=[], help="only repos with this tag (repeatable)")
    args = parser.parse_args(argv)
    report, state_file, not_written = scan_and_save(Paths.from_env(), args.jobs, args.tag)
    return print_report([report.summary_line() + ("" if not_written else f" -> {state_file}")],
                        [not_written] if not_written else [], 2 if not_written else 1 if report.errors else 0,
                        err_first=[f"{status.name}: {status.error} ({status.path})" for status in report.errors])


if __name__ == "__main__":
    leave(main)
