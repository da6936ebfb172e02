"""`make demo` end to end: real repos generated, then the main commands on them."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.conftest import ROOT

DEMO_REPOS = {"staking", "explorer", "reports", "deploy-tools", "wallet", "ledger", "genesis"}


def sections_of(out: str) -> dict[str, str]:
    """Split make's output at the `$ ORCHESTRATOR_HOME=... inv CMD` headers the demo prints."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("$ ORCHESTRATOR_HOME="):
            current = "inv " + line.split(" inv ", 1)[1].split("  #")[0].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def table_rows(text: str) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in DEMO_REPOS}


def test_make_demo_prints_the_status_of_every_demo_repo(tmp_path):
    demo = tmp_path / "demo"
    result = subprocess.run(["make", "--no-print-directory", "demo", f"DEMO_DIR={demo}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    sections = sections_of(result.stdout)
    rows = table_rows(sections["inv status"])
    assert set(rows) == DEMO_REPOS, result.stdout
    assert "1 modified" in rows["reports"]
    assert "+0/-1" in rows["deploy-tools"]
    assert "+2/-0" in rows["wallet"]
    assert "feature/new-report" in rows["ledger"] and "1 staged" in rows["ledger"]
    tested = table_rows(sections["inv test-all"])
    assert "PASSED" in tested["explorer"] and "PASSED" in tested["reports"]
    assert "FAILED" in tested["deploy-tools"]
    assert "genesis" not in tested, "a repo without a language is left out of test-all"
    if shutil.which("go") is None:
        assert "SKIPPED" in tested["staking"] and "go not found on PATH" in tested["staking"]
    synced = table_rows(sections["inv sync-all --dry-run"])
    assert "would update" in synced["deploy-tools"]
    state = json.loads((demo / "state" / "repo-status.json").read_text())
    assert {r["name"] for r in state["repos"]} == DEMO_REPOS
    languages = {r["name"]: r["language"] for r in state["repos"]}
    assert languages["ledger"] == "python" and languages["genesis"] == "unknown"
    assert all((demo / "remotes" / f"{name}.git").is_dir() for name in rows)


def test_demo_generator_refuses_a_directory_it_did_not_make(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_workspace.py"),
                             str(target)], capture_output=True, text=True)
    assert result.returncode == 2 and "was not made by this generator" in result.stderr
    assert (target / "notes.txt").read_text() == "keep me"
