"""The live progress line: item lines when asked, a count line that a fast scan does not flood."""
from __future__ import annotations

import io
import time

from lib.progress import REDRAW_EVERY, Progress


def test_a_count_line_is_redrawn_at_most_every_tenth_of_a_second_and_cleared_at_the_end():
    stream = io.StringIO()
    with Progress("scanning", 500, stream=stream, live=True, item_lines=False) as progress:
        for i in range(200):
            progress.finish(f"r{i}", f"r{i}")
        time.sleep(REDRAW_EVERY * 1.2)
        progress.finish("last", "last")
    drawn = stream.getvalue().count("scanning ")
    assert 1 <= drawn <= 4  # the first finish, the one after the pause, perhaps a tick
    assert "scanning 201/500" in stream.getvalue()
    assert stream.getvalue().endswith("\r\x1b[K")  # closed: the line is cleared


def test_item_lines_are_each_printed():
    stream = io.StringIO()
    with Progress("testing", 3, stream=stream, live=False) as progress:
        for name in ("a", "b", "c"):
            progress.finish(name, f"{name}: passed", failed=name == "b")
    assert stream.getvalue().splitlines() == ["[1/3] a: passed", "[2/3] b: passed", "[3/3] c: passed"]
    assert progress.failed == 1
