"""The runner's watchdog: a small process per run that kills our steps if we die first (lib.runner.start_watchdog).

Started as `python -I -S -B lib/watchdog.py --watch-steps-of TAG` with a pipe only
the run holds as its stdin; it imports nothing but lib.procs, so it costs a few
milliseconds, not the runner's imports, once per run.
"""
from __future__ import annotations

import os
import sys
from time import sleep

if __name__ == "__main__":  # run isolated (-I): no path to the package but this file's
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.procs import GRACE_S, STEP_VAR, group_alive, kill_processes, processes_tagged  # noqa: E402

WATCHDOG_ARG = "--watch-steps-of"
WATCHDOG_ROUNDS = 50  # bounded: a process stuck in the kernel (state D) must not keep the watchdog forever
# Between reads: the announcements of a busy run are taken in batches, not one wakeup (and one process switch on
# the run's cores) per git started and ended. Each read takes all a pipe holds (64 KiB, 8 bytes a line): the
# run's writes (non-blocking) would have to pass 1 MiB/s to find the pipe full and lose a line.
BATCH_S = 0.05
READ_BYTES = 1 << 16


def watch_steps_of(tag: str, source: int = 0, grace: float = GRACE_S) -> None:
    """The watchdog's life: note the groups announced on `source` until it ends, then kill what is left of them.

    "+PGID" starts a step's group, "-PGID" ends it. After end of file (the
    parent is gone, or has finished and left nothing), every announced group
    and every process whose ORCHESTRATOR_STEP starts with `tag` gets SIGTERM,
    SIGKILL after `grace`; what they start meanwhile is killed in later rounds.
    """
    groups: set[int] = set()
    pending = b""
    while True:
        try:
            chunk = os.read(source, READ_BYTES)
        except InterruptedError:
            continue
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line[:1] in (b"+", b"-") and line[1:].isdigit():
                (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
        sleep(BATCH_S)
    quiet_rounds = 0
    for _ in range(WATCHDOG_ROUNDS):
        tagged = processes_tagged(STEP_VAR, tag, prefix=True)
        live = [pgid for pgid in groups if group_alive(pgid)]
        if tagged or live:
            quiet_rounds = 0
            kill_processes(live, tagged, grace)
            grace = 0.5  # newcomers (started on the SIGTERM) go sooner
        else:
            quiet_rounds += 1
            if quiet_rounds == 2:  # nothing twice, 0.1 s apart: a command between fork and exec is caught too
                return
            sleep(0.1)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == WATCHDOG_ARG:
    watch_steps_of(sys.argv[2])
