"""Proof workers' logs: one capped log per issue and try (head, cut mark, tail), the worker's log as their index,
and the verbs that show a run: `attach`, `logs [--follow]`, `diff [--stat]`."""
from __future__ import annotations

import os
import re
import shlex
import sys
import tracemalloc
from pathlib import Path

from workers_fixtures import project, retry_until, tmux_socket  # noqa: F401

from lib import logcut
from orchestrator.monitor import monitor
from orchestrator.run import open_run

MiB = 1024 * 1024
MARK = re.compile(r"^\[\.\.\. (\d+) bytes cut here \(the log's first (\d+) bytes, then its last ones: capped at "
                  r"(\d+) bytes, max_log_bytes\)\]$", re.M)

# An agent that prints FLOOD_MB of numbered lines at full speed, then its last words; then as the script says for
# this issue and try: "fail" (exit 3, nothing committed), "commit" (commit and exit 0), "hang" (print a line a
# second until killed), "quiet" (commit without the flood).
FLOOD_AGENT = r'''
import os, subprocess, sys, time
from pathlib import Path
script, number, stage = sys.argv[1], sys.argv[2], sys.argv[3]
runs = Path(script).parent / "runs"
runs.mkdir(exist_ok=True)
count = runs / f"{number}.count"
attempt = int(count.read_text()) if count.exists() else 0
count.write_text(str(attempt + 1))
plan = Path(script).read_text().split()
behaviour = plan[attempt] if attempt < len(plan) else "commit"
out = sys.stdout.buffer
size = int(float(os.environ.get("FLOOD_MB", "80")) * 1024 * 1024) if behaviour != "quiet" else 0
line = 0
written = 0
while written < size:
    block = b"".join(b"%s try %d flood line %09d %s\n" % (stage.encode(), attempt, line + i, b"x" * 60)
                     for i in range(2000))
    line += 2000
    out.write(block)
    written += len(block)
out.write(b"last words of %s try %d: %s\n" % (stage.encode(), attempt, behaviour.encode()))
out.flush()
if behaviour == "fail":
    print("error: the real cause", flush=True)
    sys.exit(3)
if behaviour == "hang":
    n = 0
    while True:
        print(f"still working {n}", flush=True)
        n += 1
        time.sleep(0.2)
Path(f"work-{number}.txt").open("a").write(f"{stage}\n")
git = ["git", "-c", "user.name=Agent", "-c", "user.email=agent@example.com"]
subprocess.run([*git, "add", "-A"], check=True)
subprocess.run([*git, "commit", "-q", "-m", f"{stage} #{number}"], check=True)
'''


def flood_project(project, tmp_path: Path, plan: list[str], mb: float = 80, **settings):
    agent = tmp_path / "flood_agent.py"
    agent.write_text(FLOOD_AGENT)
    script = tmp_path / "flood-plan.txt"
    script.write_text(" ".join(plan))
    command = (f"FLOOD_MB={mb} exec {shlex.quote(os.path.realpath(sys.executable))} {shlex.quote(str(agent))} "
               f"{shlex.quote(str(script))} {{{{issue.number}}}} {{{{stage}}}}")
    return project([{"number": 1, "title": "flood"}], agent_command=command, agent="command", num_workers=1,
                   **{"pipeline": ["implement", "review"], "stall_timeout": 60, "wall_clock_timeout": 600,
                      **settings})


def kept_and_cut(text: str) -> tuple[int, int]:
    """(bytes of output kept, bytes the mark says were cut) of a log with one mark."""
    marks = MARK.findall(text)
    assert len(marks) == 1, marks
    line = MARK.search(text).group(0) + "\n"
    return len(text.encode()) - len(line.encode()), int(marks[0][0])


# --- the capped log itself -------------------------------------------------------------------------------------

def test_a_capped_log_never_passes_its_cap_while_100_mb_are_written_and_keeps_head_mark_and_tail(tmp_path):
    """100 MiB at full speed into a 50 MiB log: after every write the file is within its cap, memory stays at a
    copy buffer, and the end holds the first lines, one mark saying how much was cut, and the last lines."""
    path = tmp_path / "try.log"
    block = b"".join(b"line %09d %s\n" % (n, b"y" * 50) for n in range(1000))
    total = 0
    tracemalloc.start()
    try:
        with logcut.CappedLog(path, logcut.DEFAULT_LOG_CAP) as log:
            while total < 100 * MiB:
                log.write(block)
                total += len(block)
                assert path.stat().st_size <= logcut.DEFAULT_LOG_CAP
            log.write(b"the last line\n")
            total += len(b"the last line\n")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, peak
    text = path.read_text()
    assert path.stat().st_size <= logcut.DEFAULT_LOG_CAP
    assert text.startswith("line 000000000 ") and text.endswith("y\nthe last line\n")
    kept, cut = kept_and_cut(text)
    assert kept + cut == total  # nothing made up, nothing lost but what the mark counts
    assert not list(tmp_path.glob(".*.cut"))


def test_a_capped_log_reopened_past_its_cut_goes_on_with_the_same_mark(tmp_path):
    """A try resumed with the same files appends to its log: the mark is found again and keeps the count."""
    path = tmp_path / "try.log"
    total = 0
    for _ in range(3):
        with logcut.CappedLog(path, logcut.MIN_LOG_CAP) as log:
            for n in range(3000):
                line = f"entry {n} of a resumed try\n".encode()
                log.write(line)
                total += len(line)
        assert path.stat().st_size <= logcut.MIN_LOG_CAP
    kept, cut = kept_and_cut(path.read_text())
    assert kept + cut == total


def test_a_line_that_looks_like_the_mark_is_not_taken_for_it(tmp_path):
    """An agent printing a mark of its own (in the head) does not fool the count of a later cut."""
    path = tmp_path / "try.log"
    fake = b"[... 5 bytes cut here (the log's first 0 bytes, then its last ones: capped at 1 bytes, max_log_bytes)]\n"
    total = 0
    with logcut.CappedLog(path, logcut.MIN_LOG_CAP) as log:
        for n in range(4000):
            line = fake if n % 100 == 0 else f"entry {n}\n".encode()
            log.write(line)
            total += len(line)
    with logcut.CappedLog(path, logcut.MIN_LOG_CAP) as log:
        log.write(b"more\n" * 5000)
        total += 5 * 5000
    text = path.read_text()
    layout = logcut.read_layout(open(path, "rb"), logcut.MIN_LOG_CAP)
    assert layout is not None
    start, length, cut = layout
    assert len(text.encode()) - length + cut == total


# --- the wrapper's logs in a run ---------------------------------------------------------------------------------

def test_an_agent_printing_80_mb_per_stage_leaves_capped_logs_per_issue_and_try_and_loses_nothing_else(
        project, tmp_path):
    """#1's first try floods 80 MiB and fails, its retry floods and commits, its review floods and commits: each
    try has its own log under logs/issue-1/, within the cap, with its head, one mark and its tail (the EXIT line
    with the exit code); the worker's log only indexes them; the retry's prompt has the failed try's last words."""
    proj = flood_project(project, tmp_path, ["fail", "commit", "commit"])
    lines: list[str] = []

    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lines.append)

    assert failed == 0, lines
    assert proj.issue(1)["status"] == "completed"
    logs = proj.state / "logs"
    tries = sorted((logs / "issue-1").glob("*.log"))
    assert [p.name for p in tries] == ["worker-1-try-1.log", "worker-1-try-2.log", "worker-1-try-3.log"]
    for path, stage, attempt, code in zip(tries, ("implement", "implement", "review"), (0, 1, 2), (3, 0, 0)):
        assert path.stat().st_size <= logcut.DEFAULT_LOG_CAP
        text = path.read_text()
        first, second = text.splitlines()[:2]
        assert first.startswith(f"=== START worker-1 try {path.stem[-1]} issue #1 stage {stage}")
        assert second.startswith(f"{stage} try {attempt} flood line 000000000 ")
        kept, cut = kept_and_cut(text)
        assert cut > 30 * MiB
        ending = text.splitlines()[-3:]
        behaviour = "fail" if code else "commit"
        assert ending[0] == f"last words of {stage} try {attempt}: {behaviour}" or \
            ending[1] == f"last words of {stage} try {attempt}: {behaviour}"
        assert ending[-1].startswith(f"=== EXIT code {code} worker-1 try {path.stem[-1]} issue #1")
    index = (logs / "worker-1.log").read_text().splitlines()
    assert len(index) == 6 and all(line.startswith(("=== START", "=== EXIT")) for line in index)
    assert all(f"log {tries[n // 2]}" in line for n, line in enumerate(index))
    assert [line.split()[3] for line in index if "EXIT" in line] == ["3", "0", "0"]
    retry_prompt = (proj.state / "prompts" / "worker-1-try-2.md").read_text()
    assert "error: the real cause" in retry_prompt and "exit code 3" in retry_prompt


def test_max_log_bytes_is_validated_and_used_by_every_try(project, tmp_path, capsys):
    """A bad max_log_bytes is a config error (one line, exit 2); a good one caps each try's log."""
    import json

    from orchestrator.cli import main

    proj = flood_project(project, tmp_path, ["commit", "commit"], mb=1, max_log_bytes=64 * 1024)
    good = proj.config.read_text()
    for bad in (1000, -5, "big", 1.5e6, True, None):
        proj.config.write_text(json.dumps({**json.loads(good), "max_log_bytes": bad}))
        assert main(["status"]) == 2
        err = capsys.readouterr().err
        assert "max_log_bytes: must be" in err and len(err.splitlines()) == 1, err
    proj.config.write_text(good)

    failed = monitor(open_run(), cycle=0.2, no_delay=True, say=lambda _: None)

    assert failed == 0
    tries = sorted((proj.state / "logs" / "issue-1").glob("*.log"))
    assert len(tries) == 2
    for path in tries:
        assert path.stat().st_size <= 64 * 1024
        kept, cut = kept_and_cut(path.read_text())
        assert kept + cut > 1024 * 1024
