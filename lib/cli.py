"""Invoke plumbing for tasks.py: one short flag per meaning in every task, placeholders and defaults in help.

Invoke gives each task's arguments short flags from their first free letter, so
`-j` meant `--json` in one task and `--jobs` in another. Here a short flag
exists only where SHORT_FLAGS names it, and then means the same everywhere.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from invoke import Exit, Task
from invoke import task as invoke_task
from invoke.parser import Argument

# Long name -> its short flag, the same in every task; anything else is long-only.
SHORT_FLAGS = {"jobs": "j", "tag": "t", "only": "o", "dirty": "d", "dry_run": "n"}


def _parser_step(*steps: str) -> Any:
    """The frame of Invoke's parser when it is in one of these steps of its own (a few frames up), else None."""
    frame = sys._getframe(2)
    for _ in range(5):
        if frame is None:
            return None
        if frame.f_code.co_name in steps and frame.f_globals.get("__name__") == "invoke.parser.parser":
            return frame
        frame = frame.f_back
    return None


def _in_parser_step(*steps: str) -> bool:
    return _parser_step(*steps) is not None


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


class WordOrFlag(Flag):
    """An optional positional (OrchestratorTask's `optional_positional`): given as a word (`pause 3`), as its flag
    (`--issue 3`), or not at all. Invoke's positional arguments are all required: its parser eats a word for one,
    and refuses to finish without one, on the same test (a value of None). So while the parser looks for a word
    this one reads as missing until it got one, and otherwise as its default; and its flag still waits for a value
    after the word. Given twice with two values: one line, exit 2."""

    word_taken = False
    flag_raw: Any = None

    @property  # type: ignore[override]
    def value(self) -> Any:
        step = None if self.word_taken else _parser_step("handle", "see_positional_arg")
        if step is not None:
            machine, token = step.f_locals.get("self"), step.f_locals.get("token")
            if token is None or token not in getattr(machine, "contexts", {}):
                return None  # the parser may still give it its word (a task's name is the next task, as ever)
        return self._value if self._value is not None else self.default

    @value.setter
    def value(self, arg: Any) -> None:
        self.set_value(arg, cast=True)

    @property  # type: ignore[override]
    def raw_value(self) -> Any:  # read by the parser only once it saw the flag: a word is no value of the flag
        return self.flag_raw

    @raw_value.setter
    def raw_value(self, raw: Any) -> None:
        if not _in_parser_step("see_positional_arg"):
            self.flag_raw = raw

    def set_value(self, value: Any, cast: bool = True) -> None:
        before = self._value
        if _in_parser_step("see_positional_arg"):
            self.word_taken = True
        super().set_value(value, cast)
        if before is not None and before != self._value:
            raise Exit(f"error: give the {self.name} once (as a word or as --{self.names[0]}), not {before} and "
                       f"{self._value}", code=2)


class OrchestratorTask(Task):
    """A Task whose short flags come from SHORT_FLAGS and whose help states each default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["auto_shortflags"] = False
        self.optional_positional: list[str] = list(kwargs.pop("optional_positional", []))
        if self.optional_positional:  # positional None: Invoke's own choice (the arguments without a default)
            kwargs["positional"] = [*(kwargs.get("positional") or []), *self.optional_positional]
        super().__init__(*args, **kwargs)

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
            argument.__class__ = WordOrFlag if argument.name in self.optional_positional else Flag
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
