"""Placeholder templates (`{{repo.path}}`, `{{log_dir}}`): the checks a workflow's and a repo's commands share.

A leaf: lib.config checks repos.json's "commands" with it and lib.workflows
checks workflows.json's steps; neither imports the other for it.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from lib.errors import clip

PLACEHOLDER_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
# `<<EOF`, `<<-EOF`, `<< 'EOF'`, `<<"EOF"`, `<<\EOF` (not `<<<`, a here-string: one word).
HEREDOC_RE = re.compile(r"""<<(-?)[ \t]*(?:'([^'\n]*)'|"([^"\n]*)"|\\?([^\s;&|<>()'"]+))""")
SUBSCRIPT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\[[^\]]*$")
SUBSTRING_RE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?:(?![-=?+])[^}]*$")
ARITHMETIC_TEST_RE = re.compile(r"\s-(eq|ne|lt|le|gt|ge)\s")
ASSIGNMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
LEADING_WORDS = {"!", "{", "if", "then", "do", "else", "elif", "while", "until", "time", "command", "builtin"}
DECLARE_WORDS = {"declare", "typeset", "local", "readonly", "export"}


def check_template(text: str, where: str, problems: list[str], fields: Iterable[str], in_shell: bool = True) -> None:
    """Append to `problems` what is wrong with a template: a variable other than `{{log_dir}}` or
    `{{repo.FIELD}}` (FIELD in `fields`), an unclosed `{{`, and (`in_shell`, a `run` command) a placeholder
    that would not reach the shell as one word (`_unsafe_spot`); a path (`cd`, `log_file`) only the first two."""
    fields = tuple(fields)
    for match in PLACEHOLDER_RE.finditer(text):
        variable = match.group(1)
        if variable != "log_dir" and not (variable.startswith("repo.") and variable[5:] in fields):
            problems.append(f"{where}: unknown variable {{{{{clip(variable)}}}}} "
                            f"(use {{{{log_dir}}}} or {{{{repo.FIELD}}}} with FIELD one of {', '.join(fields)})")
            continue
        unsafe = _unsafe_spot(text, match.start(), match.end()) if in_shell else None
        if unsafe:
            problems.append(f"{where}: {{{{{clip(variable)}}}}} {unsafe}")
    if "{{" in PLACEHOLDER_RE.sub("", text):
        problems.append(f"{where}: unclosed '{{{{' in {clip(repr(text))}")


def _unsafe_spot(text: str, start: int, end: int) -> str | None:
    """Why a placeholder at text[start:end] would not work as one word, or None.

    A placeholder runs as `"${ORCH_...}"`, which the shell expands without
    parsing the value. It would stay literal text inside single quotes or a
    here-document, it would be parsed again as code by a nested shell
    (`sh -c '...'{{x}}`), and bash evaluates it as code in arithmetic
    (`(( ))`, `let`, `[[ -eq ]]`, `declare -i`, subscripts). Best effort:
    `eval`, `sh -c {{x}}`, `ssh host {{x}}` and a variable later used in
    arithmetic parse the value again whatever we check.
    """
    quote = None
    in_comment = False
    word_start = True  # a `#` starts a comment only where a word could start
    pending: list[tuple[bool, str]] = []  # here-documents whose body starts at the next newline
    plain = [" "] * start  # the text before the placeholder with quoted, commented and here-document parts blanked
    i = 0
    while i < start:
        char = text[i]
        if in_comment:
            in_comment = char != "\n"
            word_start = True
        elif quote == "'":
            quote = None if char == "'" else quote
        elif char == "\\":
            i += 1
            word_start = False
        elif quote == '"':
            quote = None if char == '"' else quote
        elif char in "'\"":
            quote = char
            word_start = False
        elif char == "#" and word_start:
            in_comment = True
        elif text.startswith("<<<", i):
            i += 3  # a here-string: its word is an ordinary word
            word_start = True
            continue
        elif text.startswith("<<", i):
            match = HEREDOC_RE.match(text, i)
            if match:
                if match.end() > start:
                    return "is a here-document's delimiter; use a fixed word"
                pending.append((bool(match.group(1)), next(g for g in match.groups()[1:] if g is not None)))
                i = match.end()
                word_start = False
                continue
        else:
            word_start = char in " \t\n;&|()<>"
            plain[i] = char
        if char == "\n" and pending and quote is None:
            body_end = _here_documents_end(text, i + 1, pending)
            pending = []
            if body_end > start:
                return ("is inside a here-document, where it would stay literal text; pass it as an argument "
                        "(printf '%s\\n' {{...}} | cmd) instead")
            i = body_end
            word_start = True
            continue
        i += 1
    if in_comment:
        return None
    if quote == "'":
        return "is inside single quotes, where it would not be expanded"
    if quote == '"':
        return "is inside double quotes; remove them: each value is passed as one word already"
    arithmetic = _arithmetic_context("".join(plain), text, start, end)
    if arithmetic:
        return (f"is inside {arithmetic}: bash evaluates the value there as an arithmetic expression, "
                "which can run code")
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    if quote is None and (before in ("'", '"', "$") or after in ("'", '"')):
        return "is joined to a quoted word or a $ (a nested shell would parse it); leave it a separate word"
    return None


def _here_documents_end(text: str, index: int, pending: list[tuple[bool, str]]) -> int:
    """Where the bodies of `pending` here-documents, starting at `index`, end (past the last delimiter line)."""
    for strip_tabs, delimiter in pending:
        while index < len(text):
            newline = text.find("\n", index)
            line_end = len(text) if newline < 0 else newline
            line = text[index:line_end]
            index = line_end + 1
            if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                break
        else:
            return len(text) + 1
    return index


def _arithmetic_context(before: str, text: str, start: int, end: int) -> str | None:
    """The arithmetic construct a placeholder at text[start:end] sits in, or None.

    `before` is text[:start] with quoted parts blanked, so `echo '(('` opens nothing.
    """
    opened = before.rfind("((")
    if opened >= 0 and "))" not in before[opened:]:
        return "$(( ))" if before[opened - 1:opened] == "$" else "(( ))"
    bracket = before.rfind("$[")
    if bracket >= 0 and "]" not in before[bracket:]:
        return "$[ ]"
    if SUBSCRIPT_RE.search(before):
        return "an array subscript"
    if SUBSTRING_RE.search(before):
        return "a ${var:offset:length}"
    test = before.rfind("[[")
    if test >= 0 and "]]" not in before[test:]:
        closing = text.find("]]", end)
        if ARITHMETIC_TEST_RE.search(text[test:closing if closing >= 0 else len(text)]):
            return "[[ ... -eq ... ]] (-eq, -ne, -lt, -le, -gt and -ge compare arithmetic expressions)"
    words = re.split(r"[;&|()\n]", before)[-1].split()
    while words and (words[0] in LEADING_WORDS or ASSIGNMENT_RE.match(words[0])):
        words = words[1:]
    if words and words[0] == "let":
        return "let"
    if words and words[0] in DECLARE_WORDS and any(w.startswith("-") and "i" in w for w in words[1:]):
        return f"{words[0]} -i"
    return None
