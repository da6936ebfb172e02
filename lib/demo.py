"""Generate workspaces of real git repos (with bare remotes): the demo, and benchmark-sized ones."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lib.errors import OrchestratorError
from lib.gitstatus import git_env

# Fixed identity and dates: generated histories do not depend on the user's git config.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Demo Bot",
    "GIT_AUTHOR_EMAIL": "demo@example.com",
    "GIT_COMMITTER_NAME": "Demo Bot",
    "GIT_COMMITTER_EMAIL": "demo@example.com",
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}

# The mix of states a real workspace has (the shared benchmark's mix).
BENCH_STATES = (("clean", 60), ("modified", 15), ("untracked", 10), ("ahead", 5),
                ("behind", 5), ("detached", 3), ("feature", 2))
BENCH_LANGUAGES = ("go", "python", "javascript", "make")


@dataclass
class RepoSpec:
    name: str
    language: str
    state: str
    files: dict[str, str]
    commits: int = 3
    declare_language: bool = True
    description: str = ""
    tags: list[str] = field(default_factory=list)


def _git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(["git", *args], cwd=cwd, env={**git_env(), **GIT_ENV, **(env or {})},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if result.returncode != 0:
        raise OrchestratorError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.decode(errors='replace').strip()}")


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def _commit(local: Path, files: dict[str, str], message: str, index: int) -> None:
    _write(local, files)
    _git("add", "-A", cwd=local)
    # Commit n of a repo is dated 10 - n days ago (an hour apart per repo name), so ages look lived-in.
    when = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=10 - index, hours=len(local.name))
    date = when.isoformat()
    _git("commit", "-q", "-m", message, cwd=local, env={"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date})


def make_repo(root: Path, spec: RepoSpec) -> dict[str, object]:
    """Create root/repos/NAME (a clone) and root/remotes/NAME.git, then put it in spec.state."""
    local = root / "repos" / spec.name
    remote = root / "remotes" / f"{spec.name}.git"
    _git("init", "-q", "--bare", "-b", "main", str(remote))
    _git("init", "-q", "-b", "main", str(local))
    _commit(local, spec.files, "Initial commit", 0)
    for n in range(1, spec.commits):
        _commit(local, {"CHANGELOG.md": "".join(f"- change {i}\n" for i in range(1, n + 1))}, f"Add change {n}", n)
    _git("remote", "add", "origin", str(remote), cwd=local)
    if spec.state == "behind":
        _commit(local, {"UPSTREAM.md": "a colleague's change\n"}, "Upstream change", spec.commits)
        _git("push", "-q", "-u", "origin", "main", cwd=local)
        _git("reset", "-q", "--hard", "HEAD~1", cwd=local)
    else:
        _git("push", "-q", "-u", "origin", "main", cwd=local)
    _git("remote", "set-head", "origin", "main", cwd=local)
    if spec.state == "ahead":
        for n in range(2):
            _commit(local, {f"local_{n}.txt": f"unpushed work {n}\n"}, f"Local work {n}", spec.commits + n)
    elif spec.state == "modified":
        readme = local / "README.md"
        readme.write_text(readme.read_text() + "\nAn edit not yet committed.\n")
    elif spec.state == "untracked":
        (local / "scratch.txt").write_text("notes\n")
    elif spec.state == "detached":
        _git("checkout", "-q", "--detach", "HEAD~1", cwd=local)
    elif spec.state == "feature":
        _git("checkout", "-q", "-b", "feature/new-report", cwd=local)
        _commit(local, {"FEATURE.md": "work in progress\n"}, "WIP: new report", spec.commits)
        (local / "FEATURE.md").write_text("work in progress\nmore\n")
        _git("add", "FEATURE.md", cwd=local)
    entry: dict[str, object] = {
        "name": spec.name, "platform": "local", "remote": str(remote), "local": f"repos/{spec.name}",
        "default_branch": "main", "has_claude_md": False, "tags": spec.tags or [spec.language, spec.state],
        "description": spec.description or f"{spec.language} repo, {spec.state}",
    }
    if spec.declare_language:
        entry["language"] = spec.language
    if spec.language == "python":  # runs where no pytest is installed: a repo's own command (repos.json "commands")
        entry["commands"] = {"test": "python3 -m unittest discover -s tests"}
    return entry


def _files(language: str, name: str, failing: bool = False) -> dict[str, str]:
    files = {"README.md": f"# {name}\n"}
    if language == "go":
        files["go.mod"] = f"module example.com/{name}\n\ngo 1.21\n"
        files["main.go"] = 'package main\n\nfunc Add(a, b int) int { return a + b }\n\nfunc main() {}\n'
        files["main_test.go"] = ('package main\n\nimport "testing"\n\nfunc TestAdd(t *testing.T) {\n'
                                 '\tif Add(2, 2) != 4 {\n\t\tt.Fatal("2+2")\n\t}\n}\n')
    elif language == "javascript":
        files["package.json"] = json.dumps({"name": name, "version": "0.1.0", "private": True,
                                            "scripts": {"build": "node -e \"require('./index.js')\"",
                                                        "test": "node --test"}}, indent=2) + "\n"
        files["index.js"] = "exports.add = (a, b) => a + b;\n"
        files["test/add.test.js"] = ("const test = require('node:test');\nconst assert = require('node:assert');\n"
                                     "const { add } = require('../index.js');\n"
                                     "test('adds', () => assert.strictEqual(add(2, 2), 4));\n")
    elif language == "python":
        module = name.replace("-", "_")
        files["pyproject.toml"] = f'[project]\nname = "{name}"\nversion = "0.1.0"\n'
        files[f"{module}.py"] = "def add(a, b):\n    return a + b\n"
        files[f"tests/test_{module}.py"] = (f"import sys, pathlib, unittest\n"
                                            f"sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))\n"
                                            f"from {module} import add\n\n\nclass TestAdd(unittest.TestCase):\n"
                                            f"    def test_add(self):\n        self.assertEqual(add(2, 2), 4)\n")
    elif language == "make":
        check = "exit 1" if failing else "true"
        message = "1 of 3 checks failed: deploy manifest lists a host twice" if failing else "3 checks passed"
        files["Makefile"] = (f".PHONY: all test\nall:\n\t@echo building {name}\n"
                             f"test:\n\t@echo running checks\n\t@echo '{message}'\n\t@{check}\n")
    return files


def demo_specs() -> list[RepoSpec]:
    return [
        RepoSpec("staking", "go", "clean", _files("go", "staking"), 4, tags=["staking", "reports"],
                 description="Staking rewards (skipped by test-all where Go is not installed)"),
        RepoSpec("explorer", "javascript", "clean", _files("javascript", "explorer"), 3, tags=["frontend"]),
        RepoSpec("reports", "python", "modified", _files("python", "reports"), 5, tags=["reports"],
                 description="Python repo with an uncommitted edit"),
        RepoSpec("deploy-tools", "make", "behind", _files("make", "deploy-tools", failing=True), 3,
                 tags=["infrastructure"], description="Make repo, behind its remote, with a failing check"),
        RepoSpec("wallet", "javascript", "ahead", _files("javascript", "wallet"), 3, tags=["frontend"],
                 description="JavaScript repo with unpushed commits"),
        RepoSpec("ledger", "python", "feature", _files("python", "ledger"), 2, declare_language=False,
                 tags=["core"], description="Python (detected), on a feature branch with a staged change"),
        RepoSpec("genesis", "unknown", "clean", {"README.md": "# genesis\n", "genesis.json": "{}\n"}, 2,
                 tags=["governance"], description="Data only: no language, left out of test-all"),
    ]


def bench_specs(count: int, seed: int = 1) -> list[RepoSpec]:
    states: list[str] = []
    for state, weight in BENCH_STATES:
        states += [state] * (count * weight // 100)
    states += ["clean"] * (count - len(states))
    random.Random(seed).shuffle(states)
    specs = []
    for i, state in enumerate(states):
        rng = random.Random(f"{seed}:{i}")
        language = rng.choice(BENCH_LANGUAGES)
        name = f"repo-{i:03d}"
        specs.append(RepoSpec(name, language, state, _files(language, name), rng.randint(3, 8)))
    return specs


def generate(root: Path, specs: list[RepoSpec], jobs: int = 0) -> Path:
    """Create a fresh workspace at root (ORCHESTRATOR_HOME-ready); returns its repos.json."""
    if shutil.which("git") is None:
        raise OrchestratorError("git not found on PATH; install git first")
    root = root.resolve()
    if root.exists():
        if not (root / ".orchestrator-demo").exists() and any(root.iterdir()):
            raise OrchestratorError(f"{root} exists and was not made by this generator; choose an empty directory")
        shutil.rmtree(root)
    for sub in ("repos", "remotes", "config", "state"):
        (root / sub).mkdir(parents=True)
    (root / ".orchestrator-demo").write_text("generated by lib/demo.py; safe to delete\n")
    with ThreadPoolExecutor(max_workers=jobs or 2 * (os.cpu_count() or 2)) as pool:
        entries = list(pool.map(lambda spec: make_repo(root, spec), specs))
    config = root / "config" / "repos.json"
    config.write_text(json.dumps({"workspace": ".", "repositories": entries}, indent=2) + "\n")
    return config
