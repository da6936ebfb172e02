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
           "print(sorted(m for m in ('tabulate', 'git', 'fabric', 'libtmux', 'paramiko', 'rich') if m in sys.modules))" % str(ROOT)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_bad_numbers_are_one_line_usage_errors(inv, home):
    for args in (["status", "--jobs", "abc"], ["test-all", "--timeout", "soon"], ["sync-all", "--net-jobs", "-1"],
                 ["build", "x", "--timeout", "inf"], ["test", "x", "--timeout", "nan"]):
        result = inv(*args)
        assert result.code == 2, args
        assert result.err.startswith("error: expected") and len(result.err.strip().splitlines()) == 1, result.err


def task_contexts():
    """(task name, its ParserContext) for every task, as `inv` builds them."""
    from invoke import Collection

    import tasks

    return [(ctx.name, ctx) for ctx in Collection.from_module(tasks).to_contexts()]


def value_flags(ctx):
    """Arguments that take a value (not toggles), with their long flag."""
    return [(f"--{arg.names[0]}", arg) for arg in ctx.args.values() if arg.takes_value]


def test_one_short_flag_one_meaning_across_every_task():
    """`-j` was --json in status and --jobs elsewhere: a letter must mean one long flag in every task."""
    meaning: dict[str, set[str]] = {}
    for _, ctx in task_contexts():
        for arg in ctx.args.values():
            for short in (n for n in arg.names if len(n) == 1):
                meaning.setdefault(short, set()).add(arg.names[0])
    clashes = {short: sorted(longs) for short, longs in meaning.items() if len(longs) > 1}
    assert not clashes, f"short flags with more than one meaning: {clashes}"
    assert meaning["j"] == {"jobs"}


def test_help_shows_a_placeholder_and_the_default_for_every_value():
    for name, ctx in task_contexts():
        for flag, arg in value_flags(ctx):
            spec, text = ctx.help_for(flag)
            if arg.kind is list:  # Invoke shows no placeholder for a repeatable flag: the help starts with one
                assert text.split(":")[0].isupper(), f"{name} {flag}: help should start with a PLACEHOLDER:"
                continue
            assert "=" in spec, f"{name} {flag}: no value placeholder in help ({spec})"
            if not arg.positional:
                assert "default" in text, f"{name} {flag}: help does not say the default ({text})"


def test_a_flag_missing_its_value_is_named_as_typed(inv, home):
    """`inv test-all --jobs` printed Invoke's `<Argument: jobs (j) [Count]>`; every value flag of every task."""
    for name, ctx in task_contexts():
        for flag, arg in value_flags(ctx):
            if arg.positional:
                continue
            result = inv(name, flag)
            assert result.code != 0, (name, flag)
            assert "<Argument" not in result.err and flag in result.err, (name, flag, result.err)


def test_status_short_jobs_works(inv, home, make_repo):
    home.add(make_repo("alpha"))
    result = inv("status", "-j", "2")
    assert result.code == 0 and "scanned 1 repos" in result.out
