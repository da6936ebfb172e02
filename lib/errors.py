"""The one exception family that front doors turn into a one-line error and exit code 2."""
from __future__ import annotations


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


def error_lines(err: Exception) -> str:
    """The message as front doors print it: one `error: ...` line per problem."""
    return "\n".join(f"error: {line}" for line in str(err).splitlines() or ["unknown error"])


def clip(text: str, limit: int = 120) -> str:
    """A value as error lines show it: at most `limit` characters, with a visible mark where it was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters cut]"
