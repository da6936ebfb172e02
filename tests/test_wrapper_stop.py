"""A try's wrapper stopped (SIGTERM) at any moment around its agent's start: the agent never runs on without it.

The wrapper runs as its own process (as in a worker's pane: in this one it would take the test process for the
try's). The moment is made exact, never left to timing: a small shim runs the real wrapper and sends it the SIGTERM
from inside the step named, through the wrapper module's own helpers.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from workers_fixtures import retry_until

from lib import procs

WRAPPER = ROOT / "scripts" / "proof-workers" / "orchestrator" / "wrapper.py"
TRY_VAR = "ORCHESTRATOR_TRY"

# Runs the real wrapper; the SIGTERM comes from within the step `where` names: `pid_file` (the agent started,
# its pid file being written: the gap the stop handler used to leave open), `popen` (while the agent is being
# started).
SHIM = r'''
import os, signal, subprocess, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import orchestrator.wrapper as wrapper

where, spec = sys.argv[2], sys.argv[3]
real_write, real_popen = wrapper.write_text, subprocess.Popen

def write_text(path, text):
    if where == "pid_file" and Path(path).name == "pid":
        os.kill(os.getpid(), signal.SIGTERM)
    return real_write(path, text)

class Popen(real_popen):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if where == "popen":
            os.kill(os.getpid(), signal.SIGTERM)

wrapper.write_text = write_text
subprocess.Popen = Popen
raise SystemExit(wrapper.main([spec]))
'''


@pytest.mark.parametrize("where", ["pid_file", "popen"])
def test_a_sigterm_while_the_agent_starts_stops_the_agent_and_the_wrapper_says_so(tmp_path, where):
    """Before: the wrapper installed its stop handler only after writing the pid file, so a SIGTERM in that gap
    killed the wrapper outright (no exit code) and the agent ran on, unsupervised. Now the handler is there before
    the agent starts: the agent's group is killed, the exit code is 143, and nothing of the try runs on."""
    tag = f"{tmp_path}/worker-1/1"
    spec = {"worker": 1, "try": 1, "issue": 1, "stage": "implement", "cwd": str(tmp_path),
            "command": f"echo started >> {tmp_path / 'agent-ran'}; exec sleep 3600",
            "log": str(tmp_path / "logs" / "worker-1.log"), "signal": str(tmp_path / "exit"),
            "pid_file": str(tmp_path / "pid"), "agent": "command", "env": {TRY_VAR: tag},
            "try_log": str(tmp_path / "logs" / "try-1.log")}
    spec_path = tmp_path / "try.json"
    spec_path.write_text(json.dumps(spec))
    shim = tmp_path / "shim.py"
    shim.write_text(SHIM)
    try:
        result = subprocess.run([sys.executable, str(shim), str(ROOT / "scripts" / "proof-workers"), where,
                                 str(spec_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                timeout=120)
        assert result.returncode == 143, result.stderr
        assert (tmp_path / "exit").read_text() == "143\n"
        # Stopped while being started, the agent never counts as started; once its pid file is being written, the
        # stop waits for it (then the monitor finds the group by it).
        assert (tmp_path / "pid").exists() == (where == "pid_file")
        assert procs.processes_tagged(TRY_VAR, tag) == []
    finally:
        left = procs.processes_tagged(TRY_VAR, tag)
        if left:  # the old wrapper's agent, run on: ours to end
            procs.kill_processes([], left, 1.0)
            retry_until(lambda: not procs.processes_tagged(TRY_VAR, tag), seconds=60)
