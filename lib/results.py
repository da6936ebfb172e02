"""A run's results file (state/test-all-results.json, sync-results.json, ...) and the counts its summary and
closing lines give: what the runs (lib.batch) and sync share, without the runs' imports."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from lib.runstatus import RunStatus
from lib.statefile import set_aside_if_bad, update_json

STATUSES = tuple(RunStatus)  # the summary's order


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def count_statuses(statuses: Iterable[str]) -> dict[str, int]:
    """How many of each status, in order of first appearance."""
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items()) or "nothing to do"


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The state files' summary: a total and a count for every status, zeros included."""
    return {"total": len(results), **dict.fromkeys(STATUSES, 0), **count_statuses(r["status"] for r in results)}


def results_problem(document: Any) -> str | None:
    """What makes a results file unusable (wrong shape), or None: `{"results": [{"repo": ...}, ...]}`."""
    if not isinstance(document, dict):
        return f"not a results document (top level is {type(document).__name__}, not an object)"
    results = document.get("results", [])
    if not isinstance(results, list):
        return "not a results document (\"results\" is not a list)"
    for index, result in enumerate(results):
        if not isinstance(result, dict) or not isinstance(result.get("repo"), str) \
                or not isinstance(result.get("status", ""), str):
            return f"not a results document (results[{index}] has no repo name or status)"
    return None


def set_aside_bad_results(state_file: Path) -> list[str]:
    """Move a results file that cannot be read (not JSON, nested too deep, a FIFO, ...) or has the wrong shape
    aside, so that the run's outcomes are recorded in a fresh one; a `warning:` line when it did."""
    try:
        note = set_aside_if_bad(state_file, results_problem)
    except OSError:
        return []  # unwritable state is reported when the results are recorded
    return [f"warning: {note}"] if note else []


def record(state_file: Path, outcomes: Sequence[Any], known_repos: set[str],
           summary: Callable[[Sequence[dict[str, Any]]], dict[str, int]] = summarize) -> dict[str, Any]:
    """Merge outcomes (anything with `repo` and `to_json()`) into a results file by repo (a rerun replaces its repo's entry)."""

    def merge(document: Any) -> dict[str, Any]:
        previous = document.get("results", []) if isinstance(document, dict) else []
        by_repo = {r["repo"]: r for r in previous if isinstance(r, dict) and r.get("repo") in known_repos}
        by_repo.update({o.repo: o.to_json() for o in outcomes})
        results = sorted(by_repo.values(), key=lambda r: r["repo"])
        return {"generated_at": now_iso(), "summary": summary(results), "results": results}

    return update_json(state_file, merge, default={}, problem=results_problem)
