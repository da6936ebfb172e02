"""A module over 500 lines says in its docstring why it is still one job (issue 22's house rule)."""
from __future__ import annotations

import ast

from tests.conftest import ROOT

LIMIT = 500


def our_modules() -> list:
    found = [ROOT / "tasks.py", *ROOT.joinpath("lib").rglob("*.py"), *ROOT.joinpath("scripts").rglob("*.py")]
    return sorted(path for path in found if ".venv" not in path.parts and "node_modules" not in path.parts)


def test_the_module_list_sees_tasks_lib_scripts_and_the_workers():
    names = {path.relative_to(ROOT).as_posix() for path in our_modules()}
    assert {"tasks.py", "lib/sync.py", "lib/remote/sync.py", "scripts/sync_all_repos.py",
            "scripts/proof-workers/orchestrator/cli.py"} <= names


def test_every_module_over_500_lines_says_why_it_is_one_job():
    unexplained = []
    for path in our_modules():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > LIMIT and "Over 500 lines" not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not unexplained, ("add an 'Over 500 lines, one job: ...' paragraph to the docstring of "
                             + ", ".join(unexplained))
