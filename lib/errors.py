"""The user-error exceptions, and what front doors print and exit with for them and for a stopped run."""
from __future__ import annotations

import functools
import os
import signal
import sys
from contextlib import suppress
from typing import Callable, NoReturn, Sequence

from lib.signals import Stopped, exit_code


class OrchestratorError(Exception):
    """A user-facing error: bad usage, bad config, an unknown name. Exit code 2."""

    exit_code = 2


class ConfigError(OrchestratorError):
    """A config file is missing, unreadable or invalid; one line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class UnknownRepoError(OrchestratorError):
    """A repo name that config/repos.json does not define."""


class UnknownWorkflowError(OrchestratorError):
    """A workflow name that no workflows.json defines."""


class LogWriteFailed(OSError):
    """A run's log refused a write (a full disk), here or while a command ran on a build host (the command is
    then stopped): the repo's error, never a host's or the command's fault. Here, a leaf, so that the recorder
    (lib.batch) and the host's command (lib.remote.connection) raise the one type without importing each other."""


def exit_for(err: BaseException) -> tuple[str, int] | None:
    """What a front door prints on stderr for one of our exceptions, and the code it exits with; None for any
    other (a bug: its traceback shows). The one place that says it: lib.cli's tasks and `script_main` use it.

    A user error is its `error:` lines, exit 2; a run stopped by a signal (runner.RunInterrupted,
    scan.ScanStopped) is what it recorded (its notes), then its message, exit 128 + the signal; a Ctrl-C outside
    a run's own handling of the stop signals (loading the config, importing fabric) is one line and 130.
    """
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (SIGINT)", exit_code(signal.SIGINT)
    if isinstance(err, OrchestratorError):
        return error_lines(err), err.exit_code
    if isinstance(err, Stopped):  # runner.RunInterrupted, scan.ScanStopped
        return "\n".join([*err.notes, str(err)]), err.exit_code
    return None


def script_main(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A script's `main` whose errors are printed and exited with as `exit_for` says (the tasks get the same from
    lib.cli); here, not in lib.cli, because scripts/scan_all_repos.py runs without Invoke."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except (Exception, KeyboardInterrupt) as err:
            failure = exit_for(err)
            if failure is None:
                raise
            _say(failure[0])  # a stderr that fails must not turn exit 2 or 130 into 1
            return failure[1]

    return run


def print_report(out: Sequence[str], err: Sequence[str], code: int, err_first: Sequence[str] = ()) -> int:
    """A script's last words and its exit code: `err_first` lines on stderr, then `out` on stdout (the table,
    the summary), then `err` (warnings), whatever became of stdout. The code is `code`, and at least 1 when
    stdout could not take the lines: a reader that left (`| head`), or a full disk, said in one line. Stderr is
    written as far as it goes: a warning it cannot take changes nothing else."""
    for line in err_first:
        _say(line)
    try:
        for line in out:
            print(line)
        if sys.stdout is not None:  # None: started with stdout closed (`>&-`): print wrote nothing
            sys.stdout.flush()
    except BrokenPipeError:
        code = max(code, 1)
    except OSError as problem:
        _say(f"error: cannot print the summary: {problem.strerror or problem}")
        code = max(code, 1)
    for line in err:
        _say(line)
    return code


def _say(line: str) -> None:
    with suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


def leave(main: Callable[[], int]) -> NoReturn:
    """A script's `__main__`: `main()` (which prints through `print_report`), what it printed flushed, then the
    process ends with its code by os._exit.

    That skips the interpreter's teardown, which frees every object one by one: 15-20 ms after a sync or a scan
    of a few hundred repos, serial time at the end of every run. Only for scripts whose state files are closed
    and fsynced and whose threads that matter are joined when `main` returns; an exit handler (paramiko's,
    after `--host`) has nothing left to do then: its connections are closed. A bug's exception leaves the
    usual way, traceback included. Argparse's exits (`--help`, a usage error) keep their codes; a reader that
    left (`| head`) before the last flush makes the code at least 1.
    """
    try:
        code = main()
    except SystemExit as done:  # argparse: it printed its help or its error already
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:  # a message: Python would print it and exit 1
            _say(str(done.code))
            code = 1
    except BrokenPipeError:  # the reader left while main printed on its own (argparse's usage, say)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = max(code, 1)
    os._exit(code)


def error_lines(err: Exception) -> str:
    """The message as front doors print it: one `error: ...` line per problem."""
    return "\n".join(f"error: {line}" for line in str(err).splitlines() or ["unknown error"])


def clip(text: str, limit: int = 120) -> str:
    """A value as error lines show it: at most `limit` characters, with a visible mark where it was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters cut]"
