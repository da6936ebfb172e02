"""`inv test-all` and scripts/run_all_tests.py print through one lib function: the same lines, streams and exit."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lib.batch import Outcome, RunStatus
from lib import testall
from lib.testall import TestAllAnswer, printout
from tests.conftest import run_script

SUITE = "test:\n\t@echo '1 passed in 0.01s'\n"
FAILING = "test:\n\t@echo '1 failed in 0.01s'; exit 1\n"


def outcome(repo: str, status: RunStatus) -> Outcome:
    return Outcome(repo, "make", status, 0 if status == RunStatus.PASSED else 1, 0.5, "make test", None, "",
                   "2026-12-06T00:00:00+00:00")


def test_a_reports_printout_is_its_table_and_summary_then_its_notes_and_its_exit_code():
    report = testall.TestAllReport([outcome("a", RunStatus.PASSED), outcome("b", RunStatus.FAILED)], 1.25,
                           Path("/state/test-results.json"), ["warning: JUnit report not written to x: denied"])
    shown = printout(TestAllAnswer([], report), as_json=False)
    assert shown.out[-1] == "tested 2 repos in 1.2s: 1 passed, 1 failed -> /state/test-results.json"
    assert "FAILED" in shown.out[0].upper() and len(shown.out) == 2
    assert (shown.err, shown.code) == (["warning: JUnit report not written to x: denied"], 1)
    as_json = printout(TestAllAnswer([], report), as_json=True)
    assert json.loads("\n".join(as_json.out)) == report.to_json() and as_json.code == 1
    assert as_json.err == report.notes


def test_lines_and_a_document_are_printed_as_they_are_and_exit_0():
    assert printout(TestAllAnswer(["nothing to test"], document={"note": "nothing to test"}), as_json=False) \
        == printout(TestAllAnswer(["nothing to test"]), as_json=False)
    shown = printout(TestAllAnswer(["nothing to test"], document={"note": "nothing to test"}), as_json=True)
    assert (json.loads("\n".join(shown.out)), shown.err, shown.code) == ({"note": "nothing to test"}, [], 0)


def normalized(text: str) -> str:
    """Without durations and the progress counter (the repos finish in either order)."""
    return re.sub(r"\[\d+/\d+\] ", "", re.sub(r"\d+\.\d+s", "Ns", text))


@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_both_front_doors_print_the_same_warnings_table_summary_and_exit(home, make_repo, inv, tmp_path, as_json):
    good, bad = make_repo("good", {"Makefile": SUITE}), make_repo("bad", {"Makefile": FAILING})
    home.add(good, bad, language="make")
    results = home.path / "state" / "test-results.json"
    doors = {}
    for door in ("inv", "script"):
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text("{not json")  # set aside before the run, with a warning
        args = as_json
        if door == "inv":
            done = inv("test-all", *args)
            doors[door] = (done.code, done.out, done.err)
        else:
            run = run_script("run_all_tests.py", *args, cwd=tmp_path)
            doors[door] = (run.returncode, run.stdout, run.stderr)
        for aside in results.parent.glob("test-results.json.*"):
            aside.unlink()
    code, out, err = doors["inv"]
    assert code == 1 and err.startswith("warning: ") and "set aside" in err, err
    script_code, script_out, script_err = doors["script"]
    assert err.splitlines()[0] == script_err.splitlines()[0]  # the warning before the run, then its progress
    assert (code, sorted(normalized(err).splitlines())) == (script_code, sorted(normalized(script_err).splitlines()))
    if as_json:
        assert without_times(out) == without_times(script_out)
    else:
        assert normalized(out) == normalized(script_out)


def without_times(text: str) -> dict:
    document = json.loads(text)
    return {**document, "duration_s": 0,
            "results": [{**r, "duration_s": 0, "finished_at": ""} for r in document["results"]]}
