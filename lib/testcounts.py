"""A test runner's own counts (passed, failed, skipped, errors), read from the summary at the end of its log.

Known summaries: pytest (`2 failed, 615 passed in 3.1s`), jest (`Tests: 1 failed,
2 passed, 3 total`), vitest (`Tests  1 failed | 2 passed (3)`), node's test runner
(`# pass 2` / `ℹ pass 2`), python -m unittest (`Ran 3 tests` and `FAILED
(failures=1)`), cargo test (every `test result:` line, summed) and go test -v
(every `--- PASS/FAIL/SKIP` line). No summary found, or a log too big to hold
every line a sum needs: None, never a guess.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from lib.statefile import open_regular

KEYS = ("passed", "failed", "skipped", "errors")
WINDOW = 1024 * 1024  # bytes read from the end of the log
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

PYTEST_RE = re.compile(
    r"^=*\s*((?:\d+ (?:passed|failed|skipped|errors?|xfailed|xpassed|warnings?|deselected|rerun)(?:, )?)+"
    r"|no tests ran) in [\d.]+s(?: \([\d:]+\))?\s*=*$")
PYTEST_WORDS = {"passed": "passed", "xpassed": "passed", "failed": "failed", "skipped": "skipped",
                "xfailed": "skipped", "error": "errors", "errors": "errors"}
JEST_RE = re.compile(r"^Tests:\s+((?:\d+ [a-z]+, )*\d+ total)$")
JEST_WORDS = {"passed": "passed", "failed": "failed", "skipped": "skipped", "todo": "skipped"}
VITEST_RE = re.compile(r"^Tests\s+((?:\d+ [a-z ]+?(?: \| )?)+)\s*\(\d+\)$")
VITEST_WORDS = {"passed": "passed", "failed": "failed", "skipped": "skipped", "todo": "skipped"}
NODE_RE = re.compile(r"^(?:#|ℹ) (tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) (\d+(?:\.\d+)?)$")
NODE_WORDS = {"pass": "passed", "fail": "failed", "cancelled": "errors", "skipped": "skipped", "todo": "skipped"}
CARGO_RE = re.compile(r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored;")
UNITTEST_RAN_RE = re.compile(r"^Ran (\d+) tests? in [\d.]+s$")
UNITTEST_END_RE = re.compile(r"^(?:OK|FAILED)(?: \(([a-z =0-9,]*)\))?$")
UNITTEST_WORDS = {"failures": "failed", "unexpected successes": "failed", "errors": "errors",
                  "skipped": "skipped", "expected failures": "skipped"}
GO_RE = re.compile(r"^\s*--- (PASS|FAIL|SKIP): ")
GO_WORDS = {"PASS": "passed", "FAIL": "failed", "SKIP": "skipped"}


def read_counts(log: Path) -> dict[str, int] | None:
    """The counts of the last test summary in `log`, or None when it has none (or cannot be read)."""
    try:  # regular files only: a log_file that is a FIFO or a terminal must never hang us
        fd = open_regular(log, os.O_RDONLY)  # kept, not read_small: only the log's tail is read
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, WINDOW + 1, max(0, size - WINDOW - 1))  # one byte more: does a line start there?
    except OSError:
        return None
    finally:
        os.close(fd)
    if size > WINDOW:  # a first line cut short is left out: the end of "12 passed in 1s" must not read as "2"
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    return parse_counts(data.decode("utf-8", "replace"), whole=size <= WINDOW)


def parse_counts(text: str, whole: bool = True) -> dict[str, int] | None:
    """Counts from a log's text; `whole` says the text is the entire log (sums need every line)."""
    lines = [ANSI_RE.sub("", line).strip() for line in text.splitlines()]
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        found = _pytest(line) or _words(JEST_RE, line, ", ", JEST_WORDS) \
            or _words(VITEST_RE, line, " | ", VITEST_WORDS) or _node(lines, index) or _unittest(lines, index)
        if found is not None:
            return found
    if not whole:
        return None
    return _cargo(lines) or _go(lines)


def _empty() -> dict[str, int]:
    return dict.fromkeys(KEYS, 0)


def _pytest(line: str) -> dict[str, int] | None:
    match = PYTEST_RE.match(line)
    if not match:
        return None
    counts = _empty()
    for part in match.group(1).split(", "):
        number, _, word = part.partition(" ")
        if word in PYTEST_WORDS:
            counts[PYTEST_WORDS[word]] += int(number)
    return counts


def _words(pattern: re.Pattern[str], line: str, separator: str, words: dict[str, str]) -> dict[str, int] | None:
    match = pattern.match(line)
    if not match:
        return None
    counts = _empty()
    for part in match.group(1).split(separator):
        number, _, word = part.strip().partition(" ")
        if word in words:
            counts[words[word]] += int(number)
    return counts


def _unittest(lines: list[str], index: int) -> dict[str, int] | None:
    """python -m unittest: `Ran 3 tests in 0.01s`, a blank line, `FAILED (failures=1, skipped=1)` or `OK`."""
    end = UNITTEST_END_RE.match(lines[index])
    ran = UNITTEST_RAN_RE.match(lines[index - 2]) if index >= 2 and not lines[index - 1] else None
    if not end or not ran:
        return None
    counts = _empty()
    for part in (end.group(1) or "").split(","):
        word, _, number = part.strip().partition("=")
        if word in UNITTEST_WORDS and number.isdigit():
            counts[UNITTEST_WORDS[word]] += int(number)
    counts["passed"] = max(0, int(ran.group(1)) - counts["failed"] - counts["errors"] - counts["skipped"])
    return counts


def _node(lines: list[str], index: int) -> dict[str, int] | None:
    """node --test's closing block (`# tests 3`, `# pass 2`, ...), found from its last line."""
    if not NODE_RE.match(lines[index]):
        return None
    start = index
    while start > 0 and NODE_RE.match(lines[start - 1]):
        start -= 1
    block = dict(NODE_RE.match(line).groups() for line in lines[start:index + 1])  # type: ignore[union-attr]
    if not {"tests", "pass", "fail"} <= set(block) or not all(block[w].isdigit() for w in NODE_WORDS if w in block):
        return None
    counts = _empty()
    for word, key in NODE_WORDS.items():
        counts[key] += int(block.get(word, 0))
    return counts


def _cargo(lines: list[str]) -> dict[str, int] | None:
    matches = [m for m in map(CARGO_RE.match, lines) if m]
    if not matches:
        return None
    counts = _empty()
    for match in matches:
        counts["passed"] += int(match.group(1))
        counts["failed"] += int(match.group(2))
        counts["skipped"] += int(match.group(3))
    return counts


def _go(lines: list[str]) -> dict[str, int] | None:
    if not any(line.startswith("=== RUN") for line in lines):
        return None  # not -v: only failures are listed, so no honest count of what passed
    counts = _empty()
    for line in lines:
        match = GO_RE.match(line)
        if match:
            counts[GO_WORDS[match.group(1)]] += 1
    return counts


def counts_text(counts: dict[str, int] | None) -> str:
    """`2 failed, 615 passed, 3 skipped` (failures first, zeros left out); `no tests` when all are zero."""
    if counts is None:
        return ""
    order = ("failed", "errors", "passed", "skipped")
    parts = [f"{counts[key]} {'error' if key == 'errors' and counts[key] == 1 else key}"
             for key in order if counts.get(key)]
    return ", ".join(parts) or "no tests"
