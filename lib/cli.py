"""Invoke plumbing for tasks.py: our errors become exit codes in one place, one short flag per meaning in every
task, placeholders and defaults in help.

A task body just raises OrchestratorError (or lets a stopped run's exception
through): OrchestratorTask turns it into Invoke's Exit as `lib.errors.exit_for` says.

Invoke gives each task's arguments short flags from their first free letter, so
`-j` meant `--json` in one task and `--jobs` in another. Here a short flag
exists only where SHORT_FLAGS names it, and then means the same everywhere.
"""
from __future__ import annotations

from typing import Any, Callable

from invoke import Exit, Task
from invoke import task as invoke_task
from invoke.parser import Argument

from lib.errors import exit_for

# Long name -> its short flag, the same in every task; anything else is long-only.
SHORT_FLAGS = {"jobs": "j", "tag": "t", "only": "o", "dirty": "d", "dry_run": "n"}


class Flag(Argument):
    """An Argument that names itself as the user typed it (Invoke's errors print repr())
    and casts with our value kinds (Count, Seconds) while help shows a plain INT placeholder."""

    convert: Callable[[Any], Any] | None = None

    def __repr__(self) -> str:
        return f"'--{self.names[0]}'"

    def set_value(self, value: Any, cast: bool = True) -> None:
        if cast and self.convert is not None:
            self.raw_value = value
            self._value = self.convert(value)
            return
        super().set_value(value, cast)


class OrchestratorTask(Task):
    """A Task whose errors become their lines and exit code, whose short flags come from SHORT_FLAGS and whose
    help states each default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["auto_shortflags"] = False
        super().__init__(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as err:  # a Ctrl-C outside a run: 130, never Invoke's silent 1
            failure = exit_for(err)
            if failure is None:
                raise
            raise Exit(failure[0], code=failure[1]) from None

    def arg_opts(self, name: str, default: Any, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        short = SHORT_FLAGS.get(name)
        if short and short not in taken_names:
            opts["names"].append(short)
        kind = opts.get("kind", str)
        if not opts["positional"] and kind not in (bool, list) and "help" in opts:
            if "default" not in opts["help"]:
                shown = "not set" if default in (None, "") else f"{default:g}" if isinstance(default, float) else default
                opts["help"] = f"{opts['help']} (default: {shown})"
        return opts

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        arguments = super().get_arguments(ignore_unknown_help)
        for argument in arguments:
            argument.__class__ = Flag
            if argument.kind is list:
                # Invoke starts a list's raw value at [], so `--tag` with no value went by
                # unnoticed (and selected everything); None makes it "needed value".
                argument.raw_value = None
            if argument.kind not in (str, int, bool, list):  # Count, Seconds: an INT placeholder in help
                argument.convert = argument.kind  # type: ignore[attr-defined]
                argument.kind = int
        return arguments


def task(*args: Any, **kwargs: Any) -> Any:
    """`@task` / `@task(...)` as in Invoke, making OrchestratorTasks."""
    kwargs.setdefault("klass", OrchestratorTask)
    return invoke_task(*args, **kwargs)
