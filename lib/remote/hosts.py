"""config/hosts.toml: named build hosts, loaded with tomllib and validated; `host.add` appends one with tomli-w."""
from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lib.config import NAME_RE
from lib.errors import ConfigError, OrchestratorError, clip
from lib.paths import Paths
from lib.statefile import MAX_DEPTH, NESTED, UnreadableFile, locked, nested_deeper_than, read_regular, write_text

LOCAL = "local"  # the name --hosts uses for this machine; no host may take it
DEFAULT_JOBS = 2
DEFAULT_CONNECT_TIMEOUT_S = 10.0

# Field name -> (accepted types, description used in error messages).
HOST_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "host": ((str,), "a host name or address"),
    "user": ((str,), "a user name"),
    "port": ((int,), "a port number (1-65535)"),
    "key_file": ((str,), "a path to a private key"),
    "workspace": ((str,), "a directory on the host"),
    "jobs": ((int,), "a whole number >= 1"),
    "known_hosts": ((str,), "a path to a known_hosts file"),
    "connect_timeout": ((int, float), "a number of seconds > 0"),
}
REQUIRED = ("host", "workspace")


class UnknownHostError(OrchestratorError):
    """A host name that config/hosts.toml does not define."""


@dataclass(frozen=True)
class Host:
    name: str
    host: str
    workspace: str  # on the host: absolute, or relative to the login directory
    user: str | None = None
    port: int = 22
    key_file: Path | None = None
    jobs: int = DEFAULT_JOBS
    known_hosts: Path | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S

    def repo_dir(self, repo_name: str) -> str:
        """Where a repo lives on the host: <workspace>/<repo name>."""
        return str(PurePosixPath(self.workspace) / repo_name)

    @property
    def address(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


def hosts_file(paths: Paths) -> Path:
    return paths.config_dir / "hosts.toml"


def load_hosts(path: Path) -> dict[str, Host]:
    """The hosts of a hosts.toml; a missing file means no hosts. Every problem is reported at once."""
    text = _read(path)
    return {} if text is None else parse_hosts(_parse_toml(text, path), path)


def _read(path: Path) -> str | None:
    """hosts.toml's text (None: no file); a FIFO, a device or a huge file is a ConfigError, not a hang."""
    try:
        data = read_regular(path)
        return None if data is None else data.decode("utf-8")
    except UnreadableFile as err:
        raise ConfigError(str(err)) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read: {err}") from None


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except ValueError as err:  # a number of more than 4300 digits
        raise ConfigError(f"{path}: invalid TOML: {clip(str(err))}") from None
    except RecursionError:  # tomllib's parser recurses once per nested array or inline table
        document = None
    if document is None or nested_deeper_than(document, MAX_DEPTH):
        raise ConfigError(f"{path}: invalid TOML: {NESTED}")
    return document


def parse_hosts(data: dict[str, Any], source: Path) -> dict[str, Host]:
    problems: list[str] = []

    def problem(where: str, what: str) -> None:
        problems.append(f"{source}: {where}: {what}")

    for key in sorted(set(data) - {"hosts"}):
        problem(key, "unknown key (allowed: hosts, as [hosts.NAME] tables)")
    tables = data.get("hosts", {})
    if not isinstance(tables, dict):
        problem("hosts", "must be a table of [hosts.NAME] tables")
        tables = {}
    hosts: dict[str, Host] = {}
    for name, spec in tables.items():
        where = f"hosts.{name}"
        before = len(problems)
        if not NAME_RE.fullmatch(name):
            problem(where, "host names use only A-Z a-z 0-9 . _ - and do not start with . or -")
        elif name == LOCAL:
            problem(where, f"{LOCAL!r} is reserved for this machine (--hosts a,b,local)")
        if not isinstance(spec, dict):
            problem(where, "must be a table with host and workspace")
            continue
        for key in sorted(set(spec) - set(HOST_FIELDS)):
            problem(f"{where}.{key}", f"unknown key (allowed: {', '.join(HOST_FIELDS)})")
        for key in REQUIRED:
            if key not in spec:
                problem(f"{where}.{key}", f"missing ({HOST_FIELDS[key][1]})")
        for key, (kinds, described) in HOST_FIELDS.items():
            if key not in spec:
                continue
            value = spec[key]
            if not isinstance(value, kinds) or isinstance(value, bool):
                problem(f"{where}.{key}", f"must be {described}, got {value!r}")
            elif isinstance(value, str) and (not value.strip() or "\n" in value or "\0" in value):
                problem(f"{where}.{key}", f"must be {described} on one line, got {value!r}")
        address = spec.get("host")
        if isinstance(address, str) and (address.startswith("-") or any(c.isspace() for c in address)):
            problem(f"{where}.host", f"{address!r} must be one name or address (no spaces, not starting with '-')")
        elif isinstance(address, str) and "@" in address:  # Fabric would take the user from it
            problem(f"{where}.host", f"{address!r} must be one name or address: put the user in `user`")
        elif isinstance(address, str) and address.count(":") == 1:  # Fabric would take a port (IPv6 has more)
            problem(f"{where}.host", f"{address!r} must be one name or address: put the port in `port`")
        workspace = spec.get("workspace")
        if isinstance(workspace, str) and workspace.startswith("~") and workspace != "~" \
                and not workspace.startswith("~/"):
            problem(f"{where}.workspace", f"{workspace!r}: only ~ and ~/ are understood (the login directory)")
        port = spec.get("port", 22)
        if isinstance(port, int) and not isinstance(port, bool) and not 1 <= port <= 65535:
            problem(f"{where}.port", f"must be {HOST_FIELDS['port'][1]}, got {port}")
        jobs = spec.get("jobs", DEFAULT_JOBS)
        if isinstance(jobs, int) and not isinstance(jobs, bool) and jobs < 1:
            problem(f"{where}.jobs", f"must be {HOST_FIELDS['jobs'][1]}, got {jobs}")
        timeout = spec.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and not 0 < timeout < 1e6:
            problem(f"{where}.connect_timeout", f"must be {HOST_FIELDS['connect_timeout'][1]}, got {timeout}")
        if len(problems) == before:
            hosts[name] = _make_host(name, spec, source)
    if problems:
        raise ConfigError(problems)
    return hosts


def _local_path(value: str | None, source: Path) -> Path | None:
    """A local path from the file: `~` expanded, relative to the file's directory."""
    if value is None:
        return None
    return source.parent / Path(value).expanduser()


def _make_host(name: str, spec: dict[str, Any], source: Path) -> Host:
    workspace = spec["workspace"]
    if workspace == "~" or workspace.startswith("~/"):
        workspace = workspace[2:] or "."  # relative paths start in the login (home) directory
    return Host(name=name, host=spec["host"], workspace=workspace, user=spec.get("user"),
                port=spec.get("port", 22), key_file=_local_path(spec.get("key_file"), source),
                jobs=spec.get("jobs", DEFAULT_JOBS), known_hosts=_local_path(spec.get("known_hosts"), source),
                connect_timeout=float(spec.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT_S)))


def get_host(hosts: dict[str, Host], name: str, source: Path) -> Host:
    if name not in hosts:
        defined = ", ".join(sorted(hosts)) or f"none (add one with `inv host.add` or edit {source})"
        raise UnknownHostError(f"unknown host {name!r} in {source}; defined: {defined}")
    return hosts[name]


def add_host(path: Path, name: str, fields: dict[str, Any]) -> Host:
    """Append a [hosts.NAME] table to hosts.toml (comments and other hosts are kept as they are)."""
    import tomli_w

    with locked(path):  # two `host.add` at once: each sees the other's host
        text = _read(path) or ""
        existing = parse_hosts(_parse_toml(text, path), path)
        if name in existing:
            raise ConfigError(f"{path}: hosts.{name}: already defined; edit the file to change it")
        spec = {k: v for k, v in fields.items() if v is not None}
        table = tomli_w.dumps({"hosts": {name: spec}})
        new_text = text + ("\n" if text and not text.endswith("\n") else "") + ("\n" if text.strip() else "") + table
        hosts = parse_hosts(_parse_toml(new_text, path), path)
        target = Path(os.path.realpath(path))  # a linked hosts.toml (dotfiles) stays a link: its file is replaced
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)  # the user's choice is kept
        except FileNotFoundError:
            mode = 0o600  # a new file is private, as it always was
        write_text(target, new_text, mode)  # atomic and durable: `added host` is not undone by a crash
        return hosts[name]
