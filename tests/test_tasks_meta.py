"""tasks.py loads beside the tasks/ folder, and every task documents itself and its arguments."""
from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_invoke_loads_tasks_py_although_a_tasks_folder_sits_beside_it():
    assert (ROOT / "tasks").is_dir() and not (ROOT / "tasks" / "__init__.py").exists()
    inv = Path(sys.executable).parent / "inv"
    result = subprocess.run([str(inv), "--list"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "status" in result.stdout and "scan" in result.stdout


def all_tasks(collection, prefix=""):
    for name, t in collection.tasks.items():
        yield prefix + name, t
    for name, sub in collection.collections.items():
        yield from all_tasks(sub, f"{prefix}{name}.")


def test_every_task_has_a_docstring_and_help_for_each_argument():
    from invoke import Collection

    import tasks

    found = list(all_tasks(Collection.from_module(tasks)))
    assert found
    for name, t in found:
        assert (t.__doc__ or "").strip(), f"{name} has no docstring"
        params = [p for p in inspect.signature(t.body).parameters if p != "c"]
        missing = [p for p in params if p not in t.help]
        assert not missing, f"{name}: no help for {missing}"


def test_start_up_imports_no_heavy_library():
    code = "import sys; sys.path.insert(0, %r); import tasks; " \
           "print(sorted(m for m in ('tabulate', 'git', 'fabric', 'libtmux', 'paramiko') if m in sys.modules))" % str(ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_bad_numbers_are_one_line_usage_errors(inv, home):
    for args in (["status", "--jobs", "abc"], ["test-all", "--timeout", "soon"], ["sync-all", "--net-jobs", "-1"],
                 ["build", "x", "--timeout", "inf"], ["test", "x", "--timeout", "nan"]):
        result = inv(*args)
        assert result.code == 2, args
        assert result.err.startswith("error: expected") and len(result.err.strip().splitlines()) == 1, result.err
