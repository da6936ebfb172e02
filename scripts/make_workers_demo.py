#!/usr/bin/env python3
"""The proof-workers demo: create it (DIR), or wait until its run is done (--wait DIR)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "proof-workers")]

from lib.errors import OrchestratorError, error_lines  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path, help="the demo directory (replaced if this script made it before)")
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                        help="wait up to SECONDS for the launched run to finish instead of creating the demo")
    args = parser.parse_args(argv)
    try:
        if args.wait:
            from orchestrator.demo import wait_until_done
            from orchestrator.report import status_document
            from orchestrator.run import open_run

            os.environ["ORCHESTRATOR_HOME"] = str((args.dir / "home").resolve())
            run = open_run()

            def load() -> dict:
                run.reload()
                return status_document(run)

            wait_until_done(load, args.wait)
            print("run finished")
        else:
            from orchestrator.demo import make_demo

            print(f"demo created; ORCHESTRATOR_HOME={make_demo(args.dir)}")
    except OrchestratorError as err:
        print(error_lines(err), file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
