"""Runs one try of an agent: its output to the try's capped log, START/EXIT lines to the worker's log (the index of
its tries) and the try's log, the exit code to this try's signal file.

Started in a worker's pane as `python3 wrapper.py TRY.json` (paths only: no
prompt, title or command text is ever typed into a pane). Standard library
only (and lib.runner, itself standard library). The agent gets its own process
group, recorded in the try's pid file, so the monitor can kill all of it; a
SIGTERM/SIGHUP to the wrapper takes the group down too, and the exit code
(128 + that signal) still lands in the signal file. However the try ends,
nothing it started outlives it: its group and every process carrying its
ORCHESTRATOR_TRY tag (daemons, `setsid cmd &`) are killed before the exit code
is written.

Over 500 lines, one job: a try's whole life in its pane (set-up, sandbox, streamed input, capped logs,
leftovers), each part written to survive what an agent does to it.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout root, for lib/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/proof-workers, for orchestrator.agents

from lib import logcut, procs, runner, signals  # noqa: E402
from lib.statefile import append_whole, locked, read_small, write_text  # noqa: E402
from lib.gitstatus import without_repo_local_git_vars  # noqa: E402
from orchestrator import agents, worktree_setup  # noqa: E402

# Every process of a try carries TRY_VAR=<project>/<worker>/<try> (set in its spec's env).
TRY_VAR = "ORCHESTRATOR_TRY"
# The wrapper alone carries WRAPPER_VAR=<the same tag> (set on its pane's command; dropped before it starts
# anything): how the monitor tells the try's wrapper from any process naming the same files.
WRAPPER_VAR = "ORCHESTRATOR_WRAPPER"
LEFTOVER_GRACE_S = 2.0
# The sandbox: bubblewrap with the root read-only, /dev, /proc and /tmp of its own, no view of other
# processes, every capability dropped (bwrap keeps them when started by root). The network stays.
BWRAP_BASE = ("bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
              "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--cap-drop", "ALL")
# What would let a sandboxed agent push, or reach the tmux server that drives every pane or the desktop
# session: not passed in.
SANDBOX_DROPPED_ENV = ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "GIT_ASKPASS", "SSH_ASKPASS", "GIT_SSH", "GIT_SSH_COMMAND",
                       "GH_TOKEN", "GITHUB_TOKEN", "GH_ENTERPRISE_TOKEN", "GITLAB_TOKEN", "GL_TOKEN", "CI_JOB_TOKEN",
                       "DBUS_SESSION_BUS_ADDRESS", "TMUX", "TMUX_PANE", "TMUX_TMPDIR", "GPG_AGENT_INFO",
                       "DISPLAY", "XAUTHORITY", "WAYLAND_DISPLAY")
# Files and directories under $HOME with keys or credentials: hidden (an empty directory, or /dev/null).
SANDBOX_HIDDEN_HOME = (".ssh", ".gnupg", ".git-credentials", ".config/git/credentials", ".netrc", ".config/gh",
                       ".config/glab-cli", ".docker", ".aws", ".kube", ".Xauthority")
# git config for every git the agent starts: no credential helper (an empty value clears the list), no
# automatic gc or maintenance (they would rewrite the read-only shared parts of the git dir), no signing
# (the keys are hidden).
SANDBOX_GIT_CONFIG = (("credential.helper", ""), ("gc.auto", "0"), ("maintenance.auto", "false"),
                      ("commit.gpgSign", "false"), ("tag.gpgSign", "false"))


# An agent with structured output: its raw event stream is capped (a runaway agent cannot fill the disk); past
# the cap the events the monitor judges by (KEPT_PAST_CAP) are still kept. Its readable log is capped as any
# try's log is (max_log_bytes: head, mark, tail).
EVENTS_CAP = 100 * 1024 * 1024
MAX_EVENT_LINE = 4 * 1024 * 1024  # a longer line (a huge tool result) is left out of the stream, with a note
# The event types kept past the cap (judged on the parsed event: the real CLI writes "type" late in its result
# line): Claude's and Gemini's result, init and system events, Codex's turn ends, errors and session start.
KEPT_PAST_CAP = ("result", "system", "init", "error", "turn.completed", "turn.failed", "thread.started")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sandbox_argv(box: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The bwrap command line (ending in `--`) for a try spec's `sandbox`, for an agent started with `env`.

    Order matters, later mounts cover earlier ones: the read-only root and a private /tmp; the git dir and
    the prompt made visible again (they may live under /tmp); the writable parts (the agent's state dirs,
    then the worktree and what a commit on its branch writes in the git dir); read-only on top of those
    the files that tie the worktree to its repository; last the secrets, hidden even inside writable parts.
    """
    argv = list(BWRAP_BASE)
    runtime = f"/run/user/{os.getuid()}"  # agent sockets (gpg, ssh, keyrings)
    if os.path.isdir(runtime):
        argv += ["--tmpfs", runtime]
    for path in box.get("visible", []):
        argv += ["--ro-bind-try", path, path]
    for path in box.get("state", []):
        argv += ["--bind-try", path, path]
    for path in box.get("writable", []):
        argv += ["--bind", path, path]
    for path in box.get("read_only", []):
        argv += ["--ro-bind-try", path, path]
    home = env.get("HOME", "")
    hidden = [os.path.join(home, name) for name in SANDBOX_HIDDEN_HOME] if home.startswith("/") else []
    xdg = env.get("XDG_CONFIG_HOME", "")  # git's credential store and gh read there when it is set
    if xdg.startswith("/"):
        hidden += [os.path.join(xdg, name.removeprefix(".config/")) for name in SANDBOX_HIDDEN_HOME
                   if name.startswith(".config/")]
    for var in ("SSH_AUTH_SOCK", "TMUX"):  # $TMUX is "socket,pid,session"
        value = env.get(var, "").split(",")[0]
        if value.startswith("/"):
            hidden.append(value)
    if env.get("TMUX_TMPDIR", "").startswith("/"):
        hidden.append(os.path.join(env["TMUX_TMPDIR"], f"tmux-{os.getuid()}"))
    keep = [os.path.realpath(p) for p in (box["worktree"], *box.get("visible", []), *box.get("writable", []))]
    for path in dict.fromkeys(os.path.realpath(p) for p in hidden):  # where a symlink leads is what to hide
        if any(k == path or k.startswith(path.rstrip("/") + "/") for k in keep):
            continue  # never cover the worktree or the git dir (a link from ~/.ssh to a parent of them)
        if os.path.isdir(path):
            argv += ["--tmpfs", path]
        elif os.path.exists(path):
            argv += ["--ro-bind", "/dev/null", path]
    return argv + ["--chdir", box["worktree"], "--"]


def sandbox_env(env: dict[str, str]) -> dict[str, str]:
    """The environment a sandboxed agent gets: no agent sockets, askpass programs, tokens or tmux handles."""
    env = {k: v for k, v in without_repo_local_git_vars(env).items() if k not in SANDBOX_DROPPED_ENV}
    env["GIT_CONFIG_COUNT"] = str(len(SANDBOX_GIT_CONFIG))
    for index, (key, value) in enumerate(SANDBOX_GIT_CONFIG):
        env[f"GIT_CONFIG_KEY_{index}"], env[f"GIT_CONFIG_VALUE_{index}"] = key, value
    env["TMPDIR"] = "/tmp"
    return env


class Feeder:
    """A try whose agent reads user messages on stdin (Claude Code's `--input-format stream-json`): the prompt is
    its first message, each follow-up the monitor appends to the try's inbox is the next, and the input ends at a
    result when nothing reached the agent after its last reply (the CLI then exits).

    A follow-up is passed on at most once, and never without a record: under the inbox's lock (the one the
    monitor takes to read the delivered list or withdraw a follow-up) the wrapper notes `passing` in the delivered
    list, then writes the message to the agent, then notes `passed` (or `not_passed`: the agent's input is gone).
    A `passing` note that cannot be written (a full disk) passes nothing: the monitor withdraws the follow-up and
    keeps it for the next try. A `passing` note alone, read under the lock, means the agent may have it but the
    note after did not land (a full disk, a kill): the monitor says the delivery is not recorded and never gives
    it again. Noting after writing instead would turn that failure into a follow-up given twice."""

    def __init__(self, stdin: Any, paths: dict[str, str]) -> None:
        self.stdin, self.inbox, self.delivered = stdin, Path(paths["inbox"]), Path(paths["delivered"])
        self.sent: set[str] = set()
        self.closed = False
        self.events = 0  # assistant replies and forwarded messages, in order
        self.last_reply = self.last_forward = 0
        self.mutex = threading.Lock()
        self.inbox.touch()  # from now on the monitor may append to it

    def start(self, prompt: str) -> None:
        self._write(prompt)
        threading.Thread(target=self._poll, daemon=True).start()

    def _write(self, text: str) -> bool:
        try:
            self.stdin.write((json.dumps({"type": "user", "message": {"role": "user", "content": text}},
                                         ensure_ascii=False) + "\n").encode())
            self.stdin.flush()
            return True
        except (OSError, ValueError):  # the agent is gone (a broken pipe) or its input already closed
            return False

    def _poll(self) -> None:
        while not self.closed:
            try:
                self.forward()
            except OSError:
                pass  # the inbox or its lock unreadable for now (a full disk): the next pass tries again
            time.sleep(0.2)

    def forward(self, close_if_idle: bool = False) -> None:
        with self.mutex, locked(self.inbox):
            if self.closed:
                return
            withdrawn, waiting = set(), []
            # Removed under us (a cleanup), or no regular file: nothing more to pass on.
            lines = (read_small(self.inbox) or b"").decode("utf-8", "replace").splitlines()
            for line in lines:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict) and isinstance(doc.get("withdraw"), str):
                    withdrawn.add(doc["withdraw"])
                elif isinstance(doc, dict) and isinstance(doc.get("id"), str) and isinstance(doc.get("text"), str):
                    waiting.append(doc)
            for doc in waiting:
                if doc["id"] in self.sent or doc["id"] in withdrawn:
                    continue
                if not self._note({"id": doc["id"], "state": "passing"}):
                    break  # passed on only once noted: the next pass tries again, or the monitor withdraws it
                self.sent.add(doc["id"])  # from here never passed on again, whatever the notes below say
                if not self._write(doc["text"]):
                    self._note({"id": doc["id"], "state": "not_passed"})
                    self._close()  # the agent's input is gone (it exited, or closed it)
                    return
                self.events += 1
                self.last_forward = self.events
                self._note({"id": doc["id"], "state": "passed"})  # lost (a full disk): the monitor says unrecorded
            if close_if_idle and self.last_forward <= self.last_reply:  # (0, 0): a result with no reply at all
                self._close()

    def _note(self, doc: dict[str, Any]) -> bool:
        """A line in the delivered list; False when it could not be written (nothing of it is left there)."""
        try:
            _append_note(self.delivered, (json.dumps({**doc, "at": _stamp()}) + "\n").encode())
            return True
        except OSError:
            return False

    def _close(self) -> None:
        self.closed = True
        # Not noted (a full disk): the monitor withdraws what it cannot see passed on, after its wait.
        self._note({"closed": True})
        try:
            self.stdin.close()
        except OSError:
            pass

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "assistant":
            self.events += 1
            self.last_reply = self.events
        elif event.get("type") == "result":
            self.forward(close_if_idle=True)

    def end(self) -> None:
        """The agent exited: no follow-up can reach it any more."""
        with self.mutex, locked(self.inbox):
            if not self.closed:
                self._close()


def run(spec: dict[str, Any]) -> int:
    log_path, signal_path = Path(spec["log"]), Path(spec["signal"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    signal_path.parent.mkdir(parents=True, exist_ok=True)
    label = f"worker-{spec['worker']} try {spec['try']} issue #{spec['issue']} stage {spec['stage']}"
    # Nothing inherited may point the agent's git at another repository, index or config (lib.gitstatus's list).
    env = without_repo_local_git_vars(os.environ)
    env.update(spec.get("env", {}))
    argv = ["/bin/sh", "-c", spec["command"]]
    # Orphans of the agent's tree (a double fork, `env -i setsid cmd &`: no tag, no group) become our children,
    # so kill_leftovers finds them by descent when their tag is gone.
    runner.become_subreaper()
    box = spec.get("sandbox")
    if box:
        argv = sandbox_argv(box, env) + argv  # before sandbox_env drops the sockets it hides
        env = sandbox_env(env)
    kind = spec.get("agent", "command")
    structured = kind in agents.STRUCTURED and spec.get("events") and spec.get("try_log")
    # The try's own log (capped: its head, a mark, its tail) holds what the agent printed, or for an agent with
    # events a line per event; the worker's log is the index of its tries: START and EXIT lines naming them.
    try_log = Path(spec.get("try_log") or log_path.with_name(f"{log_path.stem}-try-{spec['try']}.log"))
    label += f" ({f'agent {kind}; ' if structured else ''}log {try_log})"
    cap = spec.get("max_log_bytes") or logcut.DEFAULT_LOG_CAP
    setup = spec.get("setup")
    if setup and not worktree_setup.done(Path(setup["worktree"])):
        code = _set_up(setup, cap, spec.get("env", {}).get(TRY_VAR), signal_path, log_path, label)
        if code is not None:  # the agent never starts
            write_text(signal_path, f"{code}\n")
            return code
    with _open_index(log_path) as index, _try_log(try_log, cap, index) as log:
        start = f"=== START {label} at {_stamp()} ===\n".encode()
        _note(index, start)
        _note(log, start)
        streamed = spec.get("input") if structured else None
        stopped_by: list[int] = []
        started: list[subprocess.Popen[bytes]] = []

        def stop(signum: int, _frame: Any) -> None:
            stopped_by.append(signum)
            for one in started:
                with suppress(ProcessLookupError):
                    os.killpg(one.pid, signal.SIGKILL)

        # Before the agent starts: a stop at any moment after never kills the wrapper alone, leaving its agent
        # running on unsupervised.
        for signum in signals.STOP_SIGNALS:
            signal.signal(signum, stop)
        agent, code = None, 127
        try:
            if not stopped_by:
                agent = subprocess.Popen(argv, cwd=spec["cwd"], env=env,
                                         stdin=subprocess.PIPE if streamed else subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            _note(log, f"wrapper: cannot start the agent: {err}\n".encode())
        if agent is None:
            code = signals.exit_code(stopped_by[0]) if stopped_by else code
        else:
            # A stop from here on is held back until the agent counts as started (its pid file) or is killed: it
            # is never started without one or the other.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, signals.STOP_SIGNALS)
            try:
                started.append(agent)
                if stopped_by:  # stopped while it was being started: it never runs on, never counts as started
                    with suppress(ProcessLookupError):
                        os.killpg(agent.pid, signal.SIGKILL)
                else:
                    try:
                        write_text(Path(spec["pid_file"]), str(agent.pid))
                    except OSError as err:  # (a full disk) no agent runs that the monitor cannot find and stop
                        _note(log, f"wrapper: cannot write the agent's pid file: {err}: the agent is killed\n"
                                   .encode())
                        with suppress(ProcessLookupError):
                            os.killpg(agent.pid, signal.SIGKILL)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            feeder = Feeder(agent.stdin, streamed) if streamed else None
            if structured:
                pump = threading.Thread(target=_events, args=(agent.stdout, kind, Path(spec["events"]), log, feeder),
                                        daemon=True)
            else:
                pump = threading.Thread(target=_tee, args=(agent.stdout, log), daemon=True)
            pump.start()
            if feeder is not None:  # after the pump: a long prompt never waits on an agent blocked on its output
                try:
                    feeder.start(Path(streamed["prompt"]).read_text(encoding="utf-8"))
                except OSError as err:  # no prompt to give: the agent's input ends, it exits, the try is judged
                    log.write(f"wrapper: cannot read the prompt: {err}\n".encode())
                    feeder.end()
            code = agent.wait()
            started.clear()  # reaped: its pid may be another process's group now (kill_leftovers ends what is left)
            if feeder is not None:
                feeder.end()
            leftovers = kill_leftovers(agent.pid, env.get(TRY_VAR))
            pump.join(timeout=5)
            if leftovers:
                _note(log, f"wrapper: killed {len(leftovers)} process(es) the agent left behind: "
                           f"{', '.join(map(str, leftovers[:10]))}\n".encode())
            # Stopped by a signal: say which (129 is a hang-up: tmux or the terminal went away).
            code = signals.exit_code(stopped_by[0]) if stopped_by else code if code >= 0 else signals.exit_code(-code)
        end = f"=== EXIT code {code} {label} at {_stamp()} ===\n".encode()
        _note(log, end if getattr(log, "at_line_start", True) else b"\n" + end)  # output may end mid-line
        _note(index, end)
        try:
            log.close()  # puts the log back at its path if the agent deleted or replaced it
        except OSError as err:
            _note(index, f"wrapper: the try's log {try_log} could not be put back: {err}\n".encode())
    write_text(signal_path, f"{code}\n")
    return code


class _Stopped(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _set_up(setup: dict[str, Any], cap: int, tag: str | None, signal_path: Path, index_path: Path,
            label: str) -> int | None:
    """Run the worktree's set-up command before the agent (orchestrator.worktree_setup.run_command: its own group,
    killed with its leftovers at its timeout; output to the issue's setup log, capped). Its outcome goes to the
    try's setup state file (running, then done, failed with the reason, or stopped) before any exit code. None:
    set up, the agent may start; else the try's exit code (1: the set-up failed; 128 + a signal: stopped)."""
    state = worktree_setup.state_path(signal_path)
    log_file = Path(setup["log"])
    write_text(state, json.dumps({"state": "running", "log": str(log_file), "timeout": setup["timeout"]}) + "\n")
    with suppress(OSError), open(index_path, "ab") as index:
        _note(index, f"=== SETUP {label}: {setup['run']} (setup log {log_file}) at {_stamp()} ===\n".encode())

    def stop(signum: int, _frame: Any) -> None:
        if not stopping:  # raised once: a second signal never interrupts the killing of the first one's group
            stopping.append(signum)
            raise _Stopped(signum)

    stopping: list[int] = []
    previous = {signum: signal.signal(signum, stop) for signum in signals.STOP_SIGNALS}
    code, outcome = None, {"state": "done"}
    try:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log = logcut.CappedLog(log_file, cap)
        except OSError as err:
            raise worktree_setup.SetupFailed(f"cannot write its log {log_file}: {err.strerror or err}") from None
        with log:
            worktree_setup.run_command(setup["run"], float(setup["timeout"]), Path(setup["main_checkout"]),
                                       Path(setup["worktree"]), log, {**setup.get("env", {}), TRY_VAR: tag or ""},
                                       setup.get("copy"), getattr(sys.stdout, "buffer", None))
    except worktree_setup.SetupFailed as err:
        code, outcome = 1, {"state": "failed", "reason": str(err)}
    except _Stopped as err:
        code, outcome = signals.exit_code(err.signum), {"state": "stopped", "signal": err.signum}
    finally:
        for signum in previous:  # from here a signal is noted, never raised into the cleanup below
            signal.signal(signum, lambda signum, _frame: stopping.append(signum))
        # What the set-up left, outside its group and without its step tag (`env -i setsid cmd &`), is below us
        # (we are a subreaper) or carries the try's tag: it never outlives a failed set-up, never joins the agent.
        runner.stop_watchdog()
        _kill_below(tag)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopping and code is None:  # stopped after the command ended well: still stopped, no agent
        code, outcome = signals.exit_code(stopping[0]), {"state": "stopped", "signal": stopping[0]}
    write_text(state, json.dumps(outcome) + "\n")
    if code is not None:
        with suppress(OSError), open(index_path, "ab") as index:
            _note(index, f"=== EXIT code {code} {label}: setup {outcome['state']}"
                         f"{': ' + outcome['reason'] if 'reason' in outcome else ''} at {_stamp()} ===\n".encode())
    return code


def _kill_below(tag: str | None) -> list[int]:
    """Kill every process still below the wrapper and every one with this try's tag; returns their pids."""
    found = procs.processes_tagged(TRY_VAR, tag) if tag else []
    found += [pid for pid in procs.descendants(procs.process_table(), os.getpid()) if pid not in found]
    if found:
        procs.kill_processes([], found, LEFTOVER_GRACE_S)
    return found


def _note(log: Any, line: bytes) -> None:
    """A line of ours in a log; a log that cannot be written (a full disk) never costs the exit code."""
    try:
        log.write(line)
        log.flush()
    except (OSError, ValueError):
        pass


class _Nowhere:
    """The try's log when it cannot be opened: the agent runs anyway, its output only in the pane."""

    def write(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Nowhere:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _try_log(path: Path, cap: int, index: Any) -> Any:
    try:
        _folder(path.parent)
        return logcut.CappedLog(path, cap)
    except OSError as err:
        _note(index, f"wrapper: cannot write the try's log {path}: {err}\n".encode())
        return _Nowhere()


def _folder(path: Path) -> None:
    """A real folder at `path`: a symlink or a file put there (by an agent) is replaced, never followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        if path.is_dir() and not path.is_symlink():
            return
        path.unlink()
        path.mkdir()


def _open_index(path: Path) -> Any:
    """The worker's log (the index of its tries) to append to; one that cannot be made is nowhere, and the try
    runs."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _open_append(path)
    except OSError:
        return _Nowhere()


def _open_append(path: Path) -> Any:
    """A file of ours to append to, unbuffered: a FIFO, symlink or other odd file put there is replaced, never
    waited on or written through."""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENXIO):  # a symlink; a FIFO nobody reads
                raise
            path.unlink()
            continue
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)
            return open(fd, "ab", buffering=0)
        os.close(fd)
        path.unlink()
    raise OSError(errno.EEXIST, f"{path} keeps being replaced")


def _append_note(path: Path, data: bytes) -> None:
    """Append one line to a file of ours, whole or not at all (statefile.append_whole)."""
    with _open_append(path) as out:
        append_whole(out.fileno(), data)


def kill_leftovers(pgid: int, tag: str | None) -> list[int]:
    """Kill what is left of the agent's group, every process with this try's tag and every process still below
    the wrapper (orphans reparented to it, tag or not); returns those found outside the group. A group leader
    that has exited no longer counts its group, hence the tag and the descent."""
    members = set(procs.group_members(pgid))
    outside = [p for p in procs.processes_tagged(TRY_VAR, tag) if p not in members] if tag else []
    outside += [pid for pid in procs.descendants(procs.process_table(), os.getpid())
                if pid not in outside and pid not in members]
    if members or outside:
        procs.kill_processes([pgid], outside, LEFTOVER_GRACE_S)
    return outside


def _log_or_count(log: logcut.CappedLog, data: bytes, lost: int, what: str) -> int:
    """Write `data` to the log, saying first how much could not be written before; returns what is lost now.
    A write that fails (a full disk) is counted, never raised: the agent's output and events go on."""
    try:
        if lost:
            log.write(f"\nwrapper: up to {lost} bytes of {what} could not be written to this log (a write failed: "
                      "a full disk?)\n".encode())
            lost = 0
        log.write(data)
        return 0
    except Exception:  # noqa: BLE001 (a full disk)
        return lost + len(data)


def _tee(source: Any, log: logcut.CappedLog) -> None:
    """The agent's output to its log and the pane. Output the log cannot take (a full disk) is drained, never
    left to block the agent, and said in the log once it can be written again."""
    screen = getattr(sys.stdout, "buffer", None)
    lost = 0
    for chunk in iter(lambda: source.read1(65536), b""):
        lost = _log_or_count(log, chunk, lost, "the agent's output")
        if screen is not None:
            try:
                screen.write(chunk)
                screen.flush()
            except OSError:
                screen = None


def _events(source: Any, kind: str, events_path: Path, log: logcut.CappedLog | Path,
            feeder: Feeder | None = None) -> None:
    """Keep the agent's raw event stream (a line that is not JSON becomes a `stdout` event) and write a readable
    line per event to the try's log and the pane."""
    try:
        _keep_events(source, kind, events_path, log, feeder)
    except Exception:  # noqa: BLE001 (a full disk, or an event nothing foresaw: the drain below must still run)
        pass
    for _ in iter(lambda: source.read1(65536), b""):
        pass  # the files cannot be written (a full disk): the agent's output is drained, never left to block it


def _keep_events(source: Any, kind: str, events_path: Path, log: logcut.CappedLog | Path,
                 feeder: Feeder | None = None) -> None:
    if isinstance(log, Path):  # a log of the default cap at that path
        log.parent.mkdir(parents=True, exist_ok=True)
        with logcut.CappedLog(log) as capped:
            return _keep_events(source, kind, events_path, capped, feeder)
    events_path.parent.mkdir(parents=True, exist_ok=True)
    screen = getattr(sys.stdout, "buffer", None)
    # A write that fails (a full disk) costs that event or line only: the next ones are written when they can
    # be, so the result event the monitor judges the try by still lands.
    with _open_append(events_path) as events:
        written, touched = events.seek(0, os.SEEK_END), float("-inf")
        half_line, lost = False, 0
        while True:
            line = source.readline(MAX_EVENT_LINE)
            if not line:
                break
            if not line.endswith(b"\n"):
                if len(line) >= MAX_EVENT_LINE:  # the rest of an overlong line is read and dropped
                    while (rest := source.readline(MAX_EVENT_LINE)) and not rest.endswith(b"\n"):
                        pass
                    line = json.dumps({"type": "stdout", "text": f"(an event of over {MAX_EVENT_LINE} bytes "
                                                                  "was left out)"}).encode() + b"\n"
                else:
                    line += b"\n"
            event, was_json = agents.parse_line(line)
            if feeder is not None:
                feeder.on_event(event)
            raw = line if was_json else (json.dumps(event, ensure_ascii=False) + "\n").encode()
            if written < EVENTS_CAP or (was_json and len(raw) < 65536 and event.get("type") in KEPT_PAST_CAP):
                try:
                    if half_line:  # a failed write may have left part of a line: it ends here, unparsed
                        logcut.write_all(events, b"\n")
                        half_line = False
                    logcut.write_all(events, raw)
                    written += len(raw)
                except OSError:
                    half_line = True
            elif time.monotonic() - touched >= 1.0:
                # dropped past the cap: the file's mtime still moves, so the probe sees activity, not a stall
                os.utime(events.fileno())
                touched = time.monotonic()
            text = "".join(f"{_stamp()} {one}\n" for one in agents.describe(kind, event)).encode("utf-8", "replace")
            if text:
                lost = _log_or_count(log, text, lost, "the agent's events")
            if text and screen is not None:
                try:
                    screen.write(text)
                    screen.flush()
                except OSError:
                    screen = None


def main(argv: list[str] | None = None) -> int:
    os.environ.pop(WRAPPER_VAR, None)  # ours alone: the set-up and the agent never carry it
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: wrapper.py TRY.json", file=sys.stderr)
        return 2
    return run(json.loads(Path(args[0]).read_text(encoding="utf-8")))


if __name__ == "__main__":
    raise SystemExit(main())
