"""Agent kinds: each one's structured-output command, how its events read (a line per event, a running tally).

Standard library only: the wrapper imports it. Event formats: Claude Code's `--output-format stream-json
--verbose` (system init / api_retry, assistant and user messages, result), `codex exec --json` (thread.started,
turn.*, item.*, error) and Gemini CLI's `--output-format stream-json` (init, message, tool_use, tool_result,
error, result). A line that is not a JSON object is kept as `{"type": "stdout", "text": ...}`.
"""
from __future__ import annotations

import json
import re
from typing import Any

KINDS = ("claude", "codex", "gemini", "command")
STRUCTURED = ("claude", "codex", "gemini")
# The command each kind runs when the config names the kind and no agent_command (prompt from its file).
DEFAULT_COMMANDS = {
    "claude": "claude -p --output-format stream-json --verbose --dangerously-skip-permissions < {{prompt_file}}",
    "codex": "codex exec --json --full-auto - < {{prompt_file}}",
    "gemini": "gemini --output-format stream-json --yolo < {{prompt_file}}",
}
RESUMABLE_KINDS = ("claude",)  # `--resume <session_id>` continues a session in print mode
RATE_STATUSES = (429, 529)
AUTH_STATUSES = (401, 403)
LINE_CLIP = 300
LOGIN_HINTS = {"claude": "run claude /login", "codex": "run codex login", "gemini": "run gemini and sign in"}
# A usage limit's reset time as Claude Code reports it: "... usage limit reached|<epoch seconds>".
RESET_EPOCH = re.compile(r"limit reached\|(\d{9,11})\b")


def new_state(kind: str) -> dict[str, Any]:
    """A try's agent as the status shows it (`agent` in status --json), before any event."""
    return {"kind": kind, "session_id": None, "turns": 0, "cost_usd": 0.0, "tokens_in": 0, "tokens_out": 0,
            "last_event_at": None, "last_tool": None, "rate_limited": None, "result": None,
            "error_status": None, "error_text": None, "last_message": None}


# What each member of a tally holds (new_state's, resumed_state's, codex's `replied`), None aside.
MEMBER_KINDS: dict[str, tuple[type, ...]] = {
    "kind": (str,), "session_id": (str,), "turns": (int,), "cost_usd": (int, float), "tokens_in": (int,),
    "tokens_out": (int,), "last_event_at": (str,), "last_tool": (str,), "rate_limited": (dict,), "result": (dict,),
    "error_status": (int,), "error_text": (str,), "last_message": (str,), "replied": (bool,),
    "cost_base": (int, float), "base_session": (str,), "session_cost_usd": (int, float)}
# Members the events add to (a re-read of the stream from its start counts them again).
COUNTED = {"turns": 0, "tokens_in": 0, "tokens_out": 0, "last_message": None}


def sane_state(value: Any) -> dict[str, Any]:
    """A tally as a worker record kept it, its members of another kind (a hand edit) as none: a value that is no
    tally is {}, a member that holds what it never does, or is missing from a tally of a known kind, is its
    new_state value (dropped when it has none): the folds add to every member new_state has."""
    if not isinstance(value, dict):
        return {}
    kind = value.get("kind")
    blank = new_state(kind) if isinstance(kind, str) else {}
    state = {**blank, **value}
    for key, kinds in MEMBER_KINDS.items():
        member = state.get(key)
        if member is not None and (not isinstance(member, kinds) or isinstance(member, bool) and bool not in kinds):
            if key in blank:
                state[key] = blank[key]
            else:
                del state[key]
    return state


def recounted(state: dict[str, Any]) -> dict[str, Any]:
    """The tally to fold a try's whole event stream into again: what the events add to starts over, what they set
    (its session and the cost base it resumed from, a result) stays."""
    return {**state, **COUNTED} if state else state


PUBLIC_KEYS = ("kind", "session_id", "turns", "cost_usd", "tokens_in", "tokens_out", "last_event_at", "last_tool",
               "rate_limited", "result")


def public(state: dict[str, Any]) -> dict[str, Any]:
    return {key: state.get(key) for key in PUBLIC_KEYS}


# Lines that start so change no tally (Claude's tool results echo whole files): the probe skips them unparsed.
UNTALLIED_PREFIXES = {"claude": (b'{"type":"user"', b'{"type": "user"'), "gemini": (b'{"type":"tool_result"',
                                                                                   b'{"type": "tool_result"')}


def tallied(kind: str, line: bytes) -> bool:
    return not line.startswith(UNTALLIED_PREFIXES.get(kind, ()))


def parse_line(line: bytes) -> tuple[dict[str, Any], bool]:
    """One line of the agent's stdout as (event, whether the line was a JSON object): its object, or a `stdout`
    event holding the text."""
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):  # nested too deep for json: kept as text, never a dead pump
            doc = None
        if isinstance(doc, dict):
            return doc, True
    return {"type": "stdout", "text": text}, False


def _one_line(value: Any, limit: int = LINE_CLIP) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _first_argument(arguments: Any) -> str:
    if isinstance(arguments, dict) and arguments:
        return _one_line(next(iter(arguments.values())), 120)
    return _one_line(arguments, 120) if arguments else ""


def _tool(name: Any, arguments: Any) -> str:
    first = _first_argument(arguments)
    return f"{name}: {first}" if first else str(name)


def _num(value: Any) -> float:
    """A count or cost as reported: a finite number >= 0, else 0 (NaN, a negative cost or a string count no tally)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value)
    return 0.0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def describe(kind: str, event: dict[str, Any]) -> list[str]:
    """Readable lines for one event (text, a tool and its first argument, results, errors); [] for noise."""
    kind_of = event.get("type")
    if kind_of == "stdout":
        return [_one_line(event.get("text", ""), 2000)] if str(event.get("text", "")).strip() else []
    if kind == "claude":
        return _describe_claude(event)
    if kind == "codex":
        return _describe_codex(event)
    if kind == "gemini":
        return _describe_gemini(event)
    return []


def _describe_claude(event: dict[str, Any]) -> list[str]:
    kind_of, subtype = event.get("type"), event.get("subtype")
    if kind_of == "system" and subtype == "init":
        return [f"session {event.get('session_id')} (model {event.get('model')})"]
    if kind_of == "system" and subtype == "api_retry":
        delay = _num(event.get("retry_delay_ms")) / 1000
        return [f"API retry {event.get('attempt')}/{event.get('max_retries')}: {event.get('error_status')} "
                f"{event.get('error')}, next in {delay:.1f}s"]
    message = event.get("message") if isinstance(event.get("message"), dict) else {}
    content = message.get("content") if isinstance(message.get("content"), list) else []
    lines = []
    if kind_of == "assistant":
        if event.get("error"):
            lines.append(f"error: {event.get('error')} ({event.get('api_error_status')})")
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text" and str(block.get("text", "")).strip():
                lines.append(f"assistant: {_one_line(block['text'])}")
            elif block.get("type") == "tool_use":
                lines.append(f"tool {_tool(block.get('name'), block.get('input'))}")
    elif kind_of == "user":
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                mark = "tool error" if block.get("is_error") else "result"
                lines.append(f"{mark}: {_one_line(block.get('content', ''), 160)}")
    elif kind_of == "result":
        lines.append(f"RESULT {subtype}{' (error)' if event.get('is_error') else ''}: {event.get('num_turns')} "
                     f"turns, ${_num(event.get('total_cost_usd')):.4f}, {event.get('terminal_reason')}: "
                     f"{_one_line(event.get('result', ''), 200)}")
    return lines


def _describe_codex(event: dict[str, Any]) -> list[str]:
    kind_of = event.get("type")
    item = event.get("item") if isinstance(event.get("item"), dict) else {}
    if kind_of == "thread.started":
        return [f"session {event.get('thread_id')}"]
    if kind_of == "item.started" and item.get("type") == "command_execution":
        return [f"tool shell: {_one_line(item.get('command', ''), 120)}"]
    if kind_of == "item.started" and item.get("type") == "mcp_tool_call":
        return [f"tool {_tool(item.get('tool'), item.get('arguments'))}"]
    if kind_of == "item.completed":
        if item.get("type") == "agent_message":
            return [f"assistant: {_one_line(item.get('text', ''))}"]
        if item.get("type") == "command_execution":
            return [f"result (exit {item.get('exit_code')}): {_one_line(item.get('aggregated_output', ''), 160)}"]
        if item.get("type") == "file_change":
            return [f"tool edit: {_one_line([c.get('path') for c in item.get('changes', []) if isinstance(c, dict)])}"]
        if item.get("type") == "error":
            return [f"error: {_one_line(item.get('message', ''))}"]
    if kind_of == "turn.completed":
        usage = event.get("usage") if isinstance(event.get("usage"), dict) else {}
        return [f"turn done: {usage.get('input_tokens')} tokens in, {usage.get('output_tokens')} out"]
    if kind_of == "turn.failed":
        error = event.get("error") if isinstance(event.get("error"), dict) else {}
        return [f"error: turn failed: {_one_line(error.get('message', ''))}"]
    if kind_of == "error":
        return [f"error: {_one_line(event.get('message', ''))}"]
    return []


def _describe_gemini(event: dict[str, Any]) -> list[str]:
    kind_of = event.get("type")
    if kind_of == "init":
        return [f"session {event.get('session_id') or event.get('sessionId')} (model {event.get('model')})"]
    if kind_of == "message" and event.get("role") == "assistant" and str(event.get("content", "")).strip():
        return [f"assistant: {_one_line(event.get('content', ''))}"]
    if kind_of == "tool_use":
        return [f"tool {_tool(event.get('tool_name'), event.get('parameters'))}"]
    if kind_of == "tool_result":
        mark = "tool error" if event.get("status") == "error" else "result"
        return [f"{mark}: {_one_line(event.get('output') or event.get('error') or '', 160)}"]
    if kind_of == "error":
        return [f"error: {_one_line(event.get('message', ''))}"]
    if kind_of == "result":
        stats = event.get("stats") if isinstance(event.get("stats"), dict) else {}
        return [f"RESULT {event.get('status')}: {stats.get('total_tokens')} tokens, "
                f"{stats.get('tool_calls')} tool calls"]
    return []


def fold(state: dict[str, Any], event: dict[str, Any], at: str) -> None:
    """Take one event into the try's tally (turns, cost, tokens, last tool, rate limit, result)."""
    state["last_event_at"] = at
    kind = state.get("kind")
    if event.get("type") == "stdout":
        text = str(event.get("text", ""))
        if "Not logged in" in text or "Please run /login" in text:  # the CLI's words, not any /login path
            state["error_status"], state["error_text"] = 401, _one_line(text, 200)
        return
    if kind == "claude":
        _fold_claude(state, event)
    elif kind == "codex":
        _fold_codex(state, event)
    elif kind == "gemini":
        _fold_gemini(state, event)


def _fold_claude(state: dict[str, Any], event: dict[str, Any]) -> None:
    kind_of, subtype = event.get("type"), event.get("subtype")
    if isinstance(event.get("session_id"), str) and event["session_id"]:
        state["session_id"] = event["session_id"]
    if kind_of == "system" and subtype == "api_retry":
        status = event.get("error_status")
        state["rate_limited"] = {"attempt": _int(event.get("attempt")), "max": _int(event.get("max_retries")),
                                 "status": status if isinstance(status, int) else None,
                                 "retry_in_s": round(_num(event.get("retry_delay_ms")) / 1000, 1)}
        state["error_status"] = status if isinstance(status, int) else state.get("error_status")
        state["error_text"] = _one_line(event.get("error", ""), 200)
        if status not in RATE_STATUSES and event.get("error") not in ("rate_limit", "overloaded"):
            state["rate_limited"] = None  # a retry for another reason (a 500, a 401) is no rate limit
        return
    if kind_of == "assistant":
        if event.get("error"):
            status = event.get("api_error_status")
            state["error_status"] = status if isinstance(status, int) else state.get("error_status")
            state["error_text"] = _one_line(event.get("error"), 200)
            return
        message = event.get("message") if isinstance(event.get("message"), dict) else {}
        # a model call went through: earlier retries and their errors are over
        state["rate_limited"] = state["error_status"] = state["error_text"] = None
        if message.get("id") != state.get("last_message"):
            state["last_message"] = message.get("id")
            state["turns"] += 1
            usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
            state["tokens_in"] += _int(usage.get("input_tokens")) + _int(usage.get("cache_read_input_tokens")) + \
                _int(usage.get("cache_creation_input_tokens"))
            state["tokens_out"] += _int(usage.get("output_tokens"))
        for block in message.get("content") or []:
            if isinstance(block, dict) and block.get("type") == "tool_use":
                state["last_tool"] = _tool(block.get("name"), block.get("input"))
        return
    if kind_of == "result":
        usage = event.get("usage") if isinstance(event.get("usage"), dict) else {}
        state["turns"] = _int(event.get("num_turns")) or state["turns"]
        # A resumed session's total_cost_usd goes on from what it cost before the resume (cost_base, already
        # counted in the earlier tries): this try's own cost is the rest. A total below the base is a session
        # whose earlier cost the CLI did not restore: all of it is this try's.
        total = _num(event.get("total_cost_usd"))
        # the base holds only for the session it was taken from (a resume that started a new session is all new)
        base = _num(state.get("cost_base")) if state.get("base_session") == event.get("session_id") else 0.0
        state["session_cost_usd"] = round(total, 6)
        state["cost_usd"] = round(total - base if total >= base else total, 6)
        if usage:
            state["tokens_in"] = _int(usage.get("input_tokens")) + _int(usage.get("cache_read_input_tokens")) + \
                _int(usage.get("cache_creation_input_tokens"))
            state["tokens_out"] = _int(usage.get("output_tokens"))
        state["result"] = {"subtype": event.get("subtype"), "is_error": event.get("is_error") is not False,
                           "terminal_reason": event.get("terminal_reason")}
        status = event.get("api_error_status")
        if isinstance(status, int):
            state["error_status"] = status
        if event.get("is_error") is not False:
            state["error_text"] = _one_line(event.get("result", ""), 300)
        else:
            state["rate_limited"] = None


def _limit_text(text: str) -> int | None:
    lowered = text.lower()
    if "429" in lowered or "rate limit" in lowered or "rate_limit" in lowered or "usage limit" in lowered \
            or "quota" in lowered:
        return 429
    if "401" in lowered or "unauthorized" in lowered or "not logged in" in lowered or "api key" in lowered:
        return 401
    return None


def _fold_codex(state: dict[str, Any], event: dict[str, Any]) -> None:
    kind_of = event.get("type")
    item = event.get("item") if isinstance(event.get("item"), dict) else {}
    if kind_of in ("thread.started", "thread.resumed") and isinstance(event.get("thread_id"), str):
        state["session_id"] = event["thread_id"]
    elif kind_of == "turn.started":
        state["turns"] += 1
    elif kind_of == "item.started" and item.get("type") == "command_execution":
        state["last_tool"] = f"shell: {_one_line(item.get('command', ''), 120)}"
        state["rate_limited"] = None
    elif kind_of == "item.started" and item.get("type") == "mcp_tool_call":
        state["last_tool"] = _tool(item.get("tool"), item.get("arguments"))
    elif kind_of == "item.completed" and item.get("type") == "agent_message":
        state["rate_limited"] = None
        state["replied"] = True
    elif kind_of == "turn.completed":
        state["replied"] = True  # a turn that completed worked on its input, reply or not
        usage = event.get("usage") if isinstance(event.get("usage"), dict) else {}
        state["tokens_in"] += _int(usage.get("input_tokens"))
        state["tokens_out"] += _int(usage.get("output_tokens"))
        state["result"] = {"subtype": "success", "is_error": False, "terminal_reason": "completed"}
    elif kind_of in ("turn.failed", "error"):
        error = event.get("error") if isinstance(event.get("error"), dict) else {}
        text = str(error.get("message") or event.get("message") or "")
        state["error_text"] = _one_line(text, 300)
        state["error_status"] = _limit_text(text) or state.get("error_status")
        if state["error_status"] in RATE_STATUSES and kind_of == "error":
            state["rate_limited"] = {"attempt": _int((state["rate_limited"] or {}).get("attempt")) + 1, "max": None,
                                     "status": 429, "retry_in_s": None}
        if kind_of == "turn.failed":
            state["result"] = {"subtype": "error", "is_error": True, "terminal_reason": "turn_failed"}


def _fold_gemini(state: dict[str, Any], event: dict[str, Any]) -> None:
    kind_of = event.get("type")
    if kind_of == "init":
        session = event.get("session_id") or event.get("sessionId")
        state["session_id"] = session if isinstance(session, str) else state["session_id"]
    elif kind_of == "message" and event.get("role") == "assistant":
        state["rate_limited"] = None
        if not state.get("last_message"):
            state["last_message"] = "assistant"
            state["turns"] += 1
    elif kind_of == "tool_use":
        state["last_message"] = None  # the next assistant message is a new turn
        state["last_tool"] = _tool(event.get("tool_name"), event.get("parameters"))
    elif kind_of == "error":
        text = str(event.get("message", ""))
        state["error_text"] = _one_line(text, 300)
        state["error_status"] = _limit_text(text) or state.get("error_status")
        if state["error_status"] in RATE_STATUSES:
            state["rate_limited"] = {"attempt": _int((state["rate_limited"] or {}).get("attempt")) + 1, "max": None,
                                     "status": 429, "retry_in_s": None}
    elif kind_of == "result":
        stats = event.get("stats") if isinstance(event.get("stats"), dict) else {}
        state["tokens_in"] = _int(stats.get("input_tokens")) or state["tokens_in"]
        state["tokens_out"] = _int(stats.get("output_tokens")) or state["tokens_out"]
        failed = event.get("status") != "success"
        if failed and isinstance(event.get("error"), dict):
            text = str(event["error"].get("message", ""))
            state["error_text"] = _one_line(text, 300)
            state["error_status"] = _limit_text(text) or state.get("error_status")
        state["result"] = {"subtype": event.get("status"), "is_error": failed,
                           "terminal_reason": "error" if failed else "completed"}


def worked(state: dict[str, Any]) -> bool:
    """Whether the agent worked on its input, as its events tell: a turn (Claude: a reply; Gemini: a reply); Codex:
    a turn that completed or a reply (its turn.started comes before any model call: a turn that then failed did
    nothing with it)."""
    if state.get("kind") == "codex":
        return bool(state.get("replied"))
    return bool(state.get("turns"))


def stop_of(state: dict[str, Any]) -> tuple[str, str]:
    """How the try's agent says it stopped: (rate_limit | auth | error | "", its words). Judged when the try ended:
    a result is a success only when its is_error is false; a rate limit and a missing login both end in an API
    error and are told apart by the retries' status and the text."""
    result = state.get("result") or {}
    if result and result.get("is_error") is False:
        return "", ""  # the agent's own verdict: a success (whatever it retried on the way)
    status, text = state.get("error_status"), str(state.get("error_text") or "")
    lowered = text.lower()
    if status in AUTH_STATUSES or "not logged in" in lowered or "failed to authenticate" in lowered \
            or "invalid api key" in lowered:
        return "auth", text
    if status in RATE_STATUSES or any(word in lowered for word in ("rate limit", "rate_limit", "usage limit",
                                                                   "overloaded", "(429)", "(529)")):
        return "rate_limit", text
    if result.get("is_error"):
        return "error", text
    return "", ""


def reset_at(state: dict[str, Any]) -> float | None:
    """When the limit lifts, if the agent said so (epoch seconds)."""
    found = RESET_EPOCH.search(str(state.get("error_text") or ""))
    return float(found.group(1)) if found else None


def plain_command(command: str) -> bool:
    """An agent_command flags may be appended to: one command, no `;`, `&`, `|`, backquote, `$(` or line break."""
    return not any(c in command for c in (";", "&", "|", "`", "$(", "\n"))


SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def resumed_state(kind: str, before: dict[str, Any], session: str | None = None) -> dict[str, Any]:
    """A new try's agent that resumes `session` (by default `before`'s), whose tally so far is `before` (the last
    try's agent, or that of this try prepared already, its agent never started): it knows what the session had
    cost, so that the session total its result reports is not counted twice. A try prepared again keeps the base it
    was given: its own tally has no cost of that session yet."""
    state, session = new_state(kind), before.get("session_id") if session is None else session
    prior = _num(before.get("cost_base")) if before.get("base_session") == session else 0.0
    spent = _num(before.get("session_cost_usd")) if before.get("session_id") == session else 0.0
    state["cost_base"], state["base_session"] = max(prior, spent), session
    return state


def resume_flags(kind: str, session_id: str) -> list[str]:
    """The flags that continue `session_id`; none for an id that is no plain id (it comes from the agent's output:
    never a flag or a path)."""
    return ["--resume", session_id] if kind == "claude" and SESSION_ID.match(session_id or "") else []
