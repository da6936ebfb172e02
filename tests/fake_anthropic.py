"""A stand-in for the Anthropic Messages API on 127.0.0.1: streaming SSE answers to POST /v1/messages, scripted.

Each test queues answers; every model call the agent makes takes the next one (when the queue is empty the
model says "done." and ends its turn). Answers:

- `text("...")`: one text block, stop_reason end_turn.
- `bash("git commit ...")`: a Bash tool_use (its input streamed as input_json_delta), stop_reason tool_use.
- `status(429, retry_after=1)`, `status(401)`, `status(529)`: an error response with the API's error body.

`usage` on an answer sets the tokens it reports (a costly run: many output tokens). Requests are kept in
`server.requests` (path, headers, body) for the test to look at. The format follows the Messages API
streaming docs: message_start, content_block_start / content_block_delta / content_block_stop per block,
message_delta (stop_reason, usage), message_stop.
"""
from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}


@dataclass
class Answer:
    blocks: list[dict[str, Any]] = field(default_factory=list)  # {"type": "text", "text"} or tool_use
    stop_reason: str = "end_turn"
    status: int = 200
    retry_after: float | None = None
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 100, "output_tokens": 20})


def text(words: str, **usage: int) -> Answer:
    return Answer([{"type": "text", "text": words}], "end_turn", usage=_usage(usage))


def bash(command: str, say: str = "", **usage: int) -> Answer:
    blocks = [{"type": "text", "text": say}] if say else []
    blocks.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": "Bash",
                   "input": {"command": command, "description": "run a command"}})
    return Answer(blocks, "tool_use", usage=_usage(usage))


def status(code: int, retry_after: float | None = None) -> Answer:
    return Answer(status=code, retry_after=retry_after)


def _usage(given: dict[str, int]) -> dict[str, int]:
    return {"input_tokens": given.get("input_tokens", 100), "output_tokens": given.get("output_tokens", 20)}


class FakeAnthropic:
    """The server; `answers` is the queue (a list: append to it while the agent runs, under `lock`)."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.by_marker: dict[str, list[Answer]] = {}
        self.autopilot: Callable[[dict[str, Any]], Answer] | None = None  # answers when nothing is scripted
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": "not here"}})

            def do_HEAD(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                path = self.path.split("?")[0]
                with fake.lock:
                    fake.requests.append({"path": path, "headers": dict(self.headers), "body": body})
                if path.endswith("/count_tokens"):
                    self._json(200, {"input_tokens": 100})
                    return
                if not path.endswith("/v1/messages"):
                    self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})
                    return
                # The CLI's side calls (a title, a quota check) carry no tools: they never take a scripted answer.
                with fake.lock:
                    answer = fake.take(body) if body.get("tools") else None
                if answer is None:
                    answer = fake.autopilot(body) if fake.autopilot and body.get("tools") else text("done.")
                if answer.status != 200:
                    self._error(answer)
                elif body.get("stream"):
                    self._stream(answer, body.get("model", "claude-sonnet-4-5"))
                else:
                    self._json(200, _message(answer, body.get("model", "claude-sonnet-4-5"), whole=True))

            def _json(self, code: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, answer: Answer) -> None:
                kind = ERROR_TYPES.get(answer.status, "api_error")
                headers = {"retry-after": str(answer.retry_after)} if answer.retry_after is not None else {}
                if answer.status == 429:
                    headers["anthropic-ratelimit-requests-remaining"] = "0"
                self._json(answer.status, {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}},
                           headers)

            def _stream(self, answer: Answer, model: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.send_header("request-id", f"req_{uuid.uuid4().hex[:16]}")
                self.end_headers()
                self.close_connection = True
                for event, data in _events(answer, model):
                    self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def queue(self, *answers: Answer) -> None:
        with self.lock:
            self.answers.extend(answers)

    def queue_for(self, marker: str, *answers: Answer) -> None:
        """Answers for the conversations whose first message holds `marker` (e.g. "# Issue #3:")."""
        with self.lock:
            self.by_marker.setdefault(marker, []).extend(answers)

    def take(self, body: dict[str, Any]) -> Answer | None:
        messages = body.get("messages") or [{}]
        first = json.dumps(messages[0])
        for marker, answers in self.by_marker.items():
            if json.dumps(marker)[1:-1] in first:
                return answers.pop(0) if answers else None
        return self.answers.pop(0) if self.answers else None

    def model_calls(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"].endswith("/v1/messages") and r["body"].get("tools")]

    def __enter__(self) -> FakeAnthropic:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def _message(answer: Answer, model: str, whole: bool) -> dict[str, Any]:
    return {"id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": model,
            "content": answer.blocks if whole else [], "stop_reason": answer.stop_reason if whole else None,
            "stop_sequence": None,
            "usage": {"input_tokens": answer.usage["input_tokens"], "output_tokens":
                      answer.usage["output_tokens"] if whole else 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}


def _events(answer: Answer, model: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start",
                                                                "message": _message(answer, model, whole=False)})]
    for index, block in enumerate(answer.blocks):
        if block["type"] == "text":
            out.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "text", "text": ""}}))
            out.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "text_delta", "text": block["text"]}}))
        else:
            out.append(("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "tool_use", "id": block["id"],
                                                                  "name": block["name"], "input": {}}}))
            whole = json.dumps(block["input"])
            for start in range(0, len(whole), 40):  # the input arrives in pieces, as the API sends it
                out.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "input_json_delta",
                                                              "partial_json": whole[start:start + 40]}}))
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None},
                                  "usage": {"output_tokens": answer.usage["output_tokens"]}}))
    out.append(("message_stop", {"type": "message_stop"}))
    return out


def demo_answer(body: dict[str, Any]) -> Answer:
    """The demo's model: a new conversation gets a Bash call that commits this stage's work (issue and stage
    read from the prompt's first lines); a conversation that already ran it gets a short closing text."""
    messages = body.get("messages") or []
    if '"tool_result"' in json.dumps(messages):
        return text("Committed this stage's work.")
    first = json.dumps(messages[0] if messages else {})
    issue = re.search(r"# Issue #(\d+)", first)
    stage = re.search(r"Stage: ([a-z_]+)", first)
    number, name = (issue.group(1) if issue else "0"), (stage.group(1) if stage else "work")
    return bash(f"echo {name} >> work-{number}.txt && git add work-{number}.txt && "
                f"git -c user.name='Demo Model' -c user.email=model@example.com commit -q -m '{name} #{number}'",
                say=f"Working on issue #{number}, stage {name}.")
