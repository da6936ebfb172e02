"""The default-branch alert reads the watched url as pushes read it: one reader (worktrees.remote_head), no git config
but its own and the pin's settings, so a rewrite an agent writes into the user's global config (GIT_CONFIG_GLOBAL, a
file in tmp_path here, never ~/.gitconfig) cannot point the check at a copy that never moved.
"""
from __future__ import annotations

from conftest import git
import workers_fixtures  # noqa: F401 - puts the orchestrator package on sys.path

from lib.statefile import write_json

from orchestrator import alerts, pins, worktrees
from test_workers_pr_hangs import _commit, _pin, _setup


def test_a_direct_push_to_main_is_alerted_though_the_global_config_points_the_url_at_a_stale_copy(
        make_repo, tmp_path, monkeypatch):
    handle, cfg, work = _setup(make_repo, tmp_path)
    root = tmp_path / "state"
    _pin(root, cfg, str(handle.remote))
    doc = alerts.current(root / "p", [cfg], 1000.0)
    key = str(handle.path)
    snap = doc["repos"][key]
    old = snap["default_head"]
    assert snap["url"] == str(handle.remote) and old == git(handle.remote, "rev-parse", "main")
    stale = tmp_path / "stale.git"
    git(tmp_path, "clone", "-q", "--bare", str(handle.remote), str(stale))
    pushed = _commit(work, "direct.txt")
    git(work, "push", "-q", "origin", "main")
    rewrite = tmp_path / "agent-gitconfig"
    rewrite.write_text(f'[url "{stale}"]\n\tinsteadOf = {handle.remote}\n')
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(rewrite))
    checks = alerts.Checks(doc, [cfg])
    checks.default_branch(key, snap, "a stage ended")
    [alert] = checks.found
    assert alert["kind"] == "default_branch_moved" and f"{old[:12]} -> {pushed[:12]}" in alert["detail"]


def test_the_alerts_read_the_default_branch_through_the_one_remote_head_reader(make_repo, tmp_path, monkeypatch):
    """alerts has no ls-remote of its own: each of its reads of the watched branch goes through
    worktrees.remote_head, with the pin's settings (how the url is reached) and its time budget."""
    handle, cfg, work = _setup(make_repo, tmp_path)
    root = tmp_path / "state"
    settings = {"http.proxy": ["http://proxy.invalid:3128"]}  # how the url is reached (not used by a local path)
    write_json(pins.pins_file(root, cfg.project), {"repos": {name: {
        "url": str(handle.remote), "source": "origin", "pinned_at": "2031-01-01T00:00:00Z", "settings": settings}
        for name in cfg.repos}})
    asked: list[tuple[str, str, object, object]] = []
    real = worktrees.remote_head

    def counted(url, branch, settings=None, timeout=None):
        asked.append((url, branch, settings, timeout))
        return real(url, branch, settings, timeout)

    monkeypatch.setattr(worktrees, "remote_head", counted)
    assert not hasattr(alerts, "_remote_head")
    doc = alerts.current(root / "p", [cfg], 1000.0)
    checks = alerts.Checks(doc, [cfg])
    checks.default_branch(str(handle.path), doc["repos"][str(handle.path)], "a stage ended", budget=5.0)
    assert [(u, b, s) for u, b, s, _ in asked] == [(str(handle.remote), "main", settings)] * 2
    assert asked[1][3] is not None and asked[1][3] <= 5.0 and checks.found == []


def test_an_unpinned_repositorys_check_never_takes_how_to_reach_the_url_from_the_repositorys_own_config(
        make_repo, tmp_path, monkeypatch):
    """A repository snapshotted mid-run without a pin (or a snapshot from before settings were kept): how its url
    is reached comes from the user's config (system, global), never from its .git/config, which an agent may have
    edited (a core.sshCommand there would run the agent's command on every check)."""
    handle, cfg, work = _setup(make_repo, tmp_path)
    user = tmp_path / "user-gitconfig"
    user.write_text("[credential]\n\thelper = cache\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(user))
    marker = tmp_path / "agent-ran"
    git(handle.path, "config", "core.sshCommand", f"touch {marker}; ssh")
    doc = {"repos": {}}
    snap = alerts._ensure_snapshot(doc, cfg.repos["default"])
    assert snap is not None and snap["settings"] == {"credential.helper": ["cache"]}
    del snap["settings"]  # as a run.json written before the settings were kept
    assert alerts.reach(snap) == {"credential.helper": ["cache"]}


def test_the_users_settings_follow_the_includes_of_the_users_config_as_git_does(make_repo, tmp_path, monkeypatch):
    """~/.gitconfig often keeps its credential helper in an included file ([include], or [includeIf "gitdir:..."]
    for work repositories): the settings an unpinned check reaches the url with are the ones git would use there."""
    handle, cfg, work = _setup(make_repo, tmp_path)
    (tmp_path / "creds.cfg").write_text("[credential]\n\thelper = store\n")
    (tmp_path / "work-repos.cfg").write_text("[core]\n\tsshCommand = ssh -i work-key\n")
    user = tmp_path / "user-gitconfig"
    user.write_text(f"[include]\n\tpath = {tmp_path / 'creds.cfg'}\n"
                    f"[includeIf \"gitdir:{handle.path.resolve()}/\"]\n\tpath = {tmp_path / 'work-repos.cfg'}\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(user))
    assert worktrees.user_settings() == {"credential.helper": ["store"]}
    expected = {"credential.helper": ["store"], "core.sshCommand": ["ssh -i work-key"]}
    assert worktrees.user_settings(handle.path) == expected
    assert git(handle.path, "config", "--get", "core.sshCommand") == "ssh -i work-key"  # as git itself reads it there
    snap = alerts._ensure_snapshot({"repos": {}}, cfg.repos["default"])
    assert snap is not None and snap["settings"] == expected
    del snap["settings"]  # as a run.json written before the settings were kept
    assert alerts.reach(snap) == expected
