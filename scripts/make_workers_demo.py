#!/usr/bin/env python3
"""The proof-workers demo: create it (DIR), or wait until its run is done (--wait DIR); with --claude, run it
whole (create, launch, wait, status, cleanup) with the real Claude Code CLI from .tools/ against a stand-in
Messages API on 127.0.0.1 that this process serves meanwhile."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts" / "proof-workers")]

from lib.errors import script_main  # noqa: E402


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path, help="the demo directory (replaced if this script made it before)")
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                        help="wait up to SECONDS for the launched run to finish instead of creating the demo")
    parser.add_argument("--claude", action="store_true",
                        help="run the whole demo with the real Claude Code CLI against a stand-in model")
    args = parser.parse_args(argv)
    from orchestrator.demo import make_demo, run_claude_demo, wait_for_run

    if args.claude:
        return run_claude_demo(args.dir, args.wait or 300)
    if args.wait:
        os.environ["ORCHESTRATOR_HOME"] = str((args.dir / "home").resolve())
        wait_for_run(args.wait)
        print("run finished")
    else:
        print(f"demo created; ORCHESTRATOR_HOME={make_demo(args.dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
