"""test-all on repos like real projects: their own environments and commands, the suite's own counts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, require_tool

ENV_PROBE = {"Makefile": "test:\n\t@echo PATH=$$PATH; echo VIRTUAL_ENV=$${VIRTUAL_ENV-unset}; "
                         "echo PYTHONPATH=$${PYTHONPATH-unset}; echo PYTHONHOME=$${PYTHONHOME-unset}\n"}


def log_dir() -> Path:
    return Path(os.environ["ORCHESTRATOR_LOG_DIR"])


def probe_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines()
                if line.split("=", 1)[0] in ("PATH", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"))


def test_our_venv_and_python_variables_never_reach_a_repos_commands(home, make_repo, inv, monkeypatch, tmp_path):
    # As under `make test-all`: the Makefile puts this checkout's .venv/bin first, an activated venv sets the rest.
    venv_bin = str(ROOT / ".venv" / "bin")
    running_bin = os.path.join(sys.prefix, "bin")
    elsewhere = tmp_path / "tools-bin"
    elsewhere.mkdir()
    monkeypatch.setenv("PATH", os.pathsep.join([venv_bin, running_bin, str(elsewhere), os.environ["PATH"]]))
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("PYTHONHOME", sys.base_prefix)
    repo = make_repo("probe", ENV_PROBE)
    home.write_repos([{"name": "probe", "local": str(repo.path), "language": "make"}])
    ours = {os.path.realpath(venv_bin), os.path.realpath(running_bin)}
    for args, log in ((("test", "probe"), "orchestrator-test-probe.log"),
                      (("test-all",), "orchestrator-test-probe.log"),
                      (("workflow", "test", "probe"), "orchestrator-test-probe.log"),
                      (("foreach", "make -s test"), "orchestrator-foreach-probe.log")):
        result = inv(*args)
        assert result.code == 0, (args, result.out, result.err)
        seen = probe_lines((log_dir() / log).read_text())
        entries = seen["PATH"].split(os.pathsep)
        assert not ours & {os.path.realpath(e) for e in entries if e}, (args, seen["PATH"])
        assert str(elsewhere) in entries, args  # every other entry stays
        assert (seen["VIRTUAL_ENV"], seen["PYTHONPATH"], seen["PYTHONHOME"]) == ("unset",) * 3, (args, seen)
