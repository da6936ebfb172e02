"""The condition language: a table of inputs, parsed never eval'ed."""
from __future__ import annotations

import pytest

from lib.conditions import ConditionError, evaluate, parse_condition

FIELDS = {"language", "name", "tags", "has_claude_md", "host"}
REPO = {"language": "go", "name": "staking", "tags": ("a", "b"), "has_claude_md": True, "host": None}


@pytest.mark.parametrize("text,expected", [
    ("repo.language == 'go'", True),
    ('repo.language == "go"', True),
    ("repo.language != 'go'", False),
    ("'go' == repo.language", True),
    ("repo.language == 'go' and repo.name == 'staking'", True),
    ("repo.language == 'js' or repo.name == 'staking'", True),
    ("not repo.language == 'go'", False),
    ("not (repo.language == 'js' or repo.name == 'x')", True),
    ("repo.language == 'js' or repo.language == 'go' and repo.name == 'nope'", False),
    ("(repo.language == 'js' or repo.language == 'go') and repo.name == 'staking'", True),
    ("repo.has_claude_md", True),
    ("repo.has_claude_md == 'true'", True),
    ("repo.host", False),
    ("repo.tags == 'a,b'", True),
    ("repo.name == 'staking and not'", False),
    ("repo.name != 'staking and not'", True),
])
def test_conditions_evaluate(text, expected):
    assert evaluate(parse_condition(text, FIELDS), REPO.get) is expected


@pytest.mark.parametrize("text,message", [
    ("", "is empty"),
    ("repo.language = 'go'", "unexpected character '='"),
    ("repo.language == 'go' and", "ends too early"),
    ("repo.colour == 'red'", "unknown field 'repo.colour'"),
    ("__import__('os').system('x')", "unknown word"),
    ("repo.language == 'go')", "unexpected ')'"),
    ("(repo.language == 'go'", "ends too early"),
    ("'go'", "a bare string"),
    ("repo.language == go", "unknown word 'go'"),
    ("repo.language == 'go' 'x'", "unexpected"),
    ("1 == 1", "unexpected character '1'"),
])
def test_bad_conditions_say_why(text, message):
    with pytest.raises(ConditionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_condition(text, FIELDS)


@pytest.mark.parametrize("text", [
    "(" * 400 + "repo.name" + ")" * 400,
    "not " * 400 + "repo.name",
    "(not " * 300 + "repo.name" + ")" * 300,
], ids=["parentheses", "not", "mixed"])
def test_deep_nesting_is_a_condition_error_not_a_crash(text):
    with pytest.raises(ConditionError, match=r"nested more than \d+ deep"):
        parse_condition(text, FIELDS)


def test_nesting_within_the_limit_still_works():
    assert evaluate(parse_condition("(" * 30 + "not not repo.name" + ")" * 30, FIELDS), REPO.get) is True


def test_a_huge_value_in_an_error_is_cut_with_a_mark():
    with pytest.raises(ConditionError) as caught:
        parse_condition("repo.name == 'x' '" + "y" * 1_000_000 + "'", FIELDS)
    with pytest.raises(ConditionError) as caught_word:
        parse_condition("repo.name == " + "w" * 1_000_000, FIELDS)
    for err in (caught.value, caught_word.value):
        assert len(str(err)) < 400 and "characters cut]" in str(err)
