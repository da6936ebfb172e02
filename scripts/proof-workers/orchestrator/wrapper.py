"""Runs one try of an agent: START/EXIT markers to the worker log, the exit code to this try's signal file.

Started in a worker's pane as `python3 wrapper.py TRY.json` (paths only: no
prompt, title or command text is ever typed into a pane). Standard library
only (and lib.runner, itself standard library). The agent gets its own process
group, recorded in the try's pid file, so the monitor can kill all of it; a
SIGTERM/SIGHUP to the wrapper takes the group down too, and the exit code
(128 + that signal) still lands in the signal file. However the try ends,
nothing it started outlives it: its group and every process carrying its
ORCHESTRATOR_TRY tag (daemons, `setsid cmd &`) are killed before the exit code
is written.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout root, for lib/

from lib import runner  # noqa: E402

# Every process of a try carries TRY_VAR=<project>/<worker>/<try> (set in its spec's env).
TRY_VAR = "ORCHESTRATOR_TRY"
LEFTOVER_GRACE_S = 2.0
REPO_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(spec: dict[str, Any]) -> int:
    log_path, signal_path = Path(spec["log"]), Path(spec["signal"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    signal_path.parent.mkdir(parents=True, exist_ok=True)
    label = f"worker-{spec['worker']} try {spec['try']} issue #{spec['issue']} stage {spec['stage']}"
    env = {k: v for k, v in os.environ.items() if k not in REPO_ENV}
    env.update(spec.get("env", {}))
    with open(log_path, "ab") as log:
        log.write(f"=== START {label} at {_stamp()} ===\n".encode())
        log.flush()
        try:
            agent = subprocess.Popen(["/bin/sh", "-c", spec["command"]], cwd=spec["cwd"], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        except OSError as err:
            log.write(f"wrapper: cannot start the agent: {err}\n".encode())
            code = 127
        else:
            _write_atomic(Path(spec["pid_file"]), str(agent.pid))

            stopped_by: list[int] = []

            def stop(signum: int, _frame: Any) -> None:
                stopped_by.append(signum)
                try:
                    os.killpg(agent.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

            for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(signum, stop)
            pump = threading.Thread(target=_tee, args=(agent.stdout, log), daemon=True)
            pump.start()
            code = agent.wait()
            leftovers = kill_leftovers(agent.pid, env.get(TRY_VAR))
            if leftovers:
                log.write(f"wrapper: killed {len(leftovers)} process(es) the agent left behind: "
                          f"{', '.join(map(str, leftovers[:10]))}\n".encode())
            pump.join(timeout=5)
            # Stopped by a signal: say which (129 is a hang-up: tmux or the terminal went away).
            code = 128 + stopped_by[0] if stopped_by else code if code >= 0 else 128 - code
        log.write(f"=== EXIT code {code} {label} at {_stamp()} ===\n".encode())
    _write_atomic(signal_path, f"{code}\n")
    return code


def kill_leftovers(pgid: int, tag: str | None) -> list[int]:
    """Kill what is left of the agent's group and every process with this try's tag; returns the tagged ones
    found outside the group. A group leader that has exited no longer counts its group, hence the tag."""
    outside = runner.escaped_processes(tag, pgid, var=TRY_VAR) if tag else []
    if runner.group_alive(pgid) or outside:
        runner.kill_processes([pgid], outside, LEFTOVER_GRACE_S)
    return outside


def _tee(source: Any, log: Any) -> None:
    screen = getattr(sys.stdout, "buffer", None)
    for chunk in iter(lambda: source.read1(65536), b""):
        log.write(chunk)
        log.flush()
        if screen is not None:
            try:
                screen.write(chunk)
                screen.flush()
            except OSError:
                screen = None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: wrapper.py TRY.json", file=sys.stderr)
        return 2
    return run(json.loads(Path(args[0]).read_text(encoding="utf-8")))


if __name__ == "__main__":
    raise SystemExit(main())
