"""lib/'s modules: none in an import cycle (each imports first in a fresh interpreter), each in CLAUDE.md's map."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def lib_modules() -> list[str]:
    """Every module of lib/ and its packages, as a dotted name (a package by its own name)."""
    names = []
    for path in sorted((ROOT / "lib").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_the_module_list_sees_the_packages():
    names = lib_modules()
    assert {"lib", "lib.gitstatus", "lib.remote", "lib.remote.connection", "lib.remote.sync"} <= set(names)
    assert not [n for n in names if n.startswith(("lib.hosts", "lib.fleet", "lib.remote_", "lib.known_hosts"))]


@pytest.mark.parametrize("module", lib_modules())
def test_each_lib_module_imports_first_in_a_fresh_interpreter(module):
    """A cycle shows only when one of its modules is imported first: each one is, in its own interpreter."""
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_claude_md_maps_every_lib_module_and_no_other():
    """One line per module in CLAUDE.md's map, named as the code names it (`sync`, `remote.sync`)."""
    text = (ROOT / "CLAUDE.md").read_text()
    start = text.index("- One job per module in `lib/`")
    map_lines = text[start:text.index("\n- ", start + 1)].splitlines()[1:]
    mapped = [m.group(1) for line in map_lines if (m := re.match(r"\s+- `([\w.]+)`:", line))]
    modules = [n.removeprefix("lib.") for n in lib_modules() if n not in ("lib", "lib.remote")]
    assert sorted(mapped) == sorted(modules)
    assert len(mapped) == len(set(mapped))
