"""lib/'s and the proof workers' modules: none in an import cycle (each imports first in a fresh interpreter, and
no import inside a function closes a cycle), each lib module in CLAUDE.md's map."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

WORKERS = ROOT / "scripts" / "proof-workers"


def dotted(path: Path, base: Path) -> str:
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lib_modules() -> list[str]:
    """Every module of lib/ and its packages, as a dotted name (a package by its own name)."""
    return [dotted(path, ROOT) for path in sorted((ROOT / "lib").rglob("*.py"))]


def workers_modules() -> list[str]:
    """Every module of the proof workers' package (`orchestrator.act`), `__main__` aside (it runs the CLI)."""
    return [dotted(path, WORKERS) for path in sorted((WORKERS / "orchestrator").rglob("*.py"))
            if path.name != "__main__.py"]


def module_files() -> dict[str, Path]:
    files = {dotted(path, ROOT): path for path in (ROOT / "lib").rglob("*.py")}
    files.update({dotted(path, WORKERS): path for path in (WORKERS / "orchestrator").rglob("*.py")})
    return files


def test_the_module_list_sees_the_packages():
    names = lib_modules()
    assert {"lib", "lib.gitstatus", "lib.remote", "lib.remote.connection", "lib.remote.sync"} <= set(names)
    assert not [n for n in names if n.startswith(("lib.hosts", "lib.fleet", "lib.remote_", "lib.known_hosts"))]
    assert {"orchestrator", "orchestrator.act", "orchestrator.monitor", "orchestrator.cli"} <= set(workers_modules())


@pytest.mark.parametrize("module", lib_modules() + workers_modules())
def test_each_module_imports_first_in_a_fresh_interpreter(module):
    """A cycle shows only when one of its modules is imported first: each one is, in its own interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(WORKERS)])}
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function, line) for each project import of a module; `if TYPE_CHECKING:`
    blocks aside (never run). `from pkg import mod` names the module when `pkg.mod` is one."""
    found: list[tuple[str, bool, int]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        out = []
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.append(name)
        return out

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for inner in child.orelse:
                    visit(inner, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend((target, in_function, child.lineno) for target in targets(child))
            elif dynamic := _dynamic_import(child):  # importlib.import_module("x") / __import__("x") hide one too
                as_import = ast.Import([ast.alias(dynamic)])
                found.extend((target, in_function, child.lineno) for target in targets(as_import))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def _dynamic_import(node: ast.AST) -> str | None:
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)):
        return None
    name = ast.unparse(node.func)
    return node.args[0].value if name in ("importlib.import_module", "import_module", "__import__") else None


def function_level_cycles() -> list[str]:
    files = module_files()
    known = set(files)
    edges: dict[str, set[str]] = {name: set() for name in files}
    lazy: list[tuple[str, str, int]] = []
    for name, path in files.items():
        for target, in_function, line in _imports(name, path, known):
            if target == name:
                continue
            edges[name].add(target)
            if in_function:
                lazy.append((name, target, line))

    def path_between(start: str, goal: str) -> list[str] | None:
        seen, stack = {start}, [[start]]
        while stack:
            trail = stack.pop()
            if trail[-1] == goal:
                return trail
            for nxt in sorted(edges[trail[-1]] - seen):
                seen.add(nxt)
                stack.append(trail + [nxt])
        return None

    cycles = []
    for source, target, line in sorted(set(lazy)):
        if (back := path_between(target, source)) is not None:
            cycles.append(f"{files[source].relative_to(ROOT)}:{line}: {source} -> {' -> '.join(back)}")
    return cycles


def test_no_import_inside_a_function_closes_a_cycle():
    """An import moved into a function only hides a cycle (the first import of either module can still fail or
    see half a module): a function may import lazily for speed, never to get round a cycle."""
    assert function_level_cycles() == []


def test_the_cycle_finder_sees_a_lazy_cycle(tmp_path, monkeypatch):
    """The finder is not blind: a lazy import back into a module that imports it at the top is a cycle."""
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "one.py").write_text("from lib import two\n")
    (pkg / "two.py").write_text("def f():\n    from lib.one import x\n")
    (pkg / "three.py").write_text("from lib import four\n")
    (pkg / "four.py").write_text("import importlib\n\ndef f():\n    return importlib.import_module('lib.three')\n")
    files = {dotted(p, tmp_path): p for p in pkg.rglob("*.py")}
    imports = _imports("lib.two", files["lib.two"], set(files))
    assert ("lib.one", True, 2) in imports
    monkeypatch.setattr(sys.modules[__name__], "module_files", lambda: files)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert function_level_cycles() == ["lib/four.py:4: lib.four -> lib.three -> lib.four",
                                       "lib/two.py:2: lib.two -> lib.one -> lib.two"]


def test_claude_md_maps_every_lib_module_and_no_other():
    """One line per module in CLAUDE.md's map, named as the code names it (`sync`, `remote.sync`)."""
    text = (ROOT / "CLAUDE.md").read_text()
    start = text.index("- One job per module in `lib/`")
    map_lines = text[start:text.index("\n- ", start + 1)].splitlines()[1:]
    mapped = [m.group(1) for line in map_lines if (m := re.match(r"\s+- `([\w.]+)`:", line))]
    modules = [n.removeprefix("lib.") for n in lib_modules() if n not in ("lib", "lib.remote")]
    assert sorted(mapped) == sorted(modules)
    assert len(mapped) == len(set(mapped))
