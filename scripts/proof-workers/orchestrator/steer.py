"""A steering verb given: its commands queued, then applied by the running monitor or, when none runs, here
under the monitor's lock, by the same decide and executor as a monitor cycle (the queue itself: commands)."""
from __future__ import annotations

import os
import time
from typing import Callable

from lib.errors import OrchestratorError
from lib.statefile import write_json
from lib.views import visible
from orchestrator import heartbeat
from orchestrator.commands import (ACK_WAIT, POLL, Command, Outcome, applying_marker, enqueue, mark_reported, outcome_of,
                                   queue_dir, verb_applying)
from orchestrator.monitor import decide_and_apply, steering
from orchestrator.run import Run
from orchestrator.state import MonitorBusy, monitor_lock


def give(run: Run, commands: list[Command], say: Callable[[str], None], wait: float = ACK_WAIT) -> Outcome:
    """Queue the commands and see them applied: by the running monitor (waiting at most `wait` seconds), or here
    under the monitor's lock when no monitor runs. Returns what was done, or that they are queued."""
    for command in commands:
        try:
            enqueue(run.state_root, command)
        except OSError as err:
            raise OrchestratorError(f"{queue_dir(run.state_root, command.project)}: cannot queue the command "
                                    f"({err.strerror or err})") from None
    deadline = time.monotonic() + wait
    applied_here = False
    while True:
        done = [outcome_of(run.state_root, c) for c in commands]
        if all(o is not None for o in done):
            break
        if applied_here:  # the queue was applied here and still no outcome: never loop on it
            raise OrchestratorError(f"{queue_dir(run.state_root, commands[0].project)}: the command was applied "
                                    "but left no outcome in done/; see the event log")
        try:
            with monitor_lock(run.locks()):
                marker = applying_marker(run)
                write_json(marker, {"pid": os.getpid(), "pid_start": heartbeat.process_start(os.getpid())})
                try:
                    apply_queue(run, say)  # no monitor: the verb applies the queue (its own commands among it)
                finally:
                    marker.unlink(missing_ok=True)
            applied_here = True
            continue
        except MonitorBusy:
            pass
        if time.monotonic() > deadline:
            return Outcome(True, queued_lines(run, commands))
        time.sleep(POLL)
    outcomes = [o for o in done if o is not None]
    for command in commands:  # this verb prints them: a status shows none of its refusals again
        mark_reported(run.state_root, command.project, [command.id])
    # A pause's detail, a path: the user's text is shown with its control characters escaped, each on its line.
    lines = [visible(line) for o in outcomes for line in o.lines]
    errors = [visible(o.error) for o in outcomes if o.error]
    others = sorted({o.by_pid for o in outcomes if o.by_pid not in (None, os.getpid())})
    if others:
        lines.append(f"(applied by the running monitor, pid {', '.join(map(str, others))})")
    elif commands and commands[0].verb == "retry" and not errors:
        lines.append("no monitor runs: start it to try the issue (python3 -m orchestrator monitor --no-delay)")
    return Outcome(not errors, lines, errors[0] if errors else "")


def queued_lines(run: Run, commands: list[Command]) -> list[str]:
    """Where the commands wait, naming who holds the monitor lock: the running monitor, another verb applying
    the queue (two shells), or neither known (a launch, a monitor starting)."""
    status = heartbeat.monitor_status(run.files.monitor)
    last = status.get("last_cycle_at")
    holder = verb_applying(run)
    if holder is not None:
        why = (f"another verb (pid {holder}) is applying commands under the monitor lock; it, or the next "
               "verb or monitor to hold the lock, applies this one")
    elif status.get("running"):
        when = f"its last cycle ended at {last}; " if last else ""
        why = (f"the monitor (pid {status.get('pid')}) is busy in a cycle; {when}it applies the command when that "
               "cycle ends, at the start of the next one")
    else:
        why = ("the monitor lock is held (a launch, or a monitor starting) and no monitor runs yet; the next verb or "
               "monitor to hold the lock applies it")
    return [f"queued {c.verb} {c.project}" + (f"#{c.issue}" if c.issue is not None else "") +
            f" (command {c.id}): {why}" for c in commands]


def apply_queue(run: Run, say: Callable[[str], None]) -> None:
    """Apply every queued command here (the caller holds the monitor lock and no monitor runs): the monitor's own
    cycle pieces (steering, decide_and_apply) with no probe, only the commands' actions, journalled as a `steer`
    cycle."""
    run.reload()  # as the last holder left it (the verb read the config before it queued)
    steered = steering(run, run.clock())
    if steered.given:  # pause and resume only: applied already
        decide_and_apply(run, run.files.load_workers(run.num_workers), [], (), steered, "steer", say,
                         commands_only=True)
