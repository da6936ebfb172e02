#!/usr/bin/env python3
"""Generate the demo workspace (or a benchmark-sized one) of real git repos with bare remotes."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.demo import bench_specs, demo_specs, generate  # noqa: E402
from lib.errors import script_main  # noqa: E402


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path, help="where to create it (replaced if this script made it before)")
    parser.add_argument("--repos", type=int, default=0, help="make N generated repos instead of the curated demo")
    parser.add_argument("--seed", type=int, default=1, help="random seed for --repos")
    args = parser.parse_args(argv)
    specs = bench_specs(args.repos, args.seed) if args.repos else demo_specs()
    config = generate(args.dir, specs)
    print(f"created {len(specs)} repos with bare remotes in {args.dir.resolve()} (config: {config})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
