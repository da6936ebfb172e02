"""The docs cannot drift from the code: every command in README, CLAUDE.md, the playbooks and docs/ exists,
and every task, option and make target that exists is documented.

Each `inv ...`, `make ...` and `python scripts/...` command, in code blocks (fenced or indented)
(shell sessions, CI YAML) and in inline code, is checked against the real
thing: Invoke's own parser over tasks.py's collection (task names, flags,
positional arguments), `make -n` on the Makefile, and each script's argparse
options (from its `--help`). The other way round, every task of that parser
is named as `inv TASK`, each of its long options appears with it, and every
target of make's own database is named as `make TARGET`.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from tests.conftest import ROOT

FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")
INDENTED_CODE_RE = re.compile(r"^(?: {4}|\t)\s*\S")
INLINE_RE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# What may precede a command on a code line: YAML list items and keys, a shell prompt.
LINE_PREFIX_RE = re.compile(r"^\s*(?:-\s+)?(?:(?:run|script):\s*)?(?:\|\s*)?(?:\$\s+)?")
PYTHON_RE = re.compile(r"^(?:\S*/)?python3?$")
PLACEHOLDER_RE = re.compile(r"<([^<>\n]+)>")
SEPARATORS = {"&&", "||", "|", ";", "&", "(", ")"}


@dataclass(frozen=True)
class Command:
    where: str
    words: tuple[str, ...]
    mention: bool = False  # `inv build` in prose names a task; it need not carry its arguments
    flag_only: bool = False  # ("inv", TASK, FLAG): a flag listed beside the task, its value left out

    def __str__(self) -> str:
        return f"{self.where}: {' '.join(self.words)}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CLAUDE.md", *sorted((ROOT / "playbooks").glob("*.md")),
            *sorted((ROOT / "docs").glob("*.md"))]


def split_segments(text: str) -> list[list[str]]:
    """Shell words of a line, cut at &&, ||, |, ; and parentheses; a `<placeholder>` is one word."""
    text = PLACEHOLDER_RE.sub(lambda m: "PLACEHOLDER-" + re.sub(r"\W", "-", m.group(1)), text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        words = list(lexer)
    except ValueError:
        return []
    segments: list[list[str]] = [[]]
    for word in words:
        if word in SEPARATORS or set(word) <= set("&|;()"):
            segments.append([])
        else:
            segments[-1].append(word)
    return [s for s in segments if s]


def command_of(words: list[str]) -> tuple[str, ...] | None:
    """The inv/make/python-scripts command in a segment, without env assignments and doc brackets."""
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words = words[1:]
    cleaned = tuple(w.strip("[]") for w in words if w.strip("[]") and w != "...")
    if not cleaned:
        return None
    first = cleaned[0]
    if first in ("inv", "invoke", "make") and len(cleaned) > 1:
        return cleaned
    if PYTHON_RE.match(first) and len(cleaned) > 1 and cleaned[1].startswith("scripts/") \
            and not cleaned[1].endswith("/..."):
        return ("python", *cleaned[1:])
    return None


def extract_commands(path: Path, text: str | None = None) -> list[Command]:
    text = path.read_text() if text is None else text
    found: list[Command] = []
    fence = ""  # the open fence: closed by a run of its character at least as long, with nothing after it
    pending = ""
    indented_code, blank_before = False, True
    for number, line in enumerate(text.splitlines(), 1):
        opener = FENCE_RE.match(line)
        if opener and not fence:
            fence = opener.group(1)
            continue
        if opener and opener.group(1)[0] == fence[0] and len(opener.group(1)) >= len(fence) \
                and not opener.group(2).strip():
            fence = ""
            continue
        # An indented code block (4 spaces after a blank line) holds commands just as a fence does.
        indented_code = not fence and bool(INDENTED_CODE_RE.match(line)) and (blank_before or indented_code)
        blank_before = not line.strip()
        in_fence = bool(fence) or indented_code
        if in_fence:
            line = pending + line
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            candidates = [LINE_PREFIX_RE.sub("", line, count=1)]
        else:
            candidates = INLINE_RE.findall(line)
        on_line = []
        for candidate in candidates:
            for segment in split_segments(candidate):
                command = command_of(segment)
                if command:
                    on_line.append(Command(f"{path.name}:{number}", command, not in_fence and len(command) == 2))
        found += on_line
        # A table row listing `--flag` spans after its first `inv TASK` documents that task's flags.
        inv_here = [c for c in on_line if c.words[0] == "inv" and not c.words[1].startswith("-")]
        if not in_fence and inv_here and line.lstrip().startswith("|"):
            first = next(i for i, span in enumerate(candidates) if span.startswith(f"inv {inv_here[0].words[1]}"))
            for span in candidates[first + 1:]:
                if span.startswith("--"):
                    found.append(Command(f"{path.name}:{number}", ("inv", inv_here[0].words[1], span.split()[0]),
                                         flag_only=True))
    return found


# --- checking against the real thing -----------------------------------------------------------------------

@lru_cache(maxsize=1)
def invoke_parser():
    from invoke import Collection, Program
    from invoke.parser import Parser, ParserContext

    import tasks

    program = Program(namespace=Collection.from_module(tasks), name="inv", binary="inv")
    collection = Collection.from_module(tasks)
    return Parser(initial=ParserContext(args=program.core_args() + program.task_args()),
                  contexts=collection.to_contexts())


def check_inv(words: tuple[str, ...], mention: bool = False) -> str | None:
    from invoke.exceptions import ParseError

    try:
        result = invoke_parser().parse_argv(list(words[1:]))
    except ParseError as err:
        if mention and "did not receive required positional arguments" in str(err):
            return None
        return str(err)
    tasks_named = [ctx for ctx in result[1:]]
    core = result[0]
    if not tasks_named and not any(arg.got_value for arg in core.args.values()):
        return "no task named"
    for ctx in tasks_named:
        missing = [name for name, arg in ctx.args.items() if arg.positional and not arg.got_value
                   and arg.default is None]
        if missing and not core.args["help"].got_value:
            return f"{ctx.name}: missing {', '.join(missing)}"
    return None


def check_flag(task_name: str, flag: str) -> str | None:
    contexts = {name: ctx for ctx in invoke_parser().contexts.values() for name in (ctx.name, *ctx.aliases)}
    if task_name not in contexts:
        return f"no task {task_name!r}"
    return None if flag in contexts[task_name].flags else f"{task_name} has no flag {flag}"


def check_make(words: tuple[str, ...]) -> str | None:
    args = [w for w in words[1:] if not w.startswith("-")]
    result = subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["make -n failed"])[-1]


@lru_cache(maxsize=None)
def script_options(script: str) -> frozenset[str] | None:
    path = ROOT / script
    if not path.is_file():
        return None
    result = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return None
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", result.stdout))


def check_script(words: tuple[str, ...]) -> str | None:
    script = words[1]
    options = script_options(script)
    if options is None:
        return f"{script}: no such script (or its --help fails)"
    unknown = [w.split("=", 1)[0] for w in words[2:] if w.startswith("-") and w.split("=", 1)[0] not in options]
    return f"{script}: unknown option(s) {', '.join(unknown)}" if unknown else None


def check(command: Command) -> str | None:
    first = command.words[0]
    if command.flag_only:
        return check_flag(command.words[1], command.words[2])
    if first in ("inv", "invoke"):
        return check_inv(command.words, command.mention)
    if first == "make":
        return check_make(command.words)
    return check_script(command.words)


# --- the other way round: what exists is documented ---------------------------------------------------------

# A rule line in make's database ("name: prerequisites", "name: VAR = value"), not a variable (`:=`).
MAKE_RULE_RE = re.compile(r"^([^\s#:=][^\s:=]*):(?!=)")


@lru_cache(maxsize=1)
def make_targets() -> tuple[str, ...]:
    """The Makefile's own targets, read from make's database (`make -p`).

    A name make lists as "Not a target" (a file a rule only depends on), a special target (`.PHONY`) and a
    file target (`.venv/.installed`) are left out. The goal asked for does not exist, so nothing is made; the
    database's headings are read in the C locale, and the environment of a calling make is not passed on.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKEFILES", "MAKELEVEL")}
    result = subprocess.run(["make", "--no-print-directory", "-pRrq", "-f", "Makefile", ".no-such-goal"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, env={**env, "LC_ALL": "C"})
    database = result.stdout.split("\n# Files\n", 1)[-1].split("\n# Finished Make data base", 1)[0]
    targets, previous = set(), ""
    for line in database.splitlines():
        rule = MAKE_RULE_RE.match(line)
        if rule and previous != "# Not a target:" and not rule.group(1).startswith(".") and "/" not in rule.group(1):
            targets.add(rule.group(1))
        previous = line
    return tuple(sorted(targets))


def coverage_gaps(commands: list[Command], contexts, targets) -> list[str]:
    """What the docs leave out: a task never named as `inv TASK`, a long option never shown with its task
    (in its command, or as a `--flag` span of a table row that starts with `inv TASK`), a make target never
    named as `make TARGET`. The `--no-...` forms Invoke adds for booleans that default to true are not options
    of their own."""
    named, shown, made = set(), set(), set()
    for command in commands:
        first, rest = command.words[0], command.words[1:]
        if first in ("inv", "invoke"):
            named.add(rest[0])
            shown.update((rest[0], word.split("=", 1)[0]) for word in rest[1:] if word.startswith("--"))
        elif first == "make":
            made.add(rest[0])
    gaps = []
    for ctx in contexts:
        names = {ctx.name, *ctx.aliases}
        if not names & named:
            gaps.append(f"inv {ctx.name}: the task is named nowhere in the docs")
            continue
        gaps += [f"inv {ctx.name} {flag}: the option is shown nowhere with its task" for flag in ctx.flags
                 if flag.startswith("--") and flag not in ctx.inverse_flags
                 and not any((name, flag) in shown for name in names)]
    gaps += [f"make {target}: the target is named nowhere in the docs" for target in targets if target not in made]
    return gaps


# --- the tests ---------------------------------------------------------------------------------------------

def test_every_documented_command_exists_with_every_flag_it_uses():
    commands = [c for path in doc_files() for c in extract_commands(path)]
    problems = [f"{command}  ->  {problem}" for command in commands if (problem := check(command))]
    assert not problems, "commands in the docs that the code does not have:\n" + "\n".join(problems)


def test_the_docs_cover_the_whole_command_surface():
    commands = {" ".join(c.words[:2]) for path in doc_files() for c in extract_commands(path)}
    for expected in ("inv task.list", "inv task.start", "inv task.complete", "inv task.add", "inv task.show",
                     "inv report", "make demo", "make test-all", "python scripts/scan_all_repos.py",
                     "python scripts/run_all_tests.py"):
        assert expected in commands, expected


def test_every_task_option_and_make_target_is_documented():
    assert {"setup", "demo", "test", "test-all", "clean"} <= set(make_targets()), make_targets()
    commands = [c for path in doc_files() for c in extract_commands(path)]
    gaps = coverage_gaps(commands, invoke_parser().contexts.values(), make_targets())
    assert not gaps, "what exists but is not documented:\n" + "\n".join(gaps)


def test_the_docs_folder_is_read_once_it_exists(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert doc_files() == [tmp_path / "README.md", tmp_path / "CLAUDE.md"]  # no docs/ yet: nothing more
    (tmp_path / "docs").mkdir()
    for name in ("status.md", "build-hosts.md", "notes.txt"):
        (tmp_path / "docs" / name).write_text("`inv status`\n")
    assert doc_files()[2:] == [tmp_path / "docs" / "build-hosts.md", tmp_path / "docs" / "status.md"]


def test_every_playbook_is_listed_in_the_playbook_index():
    index = (ROOT / "playbooks" / "README.md").read_text()
    for playbook in (ROOT / "playbooks").glob("*.md"):
        if playbook.name != "README.md":
            assert f"]({playbook.name})" in index, playbook.name


def test_the_ci_jobs_run_the_scan_and_test_all_and_publish_the_junit_report():
    ci = (ROOT / "docs" / "ci.md").read_text()
    github, gitlab = ci.split("GitLab CI", 1)
    for job in (github, gitlab):
        commands = [" ".join(c.words) for c in extract_commands(Path("docs/ci.md"), job)]
        assert "python scripts/scan_all_repos.py" in commands
        assert "python scripts/run_all_tests.py --junit-xml reports/junit.xml" in commands
    assert "report_paths: reports/junit.xml" in github and "junit: reports/junit.xml" in gitlab


@pytest.mark.parametrize("doc, problem", [
    ("Run `inv task.list --bogus` to see it.", "--bogus"),
    ("```sh\n$ inv task.start\n```", "did not receive required positional arguments: 'id'"),
    ("`inv task.start`, a mention, is fine; `inv task.begin` is not", "task.begin"),
    ("```sh\ninv no-such-task\n```", "no-such-task"),
    ("```yaml\n  - run: make no-such-target\n```", "no-such-target"),
    ("`python scripts/run_all_tests.py --jobs 2 --colour`", "--colour"),
    ("```sh\nORCHESTRATOR_HOME=demo python3 scripts/no_such.py\n```", "no such script"),
    ("`inv report --date D --since D --notes TEXT --width 3`", "--width"),
    ("| test all | `inv test-all` / `make test-all` (`--jobs N`, `--parallel`) |", "test-all has no flag --parallel"),
    ("An indented block:\n\n    inv task.complete task-001 --force\n", "--force"),
    ("````markdown\nA fence opens with\n```sh\n````\n\n```sh\ninv task.list --stat active\n```", "--stat"),
])
def test_the_checker_catches_a_made_up_command_or_flag(tmp_path, doc, problem):
    commands = extract_commands(tmp_path / "doc.md", doc)
    assert commands, "the command was extracted"
    problems = [p for c in commands if (p := check(c))]
    assert problems and problem in problems[0], problems


def _contexts(*names: str) -> list:
    return [ctx for ctx in invoke_parser().contexts.values() if ctx.name in names]


@pytest.mark.parametrize("doc, tasks, targets, gap", [
    ("`inv task.list --state S --repo R` lists tasks.", ["task.list"], [], "inv task.list --json: the option"),
    ("| list | `inv task.list` (`--state S`, `--json`) |", ["task.list"], [], "inv task.list --repo: the option"),
    ("`inv task.list --state S --repo R`; `--json` outside a table row", ["task.list"], [], "inv task.list --json"),
    ("`inv task.list --state S --repo R --json`", ["task.list", "task.show"], [], "inv task.show: the task"),
    ("`inv task.show --id` and `make status`", [], ["status", "clean"], "make clean: the target"),
    ("`inv workers.monitor --cycle 5 --once`", ["workers.monitor"], [], "inv workers.monitor --no-delay"),
    ("`inv build staking` and `inv test --repo staking`", ["build"], [], "inv build --repo: the option"),
])
def test_the_checker_catches_an_undocumented_task_option_or_target(tmp_path, doc, tasks, targets, gap):
    gaps = coverage_gaps(extract_commands(tmp_path / "doc.md", doc), _contexts(*tasks), targets)
    assert any(g.startswith(gap) for g in gaps), gaps


def test_the_coverage_check_passes_a_doc_that_names_everything_and_skips_inverse_flags(tmp_path):
    from invoke import Collection, task as invoke_task

    @invoke_task
    def paint(c, colour=True, no_delay=False):
        """A boolean defaulting to true gets --no-colour from Invoke; --no-delay is an option of its own."""

    paint_ctx = Collection(paint).to_contexts()
    doc = ("`inv task.list --state S --repo R --json`, `inv paint --colour --no-delay`\n"
           "| show | `inv task.show <id>` | `--id ID` |\n```sh\nmake status\n```\n")
    assert coverage_gaps(extract_commands(tmp_path / "doc.md", doc), _contexts("task.list", "task.show") + paint_ctx,
                         ["status"]) == []
    assert coverage_gaps(extract_commands(tmp_path / "doc.md", "`inv paint --colour`"), paint_ctx, []) == [
        "inv paint --no-delay: the option is shown nowhere with its task"]


def test_the_extractor_reads_sessions_yaml_continuations_and_chains(tmp_path):
    doc = ("```sh\n$ inv status --json | jq .\nmake demo && \\\n  inv task.list --state active\n"
           "# inv not-a-command in a comment\n```\n"
           "```yaml\n      - run: .venv/bin/python scripts/run_all_tests.py --junit-xml x.xml\n```\n"
           "Prose with `inv task.add \"<title>\" --repo R --priority P [--type T]` and `git status`.\n")
    assert [" ".join(c.words) for c in extract_commands(tmp_path / "doc.md", doc)] == [
        "inv status --json", "make demo", "inv task.list --state active",
        "python scripts/run_all_tests.py --junit-xml x.xml",
        "inv task.add PLACEHOLDER-title --repo R --priority P --type T"]


# --- links between the pages -----------------------------------------------------------------------------

LINK_RE = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")


def anchors_of(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file: each heading's slug (lower case, punctuation dropped, spaces as
    hyphens) and each explicit `<a id="...">`."""
    found: set[str] = set()
    fence = False
    for line in path.read_text().splitlines():
        if FENCE_RE.match(line):
            fence = not fence
            continue
        if fence:
            continue
        if re.match(r"^#{1,6} ", line):
            found.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
        found.update(re.findall(r'<a id="([^"]+)">', line))
    return found


def broken_links(path: Path) -> list[str]:
    problems = []
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in LINK_RE.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:: not ours to check here
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
            problems.append(f"{path.relative_to(ROOT)}: {target}: no such anchor in {linked.name}")
    return problems


def test_every_link_between_the_pages_leads_somewhere():
    problems = [problem for path in doc_files() for problem in broken_links(path)]
    assert not problems, "\n".join(problems)


def test_the_readme_stays_a_page_for_newcomers_and_links_every_reference_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 220  # the reference lives in docs/
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, page.name


def test_the_link_check_catches_a_missing_page_and_a_missing_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n<a id=\"here\"></a>text\n")
    doc = tmp_path / "README.md"
    doc.write_text("[ok](docs/a.md#a-page) [ok](docs/a.md#here) [bad](docs/b.md) [bad](docs/a.md#nowhere)\n"
                   "```\n[not a link](nowhere.md)\n```\n")
    assert broken_links(doc) == ["README.md: docs/b.md: no such file",
                                 "README.md: docs/a.md#nowhere: no such anchor in a.md"]
