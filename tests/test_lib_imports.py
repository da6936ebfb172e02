"""lib/ has no circular imports: every module imports on its own, first, in a fresh interpreter."""
from __future__ import annotations

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
