"""`inv status --host NAME`: each repo's status on a build host, git's porcelain v2 parsed as locally."""
from __future__ import annotations

import shlex
from datetime import datetime, timezone
from time import perf_counter
from typing import Any, Sequence

from lib import runner
from lib.config import Repo
from lib.gitstatus import LOG_ARGS, STATUS_ARGS, RepoStatus, ScanReport, last_commit_of, parse_porcelain_v2
from lib.remote import connection as remote
from lib.remote.hosts import Host

SEPARATOR = b"\n--orchestrator-last-commit--\n"
STATE_MARK = b"orchestrator-state "
# The repo's own git dir (a linked worktree's `.git` file points to it), then the operation under way
# and the index.lock state, as lib.gitstatus reads them locally (OPERATION_MARKERS, operation_in,
# _git_running_in): one line, `orchestrator-state OPERATION LOCK`, `-` for none.
STATE_SCRIPT = r"""if [ -d .git ]; then gd=.git
else first=; IFS= read -r first 2>/dev/null < .git; gd=${first#gitdir: }; [ "$gd" != "$first" ] || gd=
  gd=${gd%"$(printf '\r')"}; case $gd in /*) ;; ?*) gd=$PWD/$gd ;; esac
fi
op= lock=
if [ -n "$gd" ] && [ -d "$gd" ]; then
  if [ -e "$gd/rebase-merge" ]; then op=rebase
  elif [ -e "$gd/rebase-apply" ]; then if [ -e "$gd/rebase-apply/applying" ]; then op=am; else op=rebase; fi
  elif [ -e "$gd/MERGE_HEAD" ]; then op=merge
  elif [ -e "$gd/CHERRY_PICK_HEAD" ]; then op=cherry-pick
  elif [ -e "$gd/REVERT_HEAD" ]; then op=revert
  elif [ -e "$gd/sequencer/todo" ]; then
    line=; IFS= read -r line 2>/dev/null < "$gd/sequencer/todo"
    case ${line%% *} in revert|r) op=revert ;; *) op=cherry-pick ;; esac
  elif [ -e "$gd/BISECT_LOG" ]; then op=bisect
  fi
  if [ -e "$gd/index.lock" ]; then
    if [ -d /proc/self ]; then lock=stale; else lock=held; fi
    wt=$(pwd -P); g=$(cd "$gd" 2>/dev/null && pwd -P) || g=$wt
    for p in /proc/[0-9]*; do
      comm=; IFS= read -r comm 2>/dev/null < "$p/comm" || continue
      case $comm in git*) ;; *) continue ;; esac
      c=$(readlink "$p/cwd" 2>/dev/null) || continue
      case $c in "$wt"|"$wt"/*|"$g"|"$g"/*) lock=held; break ;; esac
    done
  fi
fi
printf 'orchestrator-state %s %s\n' "${op:--}" "${lock:--}"
"""
# One round trip per repo: the state line, status, then the last commit (a subject is one line,
# so the separator, split from the right, cannot be forged by a commit). The same git arguments
# as the local scan's, and git confined to the repo as there (a parent with a `:` cannot be
# listed in GIT_CEILING_DIRECTORIES: see ceiling_for).
STATUS_SCRIPT = f"""cd -- "$1" 2>/dev/null || {{ if [ ! -e "$1" ]; then echo "path does not exist" >&2
  elif [ ! -d "$1" ]; then echo "path is not a directory" >&2; else echo "cannot enter the directory" >&2; fi
  exit 3; }}
[ -e .git ] || {{ echo "not a git repository (no .git)" >&2; exit 3; }}
here=$(pwd -P) && parent=${{here%/*}}
case $parent in *:*) parent=/proc/self/cwd/.. ;; "") parent=/ ;; esac
export GIT_CEILING_DIRECTORIES="$parent"
{STATE_SCRIPT}git --no-optional-locks {shlex.join(STATUS_ARGS)} || exit 4
printf '{SEPARATOR.decode().replace(chr(10), chr(92) + 'n')}'
git --no-optional-locks {shlex.join(LOG_ARGS)} 2>/dev/null
exit 0"""
GIT_ENV = ("LC_ALL=C", "GIT_OPTIONAL_LOCKS=0", "GIT_TERMINAL_PROMPT=0")
STATUS_TIMEOUT_S = 30.0  # for one repo's git status once the login shell has run it (a big repo is slow)
READS_AT_ONCE = 8  # each read is a session of the one connection: sshd allows 10 on one by default (MaxSessions)


def remote_repo_status(connection: Any, host: Host, repo: Repo, path: str) -> RepoStatus:
    """The repo's status read on the host; HostStalled when the host (its login shell, the link) did not answer."""
    status = RepoStatus(name=repo.name, path=path, exists=True, clean=False, language=repo.language)
    command = " ".join(shlex.quote(w) for w in ["env", *GIT_ENV, "/bin/sh", "-c", STATUS_SCRIPT, "status", path])
    try:
        code, out, err = remote.probe(connection, host, command, "git status", STATUS_TIMEOUT_S)
    except remote.CommandStalled:  # this repo's git is slow (a huge tree, a hook): the host is fine
        status.error = f"git status did not finish within {STATUS_TIMEOUT_S:g} s on the host"
        return status
    message = (err.decode("utf-8", "replace").strip().splitlines() or [f"git exited {code}"])[0]
    if code == 3:
        status.exists = message != "path does not exist"
        status.error = message
        return status
    if code != 0:
        status.error = message
        return status
    state, _, rest = out.partition(b"\n")
    if state.startswith(STATE_MARK):  # only the state line is taken off: the -z status has no line breaks
        out = rest
        operation, _, lock = state[len(STATE_MARK):].decode("ascii", "replace").partition(" ")
        status.operation = None if operation in ("", "-") else operation
        status.index_lock = None if lock in ("", "-") else lock
    porcelain_data, _, log_data = out.rpartition(SEPARATOR)
    porcelain = parse_porcelain_v2(porcelain_data)
    status.branch, status.detached, status.head = porcelain.branch, porcelain.branch is None, porcelain.head
    status.upstream, status.ahead, status.behind = porcelain.upstream, porcelain.ahead, porcelain.behind
    status.staged, status.modified = porcelain.staged, porcelain.modified
    status.untracked, status.conflicted, status.dirty = porcelain.untracked, porcelain.conflicted, porcelain.dirty
    if porcelain.head is None:
        status.error = "no commits yet"
        return status
    status.last_commit = last_commit_of(log_data)  # the local scan's reading, `Z` dates included
    status.clean = status.dirty == 0
    return status


def unread(repo: Repo, path: str, reason: str) -> RepoStatus:
    """A repo whose status was not read (the host unreachable or silent, its git or our reading failing): its
    error says why, and, as the local scan's unreadable repo, it is not said missing (`exists` is false only
    for a path seen missing there)."""
    return RepoStatus(repo.name, path, True, False, repo.language, error=reason)


def scan_host(host: Host, repos: Sequence[Repo], jobs: int = 0, accept_new_host_key: bool = False) -> ScanReport:
    """Every repo's status under the host's workspace; an unreachable host is one error per repo."""
    started = perf_counter()
    generated_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def failed(reason: str) -> list[RepoStatus]:
        return [unread(r, host.repo_dir(r.name), reason) for r in repos]

    def work(connection: Any) -> list[RepoStatus]:
        if isinstance(connection, remote.HostUnreachable):
            return failed(f"host unreachable: {connection}")
        try:
            workspace = remote.resolve_workspace(connection, host)
        except remote.HostUnreachable as err:  # HostStalled too
            return failed(str(err))
        except Exception as err:
            return failed(str(remote.lost(connection, host, err)) if remote.link_error(err, connection)
                          else remote.failure(err, connection, host, "finding the workspace"))
        stalled: list[remote.HostStalled] = []  # a hung login shell hangs every login: one wait is enough

        def one(repo: Repo) -> RepoStatus:
            if runner.stopping():
                raise runner.Stopping("the scan is being stopped")
            path = f"{workspace.rstrip('/')}/{repo.name}"
            if not stalled:
                try:
                    return remote_repo_status(connection, host, repo, path)
                except remote.HostStalled as err:
                    stalled.append(err)
                except Exception as err:
                    if not remote.link_error(err, connection):  # this repo's error, whatever the connection's state
                        return unread(repo, path, remote.failure(err, connection, host, "reading the status"))
                    stalled.append(remote.lost(connection, host, err))
            return unread(repo, path, str(stalled[0]))

        return runner.run_each(repos, one, min(jobs or READS_AT_ONCE, READS_AT_ONCE))

    # Under run_each, so Ctrl-C or SIGTERM (even while connecting) is runner.RunInterrupted, as everywhere.
    statuses = runner.run_each([host], lambda h: remote.run_on_host(h, work, accept_new_host_key), 1)[0]
    return ScanReport(generated_at, perf_counter() - started, statuses)
