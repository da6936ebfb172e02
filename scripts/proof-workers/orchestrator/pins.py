"""Push targets, pinned once per repo before any agent runs: no later .git/config edit changes where work goes."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lib.errors import ConfigError, OrchestratorError, clip
from lib.paths import Paths
from lib.statefile import UnreadableFile, locked, read_json, write_json
from orchestrator import worktrees
from orchestrator.config import ProjectConfig, RepoConfig
from orchestrator.state import RunFiles, now_iso


@dataclass(frozen=True)
class Pin:
    url: str
    source: str  # "repos.json" (its `remote`) or "origin" (origin's push url when pinned)
    pinned_at: str
    settings: dict[str, list[str]] = field(default_factory=dict)  # worktrees.PINNED_SETTINGS as they were


@dataclass(frozen=True)
class Repinned:
    project: str
    repo: str
    old: str | None
    new: Pin


def pins_file(run_root: Path, project: str) -> Path:
    return RunFiles(run_root / project).pins


def load(path: Path) -> dict[str, Pin]:
    """The pins of one project ({} before the first); a file we cannot trust stops every push (never re-made
    silently: `repin` replaces it)."""
    try:  # the shared reader: a FIFO, a huge or a deeply nested file is an error, never a hang or a traceback
        doc = read_json(path, default={"repos": {}})
    except UnreadableFile as err:
        raise ConfigError(f"{path}: unreadable push pins ({clip(err.why)}); fix it or run `repin`") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("repos"), dict):
        raise ConfigError(f"{path}: unreadable push pins (no \"repos\" object); fix it or run `repin`")
    pins = {}
    for name, entry in doc["repos"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("url"), str) and entry["url"]):
            raise ConfigError(f"{path}: repos.{clip(str(name))}: no url; fix it or run `repin`")
        settings = entry.get("settings", {})
        if not (isinstance(settings, dict) and set(settings) <= set(worktrees.PINNED_SETTINGS)
                and all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in settings.values())):
            raise ConfigError(f"{path}: repos.{clip(str(name))}.settings: not an object of string lists with keys "
                              f"from {', '.join(worktrees.PINNED_SETTINGS)}; fix it or run `repin`")
        pins[name] = Pin(entry["url"], str(entry.get("source", "")), str(entry.get("pinned_at", "")), settings)
    return pins


def _save(path: Path, pins: dict[str, Pin]) -> None:
    write_json(path, {"repos": {name: asdict(pin) for name, pin in sorted(pins.items())}})


def target_now(repo: RepoConfig, home: Path) -> Pin:
    """Where this repo's work should go: repos.json's `remote` for the same directory, else origin's push url;
    with the settings git would use to reach it now."""
    remote = ""
    repos_file = Paths(home=home, log_dir=home).repos_file
    if repos_file.exists():
        from lib.config import load_workspace

        try:
            workspace = load_workspace(repos_file)
        except OrchestratorError as err:
            raise ConfigError(f"cannot pin the push target of repo {repo.name}: {err}") from None
        remote = next((entry.remote for entry in workspace.repos
                       if entry.remote and entry.local.resolve() == repo.path.resolve()), "")
    try:
        url = remote or absolute_if_local(worktrees.push_url(repo.path), repo.path)
        settings = worktrees.pinned_settings(repo.path)
    except worktrees.GitFailed as err:
        raise ConfigError(f"cannot pin the push target of repo {repo.name}: no origin push url ({err})") from None
    return Pin(url, "repos.json" if remote else "origin", now_iso(), settings)


def absolute_if_local(url: str, base: Path) -> str:
    """A relative local path (`../app.git`) as git would resolve it from `base`: pushes run elsewhere.

    >>> absolute_if_local("../app.git", Path("/src/app"))
    '/src/app.git'
    >>> [absolute_if_local(u, Path("/src/app")) for u in ("git@host:org/app.git", "ssh://h/x", "/srv/x.git")]
    ['git@host:org/app.git', 'ssh://h/x', '/srv/x.git']
    """
    scp_like = ":" in url and "/" not in url.split(":", 1)[0]
    if "://" in url or scp_like or url.startswith("/"):
        return url
    return os.path.normpath(base / url)


def start_for(state_root: Path, cfg: ProjectConfig, repo: RepoConfig, branch: str) -> str | None:
    """Where a new issue branch starts (the pinned url's branch, else its default branch); None when the
    branch exists here already. Raises PushFailed (`retry` on a network error) or ConfigError (no pin)."""
    if worktrees.branch_head(repo.path, branch):
        return None
    pin = pinned(state_root, cfg.project, repo.name)
    return worktrees.pinned_start(pin.url, repo.default_branch, branch, pin.settings)


def ensure(configs: list[ProjectConfig], state_root: Path, home: Path) -> dict[tuple[str, str], str]:
    """Pin every repo of the run that has no pin yet (called before each assignment, so before any agent of the
    run can edit a shared .git/config). Returns why a (project, repo) could not be pinned; the rest are pinned."""
    problems: dict[tuple[str, str], str] = {}
    for cfg in configs:
        path = pins_file(state_root, cfg.project)
        try:
            if set(cfg.repos) <= set(load(path)):
                continue
            with locked(path):
                pins = load(path)
                added = False
                for repo in (repo for name, repo in cfg.repos.items() if name not in pins):
                    try:
                        pins[repo.name] = target_now(repo, home)
                        added = True
                    except ConfigError as err:
                        problems[(cfg.project, repo.name)] = str(err)
                if added:
                    _save(path, pins)
        except ConfigError as err:  # the project's pin file itself
            problems.update({(cfg.project, name): str(err) for name in cfg.repos})
    return problems


def pinned(state_root: Path, project: str, repo: str) -> Pin:
    path = pins_file(state_root, project)
    pin = load(path).get(repo)
    if pin is None:
        raise ConfigError(f"{path}: repo {repo} has no pinned push target; check where its origin pushes, "
                          f"then run `repin --repo {repo}`")
    return pin


def repin(configs: list[ProjectConfig], state_root: Path, home: Path, only: str | None = None) -> list[Repinned]:
    """Pin again, on purpose, where each repo (or only `only`) should push now."""
    known = sorted({name for cfg in configs for name in cfg.repos})
    if only is not None and only not in known:
        raise ConfigError(f"repin: unknown repo {clip(only)!r} (known: {', '.join(known)})")
    done: list[Repinned] = []
    for cfg in configs:
        chosen = [repo for name, repo in cfg.repos.items() if only is None or name == only]
        if not chosen:
            continue
        path = pins_file(state_root, cfg.project)
        with locked(path):
            try:
                pins = load(path)
            except ConfigError:
                pins = {}  # an unreadable file is what repin is for: it is replaced
            for repo in chosen:
                old = pins.get(repo.name)
                pins[repo.name] = target_now(repo, home)
                done.append(Repinned(cfg.project, repo.name, old.url if old else None, pins[repo.name]))
            _save(path, pins)
    return done


# For the alert code: facts about a pinned repo, read the same way pushes read them.

def pinned_remote_head(state_root: Path, project: str, repo: str, branch: str) -> str | None:
    """`branch`'s commit at the repo's pinned url (e.g. the default branch, to see an agent's own push to it);
    raises ConfigError (no pin) or worktrees.PushFailed (`retry`: the network)."""
    pin = pinned(state_root, project, repo)
    return worktrees.remote_head(pin.url, branch, pin.settings)


def origin_drift(state_root: Path, project: str, repo: RepoConfig) -> str | None:
    """Where origin would push now when that is not the pinned url (the shared config was changed), else None.
    Pushes are not affected; this only says that someone changed it."""
    pin = pinned(state_root, project, repo.name)
    try:
        now = absolute_if_local(worktrees.push_url(repo.path), repo.path)
    except worktrees.GitFailed as err:
        return f"origin cannot be read: {err}"
    return None if pin.source != "origin" or now == pin.url else now
