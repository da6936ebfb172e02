"""The tiny condition language of workflow steps, parsed (never eval'ed).

    condition := or ; or := and ("or" and)* ; and := not ("and" not)*
    not := "not" not | "(" condition ")" | operand [("==" | "!=") operand]
    operand := repo.FIELD | 'string' | "string"

A bare `repo.FIELD` is true when the field is set (non-empty, true).
Values compare as text: true/false for booleans, comma-joined lists.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Union

from lib.errors import clip

TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<op>==|!=|\(|\))
      | (?P<string>'[^']*'|"[^"]*")
      | (?P<field>repo\.[A-Za-z_][A-Za-z0-9_]*)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<other>\S)
    )""",
    re.VERBOSE,
)
KEYWORDS = {"and", "or", "not"}
# Parentheses and `not`s deeper than this are a config error (Python's own recursion limit is ~1000).
MAX_DEPTH = 50


class ConditionError(ValueError):
    """A condition that does not parse; the message says where and why."""


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Literal:
    value: str


@dataclass(frozen=True)
class Compare:
    left: Field | Literal
    op: str
    right: Field | Literal


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class BoolOp:
    op: str
    operands: tuple[Node, ...]


Node = Union[Field, Compare, Not, BoolOp]


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens = []
    for match in TOKEN_RE.finditer(text):
        kind = match.lastgroup
        if kind is None:
            continue
        value = match.group(kind)
        if kind == "word":
            if value not in KEYWORDS:
                raise ConditionError(f"unknown word {clip(repr(value))} (use repo.FIELD, 'text', ==, !=, and, or, not)")
            kind = value
        elif kind == "other":
            raise ConditionError(f"unexpected character {value!r}")
        tokens.append((kind, value))
    return tokens


class _Parser:
    def __init__(self, text: str, fields: set[str]) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.fields = fields
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise ConditionError("ends too early")
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self) -> Node:
        if not self.tokens:
            raise ConditionError("is empty")
        node = self.or_()
        if self.pos != len(self.tokens):
            raise ConditionError(f"unexpected {clip(repr(self.tokens[self.pos][1]))}")
        return node

    def or_(self) -> Node:
        parts = [self.and_()]
        while self.peek() == "or":
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def and_(self) -> Node:
        parts = [self.not_()]
        while self.peek() == "and":
            self.take()
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def not_(self) -> Node:
        if self.peek() == "not" or (self.peek() == "op" and self.tokens[self.pos][1] == "("):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ConditionError(f"is nested more than {MAX_DEPTH} deep (parentheses and not)")
            try:
                return self.nested()
            finally:
                self.depth -= 1
        return self.comparison()

    def nested(self) -> Node:
        if self.take()[0] == "not":
            return Not(self.not_())
        node = self.or_()
        kind, value = self.take()
        if value != ")":
            raise ConditionError(f"expected ')' but found {clip(repr(value))}")
        return node

    def comparison(self) -> Node:
        left = self.operand()
        if self.peek() == "op" and self.tokens[self.pos][1] in ("==", "!="):
            _, op = self.take()
            return Compare(left, op, self.operand())
        if isinstance(left, Literal):
            raise ConditionError(f"a bare string ({clip(repr(left.value))}) is not a condition; "
                                 "compare it with == or !=")
        return left

    def operand(self) -> Field | Literal:
        kind, value = self.take()
        if kind == "string":
            return Literal(value[1:-1])
        if kind == "field":
            name = value.split(".", 1)[1]
            if name not in self.fields:
                raise ConditionError(f"unknown field {clip(repr(value))} (fields: {', '.join(sorted(self.fields))})")
            return Field(name)
        raise ConditionError(f"expected repo.FIELD or a quoted string but found {clip(repr(value))}")


def parse_condition(text: str, fields: set[str]) -> Node:
    return _Parser(text, fields).parse()


def evaluate(node: Node, lookup: Callable[[str], Any]) -> bool:
    if isinstance(node, Field):
        return as_text(lookup(node.name)) not in ("", "false")
    if isinstance(node, Compare):
        left, right = (as_text(lookup(o.name)) if isinstance(o, Field) else o.value for o in (node.left, node.right))
        return (left == right) == (node.op == "==")
    if isinstance(node, Not):
        return not evaluate(node.operand, lookup)
    results = (evaluate(o, lookup) for o in node.operands)
    return any(results) if node.op == "or" else all(results)
