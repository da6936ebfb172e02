"""The prompt a stage's agent reads from its file: built-in per stage, or the config's `prompts` override."""
from __future__ import annotations

import re
from typing import Any

from orchestrator.config import Issue, ProjectConfig

STAGE_TASKS = {
    "implement": "Implement the issue below. Build and test it, then commit your work.",
    "optimize": "Improve the performance and clarity of the code this branch changed, keeping behaviour; commit.",
    "write_tests": "Write tests that cover the behaviour this branch added or changed; commit them.",
    "run_tests_fix": "Run the test suite, fix every failure this branch caused, and commit the fixes.",
    "document": "Document what this branch changed (README, docstrings, changelog) and commit.",
    "research": "Research the question in the issue; write your findings to a markdown file and commit it.",
    "draft": "Draft the document the issue asks for and commit it.",
    "validate": "Check the work on this branch against the issue; fix what is wrong and commit.",
    "review": "Review the changes on this branch against the issue; fix what you find and commit.",
}
TEMPLATE = """# Issue #{{issue.number}}: {{issue.title}}

Stage: {{stage}} ({{stage_position}} of the pipeline {{pipeline}})
Project: {{project}}
Worktree: {{worktree}} (branch {{branch}})

## Your task
{{task}}
{{commit_rule}}

## Rules
{{rules}}

## Issue
{{issue.description}}

## Project context
{{project_context}}
"""
PLACEHOLDER = re.compile(r"\{\{\s*([a-z_.]+)\s*\}\}")
RULES = """- Commit on the branch {branch} only: never switch, create, move or delete other branches or tags.
- Never push: the orchestrator pushes your commits itself.
- Never change git config (no `git config`, remotes, hooks or credentials).
- Never write outside your worktree {worktree}: not the main checkout, not other worktrees, not other repos.
- Work left uncommitted is not lost (it stays in the worktree, and cleanup keeps it), but it does not count: \
a stage ends only with at least one new commit on this branch."""


def _context(ctx: dict[str, Any]) -> str:
    lines = []
    for key in ("language", "build_command", "test_command", "commit_prefix"):
        if ctx.get(key):
            lines.append(f"- {key}: {ctx[key]}")
    for key in ("safety_rules", "key_files"):
        items = ctx.get(key) or []
        if isinstance(items, list) and items:
            lines.append(f"- {key}:")
            lines.extend(f"  - {item}" for item in items)
    return "\n".join(lines) or "(none given)"


def render(cfg: ProjectConfig, issue: Issue, stage_index: int, worktree: str, branch: str,
           continuation: str = "") -> str:
    stage = cfg.pipeline[stage_index]
    prefix = str(cfg.project_context.get("commit_prefix") or "")
    values = {
        "issue.number": str(issue.number), "issue.title": issue.title,
        "issue.description": issue.description or "(no description: work from the title)",
        "stage": stage, "stage_position": f"{stage_index + 1}/{len(cfg.pipeline)}",
        "pipeline": " -> ".join(cfg.pipeline), "project": cfg.project, "worktree": worktree, "branch": branch,
        "task": STAGE_TASKS.get(stage, STAGE_TASKS["implement"]),
        "commit_rule": f"Commit messages: `{prefix}: <what> (#{issue.number})`." if prefix else "",
        "project_context": _context(cfg.project_context),
        "rules": RULES.format(branch=branch, worktree=worktree),
    }
    template = cfg.prompts.get(stage, TEMPLATE)
    if not any(m.group(1) == "rules" for m in PLACEHOLDER.finditer(template)):
        template += "\n\n## Rules\n{{rules}}\n"  # a custom prompt never drops them
    # One pass over the template: a value containing `{{...}}` stays as it is.
    text = PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    if continuation:
        text += "\n## Continue from an earlier try\n" + continuation + "\n"
    return text


def continuation_text(reason: str, commits: str, diff_stat: str, errors: str, nudge: bool) -> str:
    parts = [f"The previous try ended: {reason}."]
    if nudge:
        parts.append("It left changes that were never committed: review them, finish, and COMMIT them.")
    parts.append("Commits so far on this branch:\n" + (commits or "(none)"))
    parts.append("Diff stat against the base branch:\n" + (diff_stat or "(no changes)"))
    if errors:
        parts.append("Last lines of its log:\n" + errors)
    return "\n\n".join(parts)
