"""`make foreach CMD=...` with a command of several lines (a small script typed at the prompt)."""
from __future__ import annotations

import os
import subprocess

from tests.conftest import ROOT


def test_make_foreach_runs_a_command_of_several_lines_as_typed(home, make_repo, tmp_path):
    """Before: make ran the recipe line by line and the shell saw an unterminated quote."""
    home.add(make_repo("alpha"), make_repo("beta"))
    env = {**os.environ, "ORCHESTRATOR_HOME": str(home.path)}
    script = 'name="$ORCH_REPO_NAME"\nif [ -n "$name" ]; then\n  echo "line two: it\'s $name $(echo ok)"\nfi'
    result = subprocess.run(["make", "-s", "-C", str(ROOT), "foreach", f"CMD={script}"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "line two: it's alpha ok" in result.stdout and "line two: it's beta ok" in result.stdout
