"""argv -> verb: launch, monitor, status, add-issue, cleanup, dashboard, pause, resume, retry, kill, send, repin,
attach, logs, diff, init. One-line errors; exit 2 usage/config, 1 work failed."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

from lib.errors import OrchestratorError, clip, script_main


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise OrchestratorError(f"{self.prog}: {message}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value < 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _workers(text: str) -> int:
    """--workers N: 1..MAX_WORKERS when given (0 used to mean the config's number, silently); absent: 0, unset."""
    from orchestrator.config import MAX_WORKERS

    value = _count(text)
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1..{MAX_WORKERS} workers, got {text!r} (leave --workers out "
                                         "for the config's num_workers)")
    return value


def _numbers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected issue numbers like 3,4, got {text!r}") from None


def _with_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a proof-issues.json (default: $ORCHESTRATOR_HOME/config/proof-issues.json)")
    parser.add_argument("--config-dir", type=Path, help="use every *-issues.json in this directory")
    parser.add_argument("--workers", type=_workers, default=0, help="number of workers, 1 or more (default: "
                                                                     "num_workers)")
    parser.add_argument("--session", default="", help="tmux session name (default: tmux_session)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orchestrator", description="Parallel coding agents in tmux with a deterministic monitor.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    launch = verbs.add_parser("launch", help="create the tmux session: monitor, workers, dashboard")
    _with_config(launch)
    launch.add_argument("--dry-run", action="store_true", help="validate and print the plan; change nothing")
    launch.add_argument("--json", action="store_true", help="print the plan as JSON (with --dry-run)")
    monitor = verbs.add_parser("monitor", help="run the monitor loop (launch starts it in window 0)")
    _with_config(monitor)
    monitor.add_argument("--cycle", type=_seconds, help="seconds between cycles (default: cycle_interval)")
    monitor.add_argument("--no-delay", action="store_true", help="skip the initial wait")
    monitor.add_argument("--once", action="store_true", help="run one cycle and exit")
    status = verbs.add_parser("status", help="one report of workers and issues")
    _with_config(status)
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    clean = verbs.add_parser("cleanup", help="kill the session and agents; remove worktrees that are clean and pushed")
    _with_config(clean)
    clean.add_argument("--keep-worktrees", action="store_true", help="kill the session only")
    clean.add_argument("--force", action="store_true",
                       help="also remove worktrees with unsaved work, after saving it on a backup ref")
    clean.add_argument("--json", action="store_true", help="print the outcome as JSON")
    dash = verbs.add_parser("dashboard", help="live read-only view of workers and issues (Ctrl-C quits)")
    _with_config(dash)
    dash.add_argument("--interval", type=_seconds, default=2.0, help="seconds between redraws")
    dash.add_argument("--once", action="store_true", help="draw one frame and exit")
    # Steering (orchestrator.commands): through the running monitor's command queue, else applied here.
    for verb, what in (("pause", "pause the project(s) or one issue (reason user): no try starts, running ones "
                                 "finish"),
                       ("resume", "clear the user, alert and auth pauses of the project(s), or of one issue"),
                       ("retry", "put a failed issue back to pending, its retries reset (branch and commits kept)"),
                       ("kill", "stop an issue's running try now; the issue fails with `killed by user`"),
                       ("send", "a follow-up instruction for an issue's agent (given at the start of its next try)")):
        sub = verbs.add_parser(verb, help=what)
        _with_config(sub)
        sub.add_argument("--project", default="", help="the issue's project (default: the run's only project; "
                                                       "pause/resume: every project)")
        if verb in ("pause", "resume"):
            sub.add_argument("number", nargs="?", type=_count, metavar="ISSUE",
                             help="only this issue (default: the project and all its issues)")
            sub.add_argument("--issue", type=_count, help="only this issue (the same as ISSUE)")
        else:
            sub.add_argument("number", type=_count, metavar="ISSUE", help="the issue number")
        if verb == "pause":
            sub.add_argument("--detail", default="", help="why, shown by status")
        if verb == "send":
            sub.add_argument("text", metavar="TEXT", help="the instruction, as one argument (quote it)")
        sub.add_argument("--wait", type=_seconds, default=None,
                         help="seconds to wait for a running monitor to apply it (default 30)")
    pin = verbs.add_parser("repin", help="pin each repo's push target again: repos.json's remote, else origin's "
                                         "push url now (pushes never follow .git/config by themselves)")
    _with_config(pin)
    pin.add_argument("--repo", help="only this repo (a name from the config's repos)")
    pin.add_argument("--json", action="store_true", help="print what was pinned as JSON")
    add = verbs.add_parser("add-issue", help="append an issue to the config (a running monitor picks it up)")
    add.add_argument("number", type=_count, help="the new issue's number (unique in its config)")
    add.add_argument("--title", required=True, help="its title")
    add.add_argument("--priority", type=_count, default=1, help="lower runs first among eligible issues (default 1)")
    add.add_argument("--wave", type=_count, default=1, help="its wave: waits for every earlier wave (default 1)")
    add.add_argument("--depends-on", type=_numbers, default=[], help="issue numbers it waits for, like 3,4")
    add.add_argument("--description", default="", help="what the agent should do (goes into its prompt)")
    add.add_argument("--repo", default="", help="its repo, a name from the config's repos (required when it has "
                                                "several; with --config-dir it also picks the config)")
    add.add_argument("--config", type=Path, help="the config file to append to (default: "
                                                 "$ORCHESTRATOR_HOME/config/proof-issues.json)")
    add.add_argument("--config-dir", type=Path, help="a directory of *-issues.json: append to the one with --repo")
    init = verbs.add_parser("init", help="write a starter config/proof-issues.json for a repo of repos.json")
    init.add_argument("--repo", required=True, help="the repo: a name from config/repos.json")
    init.add_argument("--pipeline", default="", help="its stages, comma-separated (default: implement)")
    init.add_argument("--config", type=Path, help="where to write (default: "
                                                  "$ORCHESTRATOR_HOME/config/proof-issues.json); never overwritten")
    init.add_argument("--agent-command", default="", help="the agent_command to write (default: none, so Claude "
                                                          "Code runs with structured output)")
    for verb, what in (("attach", "show the tmux window of the worker running the issue (select it and attach, or "
                                  "switch this client when inside the run's tmux)"),
                       ("logs", "print the issue's try logs in order, each under its file name"),
                       ("diff", "the issue's branch against its merge-base with the default branch, recorded when "
                                "it was assigned")):
        sub = verbs.add_parser(verb, help=what)
        sub.add_argument("issue", type=_issue_number, help="the issue's number")
        sub.add_argument("--project", default="", help="the issue's project (needed when several have the number)")
        _with_config(sub)
        if verb == "logs":
            sub.add_argument("--follow", action="store_true",
                             help="keep printing the running try's log until that try ends (Ctrl-C stops)")
        if verb == "diff":
            sub.add_argument("--stat", action="store_true", help="only the diffstat")
    return parser


def _issue_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # not a number, or one of over 4300 digits
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an issue number > 0, got {clip(text, 20)!r}")
    return value


def _launch(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from orchestrator.launch import apply_launch, plan_launch
    from orchestrator.run import open_run

    run = open_run(args.config, args.config_dir, args.workers, args.session)
    plan = plan_launch(run)
    if args.json:
        out(json.dumps({**plan.to_json(), "dry_run": args.dry_run}, indent=2, ensure_ascii=False))
    else:
        for line in plan.lines():
            out(("(dry run) " if args.dry_run else "") + line)
    if not args.dry_run:
        apply_launch(run, plan)
        if not args.json:
            from orchestrator.show import attach_command

            out(f"launched: {attach_command(run)}")
    return 0


def _monitor(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from orchestrator.monitor import monitor
    from orchestrator.run import open_run

    if args.cycle is not None and args.cycle <= 0:
        raise OrchestratorError("monitor: --cycle must be more than 0 seconds")
    run = open_run(args.config, args.config_dir, args.workers, args.session)
    failed = monitor(run, cycle=args.cycle, once=args.once, no_delay=args.no_delay, say=out)
    return 1 if failed else 0


def _status(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from orchestrator.commands import mark_reported
    from orchestrator.report import status_document, status_lines, unreported_refusals
    from orchestrator.run import open_run

    run = open_run(args.config, args.config_dir, args.workers, args.session)
    doc = status_document(run)
    if args.json:
        out(json.dumps(doc, indent=2, ensure_ascii=False))
        return 0
    for line in status_lines(doc):
        out(line)
    for project, ids in unreported_refusals(doc).items():  # a refusal the text showed is shown once
        mark_reported(run.state_root, project, ids)
    return 0


def _add_issue(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from lib.paths import Paths
    from orchestrator.config import add_issue
    from orchestrator.starter import add_issue_target

    if args.number <= 0:
        raise OrchestratorError("add-issue: the issue number must be positive")
    path, repo = add_issue_target(args.config, args.config_dir, args.repo, Paths.from_env().home)
    add_issue(path, args.number, args.title, args.priority, args.wave, args.depends_on, args.description, repo)
    out(f"added #{args.number}{f' (repo {repo})' if repo else ''} to {path}")
    return 0


def _init(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from lib.paths import Paths
    from orchestrator.starter import init, init_notes

    path = init(Paths.from_env(), args.repo, args.pipeline, args.config, args.agent_command)
    out(f"wrote {path}")
    for note in init_notes(args.agent_command):
        out(note)
    out("next: edit its example issue (and project_context), then: python3 -m orchestrator launch --dry-run"
        + (f" --config {path}" if args.config else ""))
    return 0


def _steer(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from orchestrator import commands, steer
    from orchestrator.run import open_run

    issue = args.number
    if getattr(args, "issue", None) is not None:
        if issue is not None and issue != args.issue:
            raise OrchestratorError(f"{args.verb}: give the issue once (ISSUE or --issue)")
        issue = args.issue
    run = open_run(args.config, args.config_dir, args.workers, args.session)
    text = getattr(args, "text", "") or getattr(args, "detail", "")
    given = commands.check(run, args.verb, args.project, issue, text)
    outcome = steer.give(run, given, lambda _line: None,
                         commands.ACK_WAIT if args.wait is None else args.wait)
    for line in outcome.lines:
        out(line)
    if outcome.error:
        raise OrchestratorError(outcome.error)
    return 0


def _cleanup(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from orchestrator.cleanup import cleanup, report_lines
    from orchestrator.run import open_run

    report = cleanup(open_run(args.config, args.config_dir, args.workers, args.session), args.keep_worktrees,
                     args.force)
    if args.json:
        out(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        for line in report_lines(report):
            out(line)
    return 1 if report.refused else 0


def _repin(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from dataclasses import asdict

    from lib.paths import Paths
    from orchestrator.pins import repin
    from orchestrator.run import open_run

    run = open_run(args.config, args.config_dir, args.workers, args.session)
    done = repin(run.configs, run.state_root, Paths.from_env().home, args.repo)
    if args.json:
        out(json.dumps([{**asdict(r), "new": asdict(r.new)} for r in done], indent=2, ensure_ascii=False))
    for r in [] if args.json else done:
        was = "unchanged" if r.old == r.new.url else f"was {r.old}" if r.old else "first pin"
        out(f"{r.project}: repo {r.repo} pushes to {r.new.url} (from {r.new.source}; {was})")
    return 0


def _dashboard(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from rich.console import Console

    from orchestrator.dashboard import render, run_dashboard
    from orchestrator.report import status_document
    from orchestrator.run import open_run

    run = open_run(args.config, args.config_dir, args.workers, args.session)

    def load() -> dict[str, Any]:
        try:
            run.reload()
        except OrchestratorError:
            pass  # mid-edit: show the last good config
        return status_document(run)

    if args.once:
        Console().print(render(load()))
    else:
        run_dashboard(load, max(args.interval, 0.2))
    return 0


def _show(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    from orchestrator import show
    from orchestrator.run import open_run

    run = open_run(args.config, args.config_dir, args.workers, args.session)
    cfg, _ = show.find_issue(run, args.issue, args.project)
    if args.verb == "attach":
        return show.attach(run, cfg, args.issue)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        if args.verb == "logs":
            show.show_logs(run, cfg, args.issue, write, follow=args.follow)
        else:
            note = show.show_diff(run, cfg, args.issue, write, stat=args.stat)
            if note:
                print(note, file=sys.stderr)
    except BrokenPipeError:  # `logs 3 | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


VERBS: dict[str, Callable[[argparse.Namespace, Callable[[str], None]], int]] = {
    "launch": _launch, "monitor": _monitor, "status": _status, "add-issue": _add_issue, "cleanup": _cleanup, "dashboard": _dashboard,
    "pause": _steer, "resume": _steer, "retry": _steer, "kill": _steer, "send": _steer,
    "repin": _repin,
    "attach": _show, "logs": _show, "diff": _show, "init": _init,
}


@script_main
def main(argv: list[str] | None = None) -> int:
    def out(line: str) -> None:
        print(line, flush=True)

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return VERBS[args.verb](args, out)
