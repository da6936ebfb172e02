"""config/hosts.toml: the shipped example loads as zero hosts; every bad entry is one clear line, exit 2."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from lib.errors import ConfigError
from lib.remote.hosts import Host, load_hosts
from tests.conftest import ROOT


def write(home, text: str) -> Path:
    path = home.path / "config" / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_shipped_example_loads_as_zero_hosts_and_documents_every_field():
    text = (ROOT / "config" / "hosts.toml").read_text()
    assert load_hosts(ROOT / "config" / "hosts.toml") == {}
    example = text.split("# [hosts.builder1]\n", 1)[1]
    uncommented = "\n".join(line[2:] for line in example.splitlines() if not line.startswith("#   "))
    fields = tomllib.loads(uncommented)
    assert set(fields) == {"host", "workspace", "user", "port", "key_file", "known_hosts", "jobs", "connect_timeout"}


def test_a_missing_file_means_no_hosts(home):
    assert load_hosts(home.path / "config" / "hosts.toml") == {}


def test_a_full_entry_loads_with_paths_resolved(home):
    path = write(home, '[hosts.b1]\nhost = "build1.example.com"\nuser = "ci"\nport = 2222\n'
                       'key_file = "keys/id"\nworkspace = "~/src"\njobs = 4\nknown_hosts = "/etc/kh"\n')
    host = load_hosts(path)["b1"]
    assert host == Host("b1", "build1.example.com", "src", "ci", 2222, path.parent / "keys" / "id", 4,
                        Path("/etc/kh"))
    assert host.repo_dir("staking") == "src/staking" and host.address == "ci@build1.example.com:2222"


@pytest.mark.parametrize("text,message", [
    ('[hosts.b1]\nworkspace = "w"\n', "hosts.b1.host: missing (a host name or address)"),
    ('[hosts.b1]\nhost = "h"\n', "hosts.b1.workspace: missing (a directory on the host)"),
    ('[hosts.b1]\nhost = "h"\nworkspace = "w"\nport = 0\n', "hosts.b1.port: must be a port number (1-65535), got 0"),
    ('[hosts.b1]\nhost = "h"\nworkspace = "w"\nport = "22"\n', "hosts.b1.port: must be a port number"),
    ('[hosts.b1]\nhost = "h"\nworkspace = "w"\njobs = 0\n', "hosts.b1.jobs: must be a whole number >= 1, got 0"),
    ('[hosts.b1]\nhost = "h"\nworkspace = "w"\njobs = true\n', "hosts.b1.jobs: must be a whole number >= 1"),
    ('[hosts.b1]\nhost = "h"\nworkspace = "w"\nusr = "x"\n', "hosts.b1.usr: unknown key (allowed: host, user"),
    ('[hosts.b1]\nhost = "-oProxyCommand=x"\nworkspace = "w"\n', "hosts.b1.host: '-oProxyCommand=x' must be one name"),
    ('[hosts.b1]\nhost = "h -p 2"\nworkspace = "w"\n', "hosts.b1.host: 'h -p 2' must be one name or address"),
    ('[hosts.b1]\nhost = "h"\nworkspace = ""\n', "hosts.b1.workspace: must be a directory on the host on one line"),
    ('[hosts.local]\nhost = "h"\nworkspace = "w"\n', "hosts.local: 'local' is reserved"),
    ('[hosts."a b"]\nhost = "h"\nworkspace = "w"\n', "hosts.a b: host names use only"),
    ('[hosts.b1]\nhost = "h"\nworkspace = "w"\nconnect_timeout = 0\n', "hosts.b1.connect_timeout: must be a number"),
    ('hosts = 3\n', "hosts: must be a table of [hosts.NAME] tables"),
    ('[servers.x]\n', "servers: unknown key (allowed: hosts"),
    ('[hosts.b1\n', "invalid TOML: "),
])
def test_bad_entries_are_one_clear_line_naming_file_and_field(home, text, message):
    path = write(home, text)
    with pytest.raises(ConfigError) as err:
        load_hosts(path)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{path}: ")
    assert message in err.value.problems[0]


def test_every_problem_is_reported_at_once(home):
    path = write(home, '[hosts.a]\nworkspace = "w"\n[hosts.b]\nhost = "h"\nworkspace = "w"\njobs = -1\n')
    with pytest.raises(ConfigError) as err:
        load_hosts(path)
    assert [p.split(": ")[1] for p in err.value.problems] == ["hosts.a.host", "hosts.b.jobs"]


def test_a_bad_hosts_file_makes_host_commands_exit_2_without_a_traceback(home, inv, make_repo):
    path = write(home, '[hosts.b1]\nhost = "h"\nworkspace = "w"\nport = 70000\n')
    home.write_repos([{"name": "r", "local": str(make_repo("r").path), "language": "make"}])
    for args in (["build", "r", "--host", "b1"], ["test-all", "--hosts", "b1"], ["host.check"], ["host.list"]):
        result = inv(*args)
        assert result.code == 2, args
        assert result.err.strip() == f"error: {path}: hosts.b1.port: must be a port number (1-65535), got 70000"


def test_a_bad_hosts_file_does_not_break_local_commands(home, inv, make_repo):
    write(home, "this is not toml")
    home.write_repos([{"name": "r", "local": str(make_repo("r", {"Makefile": "all:\n\t@true\ntest:\n\t@true\n"}).path),
                       "language": "make"}])
    assert inv("build", "r").code == 0
    assert inv("test-all").code == 0
    assert inv("status").code == 0


def test_host_add_appends_a_table_and_keeps_comments_and_other_hosts(home, inv):
    path = write(home, '# my build farm\n[hosts.old]\nhost = "old.example.com"  # keep me\nworkspace = "w"\n')
    result = inv("host.add", "new", "--host", "10.0.0.5", "--workspace", "/srv/src", "--user", "ci",
                 "--port", "2222", "--jobs", "3")
    assert result.code == 0, result.err
    assert "added host new (ci@10.0.0.5:2222, workspace /srv/src)" in result.out
    text = path.read_text()
    assert text.startswith('# my build farm\n[hosts.old]\nhost = "old.example.com"  # keep me\n')
    hosts = load_hosts(path)
    assert set(hosts) == {"old", "new"}
    assert (hosts["new"].port, hosts["new"].jobs, hosts["new"].user) == (2222, 3, "ci")
    listed = inv("host.list")
    assert "new" in listed.out and "ci@10.0.0.5:2222" in listed.out and "old.example.com:22" in listed.out


def test_host_add_refuses_a_duplicate_or_bad_value_and_leaves_the_file_alone(home, inv):
    path = write(home, '[hosts.old]\nhost = "h"\nworkspace = "w"\n')
    before = path.read_text()
    duplicate = inv("host.add", "old", "--host", "x", "--workspace", "w")
    assert duplicate.code == 2 and "hosts.old: already defined" in duplicate.err
    bad = inv("host.add", "new", "--host", "x", "--workspace", "w", "--port", "0")
    assert bad.code == 2 and "hosts.new.port: must be a port number (1-65535), got 0" in bad.err
    assert path.read_text() == before


def test_host_add_creates_the_file_when_there_is_none(home, inv):
    result = inv("host.add", "b1", "--host", "h", "--workspace", "src")
    assert result.code == 0, result.err
    assert set(load_hosts(home.path / "config" / "hosts.toml")) == {"b1"}


def test_concurrent_host_adds_lose_no_host(home):
    from concurrent.futures import ThreadPoolExecutor

    from lib.remote.hosts import add_host

    path = home.path / "config" / "hosts.toml"
    names = [f"b{i}" for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda n: add_host(path, n, {"host": "h", "workspace": "w"}), names))
    assert set(load_hosts(path)) == set(names)
