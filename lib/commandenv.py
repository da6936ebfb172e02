"""The environment a repo's own commands run in (builds, tests, foreach, sync's gits, an agent's set-up)."""
from __future__ import annotations

import os
import sys

from lib.gitstatus import without_repo_local_git_vars
from lib.paths import CHECKOUT_ROOT

# Set when we run under `make test-all`; a repo's own make must not inherit our
# make's level or jobserver (it would print "make[1]: ..." or warn about it).
PARENT_MAKE_VARS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


# What our own Python puts in the environment (an activated venv, make's PATH): a repo's
# `python3` or `pytest` must be its own, never the orchestrator's.
OUR_PYTHON_VARS = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")


def command_env() -> dict[str, str]:
    """The environment of a repo's commands: ours, minus what belongs to our make, our Python or another repo's git."""
    env = {k: v for k, v in without_repo_local_git_vars(os.environ).items()
           if k not in PARENT_MAKE_VARS and k not in OUR_PYTHON_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    if "PATH" in env:
        env["PATH"] = without_our_venv(env["PATH"])
    return env


def our_venv_bins() -> set[str]:
    """Real paths of the bin directories of this tool's virtualenv: the one running us and the checkout's .venv."""
    bins = {os.path.realpath(CHECKOUT_ROOT / ".venv" / "bin")}
    if sys.prefix != sys.base_prefix:
        bins.add(os.path.realpath(os.path.join(sys.prefix, "bin")))
    return bins


def without_our_venv(path: str) -> str:
    """PATH without this tool's virtualenv (`make` puts it first); every other entry, in order.

    A relative entry (`.venv/bin`) is looked up from each repo's directory, so it is the repo's: kept.
    """
    ours = our_venv_bins()
    return os.pathsep.join(entry for entry in path.split(os.pathsep)
                           if not os.path.isabs(entry) or os.path.realpath(entry) not in ours)
