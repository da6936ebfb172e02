#!/usr/bin/env python3
"""Run the tests of every repo with a known language; writes state/test-results.json (same as `inv test-all`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.config import load_workspace, split_names  # noqa: E402
from lib.errors import script_main  # noqa: E402
from lib.paths import Paths  # noqa: E402
from lib.testall import INTERRUPT_GRACE_S, TestAllOptions, printout, run_command, state_warnings  # noqa: E402


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    # The short flags are inv test-all's (lib.cli.SHORT_FLAGS; tests/test_testall_script.py compares them).
    parser.add_argument("-j", "--jobs", type=int, default=0, help="repos tested at once (default: one per core)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per repo (0: no limit)")
    parser.add_argument("--grace", type=float, default=INTERRUPT_GRACE_S,
                        help="seconds a timed-out command has after SIGINT to print where it hung, before SIGTERM "
                             "(then SIGKILL 5 s later; repos tested here); default 10")
    parser.add_argument("--junit-xml", type=Path, help="also write a JUnit XML report here")
    parser.add_argument("-t", "--tag", action="append", default=[], help="only repos with this tag (repeatable)")
    parser.add_argument("-o", "--only", default="", help="only these repos, comma-separated")
    parser.add_argument("--failed", action="store_true", help="rerun only what failed or timed out last time")
    parser.add_argument("--changed", action="store_true",
                        help="report a repo passed without running it when its HEAD, clean tree, command and host "
                             "are those of its last passed run")
    parser.add_argument("-n", "--dry-run", action="store_true", help="print what would run; run nothing")
    parser.add_argument("--json", action="store_true",
                        help="print {summary, results} (each result as in state/test-results.json) instead of the "
                             "table")
    parser.add_argument("--matrix", action="store_true",
                        help="print the selected repos as a CI matrix, {\"include\": [{repo, language, host}]}; "
                             "run nothing")
    parser.add_argument("--hosts", default="", help="spread the repos over these build hosts of config/hosts.toml, "
                        "comma-separated; `local` is this machine (default: each repo on its `host`, else here)")
    parser.add_argument("--accept-new-host-key", action="store_true",
                        help="trust and remember a host key never seen before; a changed key is always refused")
    args = parser.parse_args(argv)
    paths = Paths.from_env()
    workspace = load_workspace(paths.repos_file)
    options = TestAllOptions(args.jobs, args.timeout, args.junit_xml, args.tag, split_names(args.only), args.failed,
                             args.changed, args.hosts, args.accept_new_host_key, args.grace, args.dry_run,
                             args.matrix)
    warn(state_warnings(paths, options))
    shown = printout(run_command(workspace, paths, options), args.json)
    for line in shown.out:
        print(line)
    warn(shown.err)
    return shown.code


def warn(lines: list[str]) -> None:
    for line in lines:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
