"""One worker's lifecycle: every change of its record, checked, saved and journalled as the event it always was.

free -> assign -> (prepare_try -> started) -> restart | hold | advance_stage | enter_pr_stage | watch_pr -> ...
-> complete | fail | release | free. Every value a transition needs is computed by the caller first, so a
transition either happens whole or (an illegal one: OrchestratorError, one line) not at all: a git call failing
halfway never leaves a half-changed record to be saved by the error path. The PR loop's part of enter_pr_stage
and watch_pr (`pr_part`: the record's `pr` and pull-requests.json) runs only once the transition is known legal,
and `pr` is put back when it fails; pull-requests.json, the status's copy, is written last in it, so only a kill
between it and the record's save leaves that file a step ahead (the next stage or watch writes it again).
decide() never sees a Worker; it judges views of the records (inputs.worker_views).

The journal never tells what did not happen, and loses only what a kill -9 in the microseconds between a save
and its line can lose. Taking or moving an issue (assign, restart, hold, advance_stage, enter_pr_stage,
watch_pr, push_failed) is told by the record: saved, then journalled, so a line never tells what the record
lacks; the config follows the record (act writes it after, reconcile from the record), so these lines do not
wait for it. restart's line tells the ended try counted and the next one prepared, before the worktree is
restored (a fetch, a set-up): a set-up failing then adds its own `skip`. Letting an issue go (complete, fail,
release) follows the config, which the caller (or a user) wrote first: journalled, then the freed record saved,
so a kill between leaves a record holding a finished issue, which the next monitor releases (one `release` line
more, never one missing; a kill right after the caller's config write shows as that `release` line alone).
`free` has no line (its caller's tells why).

The record's other fields are observations their owners write and this module saves: the probe's progress marks
(`agent`, `events_offset`, `last_fingerprint`, `last_progress_at`), the PR loop's `pr` (orchestrator.pulls)
and `last_reason`, the note of whoever judged the worker last; they are saved through `save` / `note`.
tests/test_workers_lifecycle.py keeps every other module from changing a field of LIFECYCLE_FIELDS and from
saving a record itself (RunFiles.save_worker, worker_file).
"""
from __future__ import annotations

import copy
from dataclasses import fields
from typing import Any, Callable, Sequence

from lib.errors import OrchestratorError
from orchestrator.config import PR_STAGES
from orchestrator.state import RecordStatus, RunFiles, WorkerRecord

OBSERVATIONS = frozenset({"agent", "events_offset", "last_fingerprint", "last_progress_at", "pr", "last_reason"})
LIFECYCLE_FIELDS = frozenset(f.name for f in fields(WorkerRecord)) - OBSERVATIONS - {"worker_id"}


class IllegalTransition(OrchestratorError):
    """A transition the worker's state does not allow (a bug, or a record edited by hand): nothing changed."""


class Worker:
    """One worker's record and where it is saved (the run's files); each transition saves it, then journals it."""

    def __init__(self, record: WorkerRecord, files: RunFiles) -> None:
        self.record = record
        self.files = files

    @property
    def busy(self) -> bool:
        """Holds an issue (as decide sees it: a record naming no project holds nothing)."""
        return self.record.issue_number is not None and bool(self.record.project)

    def _holding(self, verb: str) -> WorkerRecord:
        if not self.busy:
            raise IllegalTransition(f"worker {self.record.worker_id} holds no issue: it cannot {verb}")
        return self.record

    def _not_started(self, verb: str) -> WorkerRecord:
        record = self._holding(verb)
        if record.launched:
            raise IllegalTransition(f"worker {record.worker_id}: try {record.try_id} of #{record.issue_number} was "
                                    f"started already: it cannot {verb}")
        return record

    def _new_try(self, now: float) -> None:
        """The next try of this worker: its own files (the counter never goes back), not started yet."""
        record = self.record
        record.try_id += 1
        record.launched = False
        record.started_at = record.last_progress_at = now
        record.last_fingerprint = ""
        record.resume_session = None

    def _new_stage(self) -> None:
        record = self.record
        record.retry_count = record.lost_tries = record.push_failures = 0
        record.nudged = False

    def _reset(self) -> None:
        """Back to a free worker; the try counter keeps growing so no file of an old try is reused."""
        self.record.__dict__.update(WorkerRecord(self.record.worker_id, try_id=self.record.try_id).__dict__)

    def _done(self, event: dict[str, Any] | None = None) -> None:
        self.files.save_worker(self.record)
        if event is not None:
            self.files.log_event(event)

    def save(self) -> None:
        """Save the observations another module wrote into the record (the PR loop's, a note)."""
        self.files.save_worker(self.record)

    def note(self, reason: str) -> None:
        self.record.last_reason = reason
        self._done()

    # --- taking an issue and its tries ------------------------------------------------------------------------

    def assign(self, *, project: str, issue: int, branch: str, worktree: str, push_url: str | None,
               pipeline: Sequence[str], stage_index: int, stage_base: str | None, resumed: str | None,
               base: str | None, now: float) -> None:
        """A free worker takes an issue at `stage_index` of its pipeline; its first try is prepared, not started."""
        if self.busy:
            raise IllegalTransition(f"worker {self.record.worker_id} holds #{self.record.issue_number}: it cannot "
                                    f"take #{issue}")
        if not 0 <= stage_index < len(pipeline):
            raise IllegalTransition(f"worker {self.record.worker_id}: #{issue} has no stage {stage_index} (pipeline: "
                                    f"{', '.join(pipeline)})")
        self._reset()
        record = self.record
        record.status, record.project, record.issue_number = RecordStatus.RUNNING, project, issue
        record.branch, record.worktree, record.push_url = branch, worktree, push_url
        record.stage_index, record.stage, record.stage_base = stage_index, pipeline[stage_index], stage_base
        self._new_try(now)
        self._done({"action": "reassign", "worker": record.worker_id, "new_issue": issue, "project": project,
                    "branch": branch, "resumed": resumed, "base": base})

    def prepare_try(self, agent: dict[str, Any]) -> None:
        """The prepared try's agent tally starts afresh (or from the session it resumes), read from offset 0."""
        record = self._not_started("prepare a try")
        record.agent = agent
        record.events_offset = 0
        self._done()

    def started(self, pane: str, now: float) -> None:
        """The try runs in `pane` (its identity): timed from now, its start no longer a failure."""
        record = self._not_started("start it again")
        record.pane = pane
        record.launched = True
        # Timed from its real start: a try prepared before a pause (a rate limit, a login) waited without running.
        record.started_at = record.last_progress_at = now
        record.start_failures = 0
        # What rode on the session it continues was carried to it before its pane ran it (act.start_try): from
        # here on, what it ends with is its own, never the ended try's again.
        record.resume_session = None
        self._done()

    def found_started(self) -> None:
        """The probe saw this try running or ended: the monitor died after starting it, before recording that.
        Never started twice; what rode on the session it continues is its own from now on (started)."""
        if self.busy and not self.record.launched:
            self.record.launched = True
            self.record.resume_session = None
            self._done()

    def model_call_went_through(self) -> None:
        """A model call of this try succeeded: the next rate limit backs off from the start again."""
        if self.record.rate_limits:
            self.record.rate_limits = 0
            self._done()

    def action_failed(self, error: str, starting: bool = False) -> None:
        """An action on this worker failed; a try that never started counts (decide stops resuming it), as does
        an action `starting` the next try that could not begin (a PR stage: act fails the issue at the limit)."""
        record = self.record
        record.last_reason = error
        if self.busy and (starting or not record.launched):
            record.start_failures += 1
        self._done()

    # --- how a try ends -----------------------------------------------------------------------------------------

    def restart(self, *, counted: bool, nudge: bool, reason: str, continuation: bool, session: str | None,
                now: float) -> None:
        """The ended try is counted (a retry, or a try lost to tmux) and the next one recorded in one save: a
        monitor killed at any later step never judges the ended try again, and starts the next one continuing
        `session`, the ended try's (its follow-ups go on there), as this one would have."""
        record = self._holding("restart")
        if counted:
            record.retry_count += 1
        else:
            record.lost_tries += 1  # tmux or the machine went away: nobody's fault, counted apart
        record.nudged = record.nudged or nudge
        record.last_reason = reason
        self._new_try(now)
        record.resume_session = session
        self._done({"action": "restart", "worker": record.worker_id, "issue": record.issue_number,
                    "retry_count": record.retry_count, "counted": counted, "reason": reason,
                    "continuation": continuation, "session": session})

    def hold(self, *, reason: str, rate_limited: bool, until: str | None, now: float,
             session: str | None = None) -> None:
        """The try ended on a rate limit or a missing login: the next try is prepared, started once the pause
        lapses (continuing `session`, the held try's, when given); no retry is used."""
        record = self._holding("hold")
        if rate_limited:
            record.rate_limits += 1
        record.last_reason = reason
        self._new_try(now)  # not launched: decide resumes it when the pause no longer holds
        record.resume_session = session
        self._done({"action": "hold", "worker": record.worker_id, "issue": record.issue_number, "reason": reason,
                    "until": until, "session": session})

    def pushed(self) -> None:
        if self.record.push_failures:
            self.record.push_failures = 0
            self._done()

    def push_failed(self, error: str, retry: bool) -> None:
        record = self._holding("fail a push")
        record.push_failures += 1
        record.last_reason = (f"push failed (attempt {record.push_failures}, will retry): {error}" if retry
                              else f"push failed: {error}")
        self._done({"action": "push_failed", "worker": record.worker_id, "issue": record.issue_number,
                    "project": record.project, "error": error, "retry": retry})

    # --- stages ---------------------------------------------------------------------------------------------------

    def advance_stage(self, *, pipeline: Sequence[str], stage_base: str | None, now: float) -> None:
        """The next stage of the pipeline, begun at `stage_base`, with fresh counts and its first try prepared."""
        record = self._holding("advance")
        if record.stage_index + 1 >= len(pipeline):
            raise IllegalTransition(f"worker {record.worker_id}: #{record.issue_number} has no stage after "
                                    f"{record.stage or record.stage_index} (pipeline: {', '.join(pipeline)})")
        record.stage_index += 1
        record.stage = pipeline[record.stage_index]
        record.stage_base = stage_base
        self._new_stage()
        self._new_try(now)
        self._done({"action": "advance_stage", "worker": record.worker_id, "issue": record.issue_number,
                    "stage": record.stage})

    def _pr_loop(self, part: Callable[[], None]) -> None:
        """The PR loop's part of a transition known legal (orchestrator.pulls: `pr`, pull-requests.json, written
        last there); when it fails, `pr` is put back, so the error path saves nothing half-changed."""
        before = copy.deepcopy(self.record.pr)
        try:
            part()
        except BaseException:
            self.record.pr = before
            raise

    def enter_pr_stage(self, *, kind: str, stage_base: str | None, reason: str, now: float,
                       pr_part: Callable[[], None] = lambda: None) -> None:
        """A fix_ci / address_review stage on the same branch; `pr_part` (pulls.start_stage) sets the PR loop's
        `pr` once the stage is known legal."""
        record = self._holding(kind)
        if kind not in PR_STAGES:
            raise IllegalTransition(f"worker {record.worker_id}: {kind!r} is no pull-request stage")
        self._pr_loop(pr_part)
        record.stage, record.stage_base = kind, stage_base
        self._new_stage()
        record.last_reason = reason
        self._new_try(now)
        self._done({"action": kind, "worker": record.worker_id, "issue": record.issue_number,
                    "project": record.project, "reason": reason})

    def watch_pr(self, pipeline: Sequence[str], pr_part: Callable[[], None] = lambda: None) -> None:
        """A PR stage's fix was pushed: back to the pipeline's stage, watching the PR (`pr_part`,
        pulls.watch_again, once this is known legal)."""
        record = self._holding("watch its pull request")
        if not 0 <= record.stage_index < len(pipeline):
            raise IllegalTransition(f"worker {record.worker_id}: #{record.issue_number} has no stage "
                                    f"{record.stage_index} (pipeline: {', '.join(pipeline)})")
        self._pr_loop(pr_part)
        record.stage = pipeline[record.stage_index]
        self._done({"action": "pr_watch", "worker": record.worker_id, "issue": record.issue_number,
                    "project": record.project})

    # --- letting the issue go -----------------------------------------------------------------------------------

    def _let_go(self, verb: str, event: dict[str, Any]) -> None:
        """Journalled first, then saved free (the journal rule above: the config already says the issue is over)."""
        self._holding(verb)
        self.files.log_event(event)
        self._reset()
        self._done()

    def complete(self, pr: str | None = None) -> None:
        record = self._holding("complete")
        self._let_go("complete", {"action": "mark_complete", "worker": record.worker_id, "issue": record.issue_number,
                                  "project": record.project, **({"pr": pr} if pr is not None else {})})

    def fail(self, reason: str) -> None:
        record = self._holding("fail")
        self._let_go("fail", {"action": "skip", "worker": record.worker_id, "issue": record.issue_number,
                              "project": record.project, "reason": reason})

    def release(self, status: str) -> None:
        """The issue was completed, failed or removed behind this worker's back (a crash, a user's edit)."""
        record = self._holding("release")
        self._let_go("release", {"action": "release", "worker": record.worker_id, "issue": record.issue_number,
                                 "status": status})

    def free(self) -> None:
        """Let the issue go without an event: the caller journalled why (a set-up that failed), or nothing
        happened to the issue (a worker beyond --workers: it goes back to the queue; a record naming an issue
        of no project, edited by hand: decide takes it for free, so nothing else would ever let it go)."""
        if self.record.issue_number is None:
            raise IllegalTransition(f"worker {self.record.worker_id} holds no issue: it cannot be freed")
        self._reset()
        self._done()
