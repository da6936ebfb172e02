"""Text from repos (commit subjects, branch names) never drives the terminal: tables show control and bidi
characters escaped, JSON keeps the raw text. Before, ESC and BEL reached the terminal raw."""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import git
from tests.sshd_fixtures import sshd, write_hosts  # noqa: F401  (sshd is a fixture)

HOSTILE = "\x1b]0;owned\x07\x1b[2Jfix\x08 it\u202etxt.exe"
SHOWN = "\\x1b]0;owned\\x07\\x1b[2Jfix\\x08 it\\u202etxt.exe"
BRANCH = "fix-\u202etxt"


def hostile_repo(make_repo, name: str = "app"):
    handle = make_repo(name)
    git(handle.path, "checkout", "-q", "-b", BRANCH)
    handle.commit({"x.txt": "1"}, message=HOSTILE)
    return handle


def assert_escaped(out: str) -> None:
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\x08" not in out
    assert SHOWN[:40] in out and "fix-\\u202etxt" in out


def test_status_table_escapes_control_characters_and_json_keeps_them(home, make_repo, inv):
    home.add(hostile_repo(make_repo))
    table = inv("status")
    assert table.code == 0, table.err
    assert_escaped(table.out)
    doc = json.loads(inv("status", "--json").out)
    assert doc["repos"][0]["last_commit"]["subject"] == HOSTILE and doc["repos"][0]["branch"] == BRANCH


def test_the_reports_repo_table_escapes_control_characters(home, make_repo, inv):
    home.add(hostile_repo(make_repo))
    assert inv("scan").code == 0
    result = inv("report", "--date", "2026-11-27")
    assert result.code == 0, result.err
    report = Path(result.out.strip()).read_text()
    assert "\x1b" not in report and "\x07" not in report and "\u202e" not in report
    assert "fix-\\u202etxt" in report


def test_status_on_a_host_escapes_control_characters(home, make_repo, inv, sshd, tmp_path):
    handle = hostile_repo(make_repo)
    git(handle.path, "push", "-q", "origin", BRANCH)
    ws = tmp_path / "ws"
    ws.mkdir()
    git(ws, "clone", "-q", "-b", BRANCH, str(handle.remote), "app")
    write_hosts(home.path, {"builder": sshd.host_entry(ws)})
    home.write_repos([{"name": "app", "local": str(tmp_path / "here" / "app")}])
    table = inv("status", "--host", "builder")
    assert table.code == 0, table.out + table.err
    assert_escaped(table.out)
    doc = json.loads(inv("status", "--host", "builder", "--json").out)
    assert doc["repos"][0]["last_commit"]["subject"] == HOSTILE

