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

from lib.errors import OrchestratorError, script_main  # noqa: E402


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path, help="the demo directory (replaced if this script made it before)")
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                        help="wait up to SECONDS for the launched run to finish instead of creating the demo")
    parser.add_argument("--claude", action="store_true",
                        help="run the whole demo with the real Claude Code CLI against a stand-in model")
    args = parser.parse_args(argv)
    if args.claude:
        return run_claude_demo(args.dir, args.wait or 300)
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
    return 0


CLAUDE = ROOT / ".tools" / "node_modules" / ".bin" / "claude"


def run_claude_demo(target: Path, wait: float) -> int:
    """The demo with the real CLI: its model is tests/fake_anthropic.py's stand-in (a Bash call that commits each
    stage), served by this process until the run is done; the agent's HOME is the demo's own."""
    import shlex

    from orchestrator import cli
    from orchestrator.demo import make_demo, wait_until_done
    from orchestrator.report import status_document
    from orchestrator.run import open_run

    if not os.access(CLAUDE, os.X_OK):
        raise OrchestratorError(f"the Claude Code CLI is not installed at {CLAUDE}: run .ci/run, or npm install "
                                "--prefix .tools @anthropic-ai/claude-code@<the version .ci/run pins>")
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_anthropic import FakeAnthropic, demo_answer

    with FakeAnthropic() as api:
        api.autopilot = demo_answer
        agent_home = target.resolve() / "agent-home"
        env = {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": "demo",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "CLAUDE_CODE_MAX_RETRIES": "2", "HOME": str(agent_home), "DISABLE_AUTOUPDATER": "1",
               **({"IS_SANDBOX": "1"} if os.getuid() == 0 else {})}
        command = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + f" {shlex.quote(str(CLAUDE))} -p " \
            "--output-format stream-json --verbose --dangerously-skip-permissions < {{prompt_file}}"
        home = make_demo(target, command, "claude")
        agent_home.mkdir()
        os.environ["ORCHESTRATOR_HOME"] = str(home)
        print(f"demo created with the real Claude Code CLI; stand-in model at {api.url}; ORCHESTRATOR_HOME={home}")
        code = cli.main(["launch"])
        if code:
            return code
        run = open_run()

        def load() -> dict:
            run.reload()
            return status_document(run)

        try:
            doc = wait_until_done(load, wait)
        finally:
            cli.main(["status"])
        print(f"run finished: {len(api.model_calls())} model calls answered")
        failed = sum(p["counts"].get("failed", 0) + p["counts"].get("blocked", 0) for p in doc["projects"])
        return cli.main(["cleanup"] + (["--keep-worktrees"] if failed else [])) or (1 if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
