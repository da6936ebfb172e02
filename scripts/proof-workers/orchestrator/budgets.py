"""Budgets: an issue's max_cost_usd / max_turns / max_tokens and a project's max_total_cost_usd, from usage.json.

Cost, turns and tokens add up over every try of an issue (and every resumed session). The monitor checks them
each cycle from what the probe has read; the agent also gets them as flags where it has some (Claude's
--max-budget-usd and --max-turns, for what is left).
"""
from __future__ import annotations

import shlex
from dataclasses import replace
from typing import Any, Callable

from lib.errors import OrchestratorError
from lib.statefile import read_json
from orchestrator import agents, pauses
from orchestrator.config import Issue, ProjectConfig, agent_kind
from orchestrator.decide import Snapshot
from orchestrator.state import RunFiles, WorkerRecord

USED_KEYS = {"max_cost_usd": "cost_usd", "max_turns": "turns", "max_tokens": "tokens"}


def usage_by_try(files: RunFiles) -> dict[str, dict[str, Any]]:
    """usage.json's entries (try stem -> {project, issue, cost_usd, turns, tokens_in, tokens_out, ...})."""
    try:
        doc = read_json(files.usage, {})
    except (OSError, OrchestratorError):
        return {}
    tries = doc.get("tries") if isinstance(doc, dict) else None
    return {k: v for k, v in tries.items() if isinstance(v, dict)} if isinstance(tries, dict) else {}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def spent(entries: list[dict[str, Any]]) -> dict[str, float]:
    """Cost, turns and tokens summed over some tries' usage entries (or agent tallies)."""
    return {"cost_usd": sum(_number(e.get("cost_usd")) for e in entries),
            "turns": sum(_number(e.get("turns")) for e in entries),
            "tokens": sum(_number(e.get("tokens_in")) + _number(e.get("tokens_out")) for e in entries)}


def issue_spent(usage: dict[str, dict[str, Any]], project: str, issue: int, but: str = "") -> dict[str, float]:
    return spent([e for k, e in usage.items() if k != but and e.get("project") == project and e.get("issue") == issue])


def over(issue: Issue, used: dict[str, float]) -> str:
    """`budget: $X of $Y` (or turns, tokens) when the issue has gone past one of its limits (a limit may be used in full), else ""."""
    for key, limit in issue.budget:
        value = used[USED_KEYS[key]]
        if value > limit:  # a limit is what may be used: max_turns 2 allows two turns (as the CLI's --max-turns)
            if key == "max_cost_usd":
                return f"budget: ${value:.4f} of ${limit:.4f}"
            return f"budget: {value:.0f} of {limit:.0f} {USED_KEYS[key]}"
    return ""


def project_over(cfg: ProjectConfig, usage: dict[str, dict[str, Any]]) -> str:
    """`budget: $X of $Y` when the project's tries together cost at least max_total_cost_usd, else ""."""
    if cfg.max_total_cost_usd is None:
        return ""
    total = spent([e for e in usage.values() if e.get("project") == cfg.project])["cost_usd"]
    return f"budget: ${total:.4f} of ${cfg.max_total_cost_usd:.4f}" if total >= cfg.max_total_cost_usd else ""


def agent_flags(cfg: ProjectConfig, issue: Issue, used: dict[str, float]) -> str:
    """What is left of the issue's budget as the agent's own flags (Claude only: the others have none), appended
    to an agent_command that is a plain `claude ...` command (no `;`, `&`, `|`: never to a shell pipeline)."""
    budget = dict(issue.budget)
    if cfg.agent != "claude" or agent_kind(cfg.agent_command) != "claude" or \
            not agents.plain_command(cfg.agent_command):
        return ""
    args = []
    if "max_cost_usd" in budget:
        args += ["--max-budget-usd", f"{max(budget['max_cost_usd'] - used['cost_usd'], 0.0):.4f}"]
    if "max_turns" in budget:
        args += ["--max-turns", str(max(int(budget["max_turns"] - used["turns"]), 1))]
    return " " + shlex.join(args) if args else ""


def check(run: Any, records: list[WorkerRecord], snapshots: list[Snapshot], now: float,
          say: Callable[[str], None]) -> list[Snapshot]:
    """This cycle's budget checks: a try whose issue is over its budget gets `agent_stop` budget (decide fails the
    issue); a project over max_total_cost_usd is paused (reason budget), and unpaused once its limit is raised."""
    usage = usage_by_try(run.files)
    by_worker = {r.worker_id: r for r in records}
    out = []
    for snap in snapshots:
        record = by_worker.get(snap.worker_id)
        issue = None
        if record is not None and record.project and record.issue_number is not None:
            try:
                issue = run.config_of(record.project).issue(record.issue_number)
            except OrchestratorError:
                issue = None
        if issue is not None and issue.budget and record is not None:
            stem = run.files.try_stem(record.worker_id, record.try_id)
            before = issue_spent(usage, record.project or "", issue.number, but=stem)
            # a prepared try not yet started still holds the last try's tally (already in usage.json)
            now_used = spent([record.agent]) if record.agent and record.launched else spent([])
            detail = over(issue, {k: before[k] + now_used[k] for k in before})
            if detail:
                snap = replace(snap, agent_stop="budget", agent_detail=detail)
        out.append(snap)
    for cfg in run.configs:
        path = pauses.pause_file(run.state_root, cfg.project)
        detail = project_over(cfg, usage)
        try:
            if detail and pauses.add(path, "budget", detail, now):
                run.files.log_event({"action": "budget", "project": cfg.project, "detail": detail})
                say(f"project {cfg.project} paused: {detail} (max_total_cost_usd)")
            elif not detail and any(e.get("reason") == "budget" for e in pauses.read(path)["project"]):
                pauses.clear(path, reasons=("budget",))
                say(f"project {cfg.project}: within its budget again, budget pause cleared")
        except OrchestratorError as err:
            say(f"budget check of {cfg.project} skipped: {err}")
    return out
