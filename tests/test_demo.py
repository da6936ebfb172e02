"""`make demo` end to end: real repos generated, then the main commands on them."""
from __future__ import annotations

import json
import sys
import subprocess

from tests.conftest import ROOT


def test_make_demo_prints_the_status_of_every_demo_repo(tmp_path):
    demo = tmp_path / "demo"
    result = subprocess.run(["make", "--no-print-directory", "demo", f"DEMO_DIR={demo}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    rows = {line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in
            {"staking", "explorer", "reports", "deploy-tools", "wallet", "ledger", "genesis"}}
    assert len(rows) == 7, out
    assert "1 modified" in rows["reports"]
    assert "+0/-1" in rows["deploy-tools"]
    assert "+2/-0" in rows["wallet"]
    assert "feature/new-report" in rows["ledger"] and "1 staged" in rows["ledger"]
    state = json.loads((demo / "state" / "repo-status.json").read_text())
    assert {r["name"] for r in state["repos"]} == set(rows)
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
