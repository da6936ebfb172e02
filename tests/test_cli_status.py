"""`inv status` and `inv scan` and scripts/scan_all_repos.py, run as users run them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT, into_closed_pipe, run_script


def test_status_table_shows_each_repo_and_exit_0_even_when_dirty(home, make_repo, inv, tmp_path):
    clean, dirty, behind = make_repo("clean-one"), make_repo("dirty-one"), make_repo("behind-one")
    (dirty.path / "README.md").write_text("edited\n")
    behind.push_from_elsewhere(tmp_path, {"x": "1"})
    behind.git("fetch", "-q")
    home.add(clean, dirty, behind)
    result = inv("status")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].split() == ["REPO", "BRANCH", "STATUS", "AHEAD/BEHIND", "LAST", "COMMIT"]
    row = {line.split()[0]: line for line in lines[2:5]}
    assert "clean" in row["clean-one"] and "=" in row["clean-one"]
    assert "1 modified" in row["dirty-one"]
    assert "+0/-1" in row["behind-one"]
    assert clean.head()[:7] in row["clean-one"] and "initial" in row["clean-one"]
    assert "scanned 3 repos" in lines[-1]


def test_status_exit_1_when_a_repo_has_an_error(home, make_repo, inv, tmp_path):
    good = make_repo("good")
    home.write_repos([{"name": "good", "local": str(good.path)},
                      {"name": "gone", "local": str(tmp_path / "nowhere")}])
    result = inv("status")
    assert result.code == 1
    assert "error: path does not exist" in result.out


def test_status_dirty_filter_tag_filter_and_json(home, make_repo, inv):
    a, b = make_repo("a"), make_repo("b")
    (b.path / "new.txt").write_text("x")
    home.write_repos([{"name": "a", "local": str(a.path), "tags": ["core"]},
                      {"name": "b", "local": str(b.path), "tags": ["web"]}])
    dirty_only = inv("status", "--dirty")
    assert "b " in dirty_only.out and "\na " not in dirty_only.out
    tagged = json.loads(inv("status", "--json", "--tag", "core").out)
    assert [r["name"] for r in tagged["repos"]] == ["a"]
    assert set(tagged["repos"][0]) == {"name", "path", "exists", "clean", "language", "branch", "detached",
                                       "head", "upstream", "ahead", "behind", "staged", "modified",
                                       "untracked", "conflicted", "dirty", "last_commit", "operation", "index_lock",
                                       "stashes", "error"}
    assert set(tagged["repos"][0]["last_commit"]) == {"sha", "subject", "author", "date"}


def test_status_without_config_is_exit_2_with_how_to(home, inv):
    result = inv("status")
    assert result.code == 2
    assert result.err.startswith("error: ") and "not found; create it with" in result.err
    assert "Traceback" not in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_bad_config_is_exit_2_one_line_per_problem(home, inv):
    home.write_repos([{"name": "a", "local": ""}, {"name": "a", "local": "/x"}])
    result = inv("scan")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") and "repos.json" in line for line in lines)


def test_scan_writes_state_atomically_with_documented_keys(home, make_repo, inv):
    home.add(make_repo("a"))
    result = inv("scan")
    assert result.code == 0
    assert "scanned 1 repos" in result.out and "repo-status.json" in result.out
    doc = home.state("repo-status.json")
    assert set(doc) == {"generated_at", "repos"}
    assert doc["repos"][0]["name"] == "a" and doc["repos"][0]["clean"] is True
    leftovers = [p.name for p in (home.path / "state").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_scan_script_runs_from_another_directory_without_pythonpath(home, make_repo, tmp_path):
    home.add(make_repo("a"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "scan_all_repos.py")], cwd=elsewhere,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "scanned 1 repos" in result.stdout
    assert home.state("repo-status.json")["repos"][0]["name"] == "a"


def test_scan_script_uses_only_the_standard_library(home, make_repo, tmp_path):
    """The scan path must work before `make setup`: run it with third-party imports blocked."""
    home.add(make_repo("a"))
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'invoke', 'fabric', 'git', 'libtmux', 'tabulate', 'tomli_w', 'paramiko'}:\n"
        "            raise ImportError('blocked third-party import: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n")
    result = run_script("scan_all_repos.py", cwd=tmp_path, env={"PYTHONPATH": str(blocker)})
    assert result.returncode == 0, result.stderr


def test_scan_script_exit_codes(home, tmp_path):
    result = run_script("scan_all_repos.py", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ")
    home.write_repos([{"name": "gone", "local": str(tmp_path / "gone")}])
    result = run_script("scan_all_repos.py", cwd=tmp_path)
    assert result.returncode == 1
    assert "gone: path does not exist" in result.stderr


def test_scan_script_into_a_closed_pipe_records_the_scan_and_exits_1_without_a_traceback(home, make_repo, tmp_path):
    """`scan_all_repos.py | head -0`: the reader is gone before the summary line is printed."""
    home.add(make_repo("a"))
    result = into_closed_pipe([sys.executable, str(ROOT / "scripts" / "scan_all_repos.py")], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert home.state("repo-status.json")["repos"][0]["name"] == "a"


def test_scan_with_an_unwritable_state_dir_prints_the_summary_then_one_line_exit_2(home, make_repo, inv, tmp_path):
    home.add(make_repo("a"))
    (home.path / "state").write_text("a file where the state directory should be")
    result = inv("scan")
    assert result.code == 2 and "Traceback" not in result.err
    assert "scanned 1 repos" in result.out and "->" not in result.out, "the summary must not claim a write"
    assert result.err.strip().splitlines() == [
        f"error: cannot write {home.path / 'state' / 'repo-status.json'}: File exists; the scan was not recorded"]
    script = run_script("scan_all_repos.py", cwd=tmp_path)
    assert script.returncode == 2 and "Traceback" not in script.stderr
    assert "scanned 1 repos" in script.stdout
    assert script.stderr.strip().endswith("the scan was not recorded")


STATUS_MODULES = """
import sys
from invoke import Collection, Program
import tasks
Program(namespace=Collection.from_module(tasks)).run(["inv", "status", "--json"], exit=False)
print("runner imported" if "lib.runner" in sys.modules else "no runner", file=sys.stderr)
"""


def test_status_without_host_does_not_import_the_runner(home, make_repo):
    """lib.runner (about 24 ms of imports) is for --host and for runs, not for a local status."""
    home.add(make_repo("one"))
    result = subprocess.run([sys.executable, "-c", STATUS_MODULES], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert json.loads(result.stdout)["repos"][0]["name"] == "one", result.stderr
    assert result.stderr.strip().splitlines()[-1] == "no runner"


TABLE_MODULES = """
import sys
from lib.views import plain_table
print(plain_table([["a", "1.10"]], ["repo", "branch"]))
print("metadata imported" if "importlib.metadata" in sys.modules else "no metadata", file=sys.stderr)
"""


def test_a_table_does_not_import_package_metadata():
    """tabulate 0.10 reads its own version through importlib.metadata when imported: about 15 ms on every
    table printed (every status, sync, test-all). pyproject keeps it below 0.10; this says why if it moves."""
    result = subprocess.run([sys.executable, "-c", TABLE_MODULES], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.stdout.splitlines()[-1].split() == ["a", "1.10"], result.stderr
    assert result.stderr.strip().splitlines()[-1] == "no metadata"


def test_status_resolves_the_repos_paths_once(home, make_repo, inv, monkeypatch):
    """load_workspace resolved every repo's path (duplicates check) and the scan resolved them all again."""
    import lib.config
    import lib.gitstatus
    import lib.paths

    home.add(make_repo("one"), make_repo("two"))
    calls = []

    def counted(paths):
        paths = list(paths)
        calls.append(len(paths))
        return lib.paths.real_paths(paths)

    monkeypatch.setattr(lib.config, "real_paths", counted)
    monkeypatch.setattr(lib.gitstatus, "real_paths", counted)
    result = inv("status")
    assert result.code == 0, result.err
    assert calls == [2]


def test_a_status_stopped_by_a_signal_exits_128_plus_it_with_one_line(home, make_repo, inv, monkeypatch):
    import lib.scan

    home.add(make_repo("one"))

    def stopped(*args, **kwargs):
        raise lib.scan.ScanStopped(15)

    monkeypatch.setattr(lib.scan, "scan_workspace", stopped)
    result = inv("status")
    assert result.code == 143 and result.err.strip() == "interrupted: scan stopped (SIGTERM)"
