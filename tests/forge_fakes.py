"""Fake `gh` and `glab`: executables written into tmp_path and put first on PATH, serving a scripted forge.

They follow the real CLIs' documented arguments, JSON output and exit codes for the calls the orchestrator
makes (gh pr list/create/view/checks/merge, gh run view --log-failed, gh repo view, gh auth status; glab mr
list/create/view/merge, glab ci get/trace, glab auth status). The test scripts a JSON state file:

- `rounds`: one entry per head commit the PR has had (the first push, then each fix): `checks` (name and
  bucket: pass | fail | pending), `pending_polls` (polls of that head answered "pending" first), `review`
  (gh's reviewDecision), `comments`, `log` (the failed jobs' log text). A head past the list gets the last.
- `auth`, `fail` ({"pr create": {"code": 1, "stderr": "...", "times": K}}: a call that fails, its first K
  times only when `times` is given), `hang` (calls that
  never answer), `close` (a human closes the PR without merging at the next view), `lost_answer` (calls
  that do their work, then fail as if the connection dropped), `merge_queue` (gh: the repository merges through
  a queue: `gh pr merge` exits 0 and the PR stays open; glab does the same by default while a pipeline runs:
  auto-merge; `merge_queue: N` > 1: the queue merges it at the Nth view after, at the head it was queued at;
  `dequeue: K`: the first K times it leaves the queue unmerged instead; a queued PR shows as gh's
  isInMergeQueue (through `gh api graphql`, below), glab's merge_when_pipeline_succeeds; the Nth view is the
  Nth `gh pr view` / `glab mr view`; `merge_method: "merge"`: a base that moved since
  gets a merge commit, as a queue building on it would, instead of a fast-forward only), `list_lag` (gh: the
  first K `gh pr list` calls after a `gh pr create` do not show the new PR yet), `after_merge_fail` (gh: `fail` entries armed once
  `gh pr merge` is accepted: a network failure right after the merge), `merge_noop` (gh pr merge exits 0
  having done nothing), `unknown_fields` (gh pr view --json fields this
  gh is too old to know: gh's own error), `notes_order` ("desc": glab
  lists notes newest first). A PR may carry `cross` (opened from a fork) and its `base` may be changed
  (retargeted). `gh pr merge --match-head-commit` and `glab mr merge --sha` refuse a PR whose head moved.
- gh's `pr view --json` takes only the fields of gh's PullRequestFields (api/query_builder.go; `isInMergeQueue` is
  none of them: gh reads it only inside `gh pr merge`), less `unknown_fields`, and prints only those asked; another
  is gh's own refusal (`Unknown JSON field: "X"`, the available fields listed, exit 1). The queue is read as real
  gh can: `gh api graphql` (`-f query=...`, `-F number=N`, `-f owner= -f name=` or gh's `{owner}`/`{repo}`
  placeholders, `--hostname`) answers PullRequest's `isInMergeQueue`, `mergeQueueEntry { state position }`,
  `autoMergeRequest`, `state`, `number`; `graphql_unknown_fields` are fields the server's schema lacks (an older
  GitHub Enterprise): GitHub's `Field 'X' doesn't exist on type 'PullRequest'` (the body on stdout, `gh: ...` on
  stderr, exit 1). `auto_merge`: a human enabled auto-merge on every open PR (gh's autoMergeRequest).

Every call is appended to `calls.jsonl` beside the state ({"tool", "args", "cwd", and the GH_/GITLAB_/GL_
variables it was given as "env"}). The PR's head is read
from the bare remote (`remote` in the state), so a push by the orchestrator is what starts a new round.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FAKE = r'''
import json, os, re, subprocess, sys, time
from pathlib import Path

STATE = Path(__STATE__)
tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(STATE.with_name("calls.jsonl"), "a") as calls:
    calls.write(json.dumps({"tool": tool, "args": args, "cwd": os.getcwd(),
                            "env_repo": os.environ.get("GH_REPO"), "git_dir": os.environ.get("GIT_DIR"),
                            "env": {k: v for k, v in os.environ.items() if k.startswith(("GH_", "GITLAB_", "GL_"))}})
                + "\n")
state = json.loads(STATE.read_text())


def save():
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, STATE)


def opt(name, default=None):
    """A flag's value, given as `--flag value` or `--flag=value` (pflag reads both)."""
    for n, arg in enumerate(args):
        if arg == name and n + 1 < len(args):
            return args[n + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return default


def out(doc, code=0):
    print(json.dumps(doc))
    sys.exit(code)


def die(text, code=1):
    print(text, file=sys.stderr)
    sys.exit(code)


key = " ".join(args[:2])
if key in state.get("hang", []):
    time.sleep(3600)
if key in state.get("fail", {}) and state["fail"][key].get("times", 1) > 0:
    failure = state["fail"][key]
    if "times" in failure:  # fails its first `times` calls, then works
        failure["times"] -= 1
        save()
    die(failure.get("stderr", "failed"), failure.get("code", 1))
if args[:2] == ["auth", "status"]:
    if not state.get("auth", True):
        die("You are not logged into any GitHub hosts. To log in, run: gh auth login" if tool == "gh" else
            "x No token found (checked config file, keyring, and environment variables).")
    print("github.com\n  \u2713 Logged in to github.com account fake (keyring)", file=sys.stderr)
    sys.exit(0)


def head_of(branch):
    found = subprocess.run(["git", "--git-dir", state["remote"], "rev-parse", "--verify", "-q",
                            "refs/heads/" + branch], capture_output=True, text=True)
    return found.stdout.strip()


def find(number):
    for pr in state["prs"]:
        if pr["number"] == int(number):
            return pr
    die(("GraphQL: Could not resolve to a PullRequest with the number of %s." if tool == "gh" else
         "404 Not Found: merge request %s") % number)


def open_pr(url_form, head, base, title, body):
    """A new open PR, numbered after the last one made; its number and url (`url_form` % number)."""
    number = state.get("next_number", 1)
    state["next_number"] = number + 1
    url = url_form % number
    state["prs"].append({"number": number, "url": url, "head": head, "base": base, "title": title, "body": body,
                         "state": "OPEN"})
    save()
    return number, url


def round_of(pr):
    """The PR's round: which head commit it is at (a new push starts the next round). A merged PR keeps the
    head it was merged at (GitHub's headRefOid, GitLab's sha): a push to its branch afterwards is not its."""
    sha = pr.get("merged_sha") or head_of(pr["head"])
    heads = pr.setdefault("heads", [])
    if sha and sha not in heads:
        heads.append(sha)
    index = heads.index(sha) if sha in heads else 0
    rounds = state.get("rounds") or [{"checks": []}]
    polls = pr.setdefault("polls", {})
    return sha, index, rounds[min(index, len(rounds) - 1)], polls


def checks_of(pr, count_poll):
    sha, index, rnd, polls = round_of(pr)
    seen = polls.get(sha, 0)
    if count_poll:
        polls[sha] = seen + 1
    rows = []
    for n, check in enumerate(rnd.get("checks", [])):
        bucket = "pending" if seen < rnd.get("pending_polls", 0) else check.get("bucket", "pass")
        rows.append({"name": check["name"], "bucket": bucket,
                     "state": {"pass": "SUCCESS", "fail": "FAILURE", "pending": "PENDING"}[bucket],
                     "link": "https://github.com/org/app/actions/runs/%d/job/%d" % (100 + index, 500 + n)})
    return index, rnd, rows


# gh's PullRequestFields (api/query_builder.go, gh 2.29 and later): what `gh pr view --json` takes.
GH_PR_FIELDS = ("additions", "assignees", "author", "autoMergeRequest", "baseRefName", "body", "changedFiles",
                "closed", "closedAt", "comments", "commits", "createdAt", "deletions", "files", "fullDatabaseId",
                "headRefName", "headRefOid", "headRepository", "headRepositoryOwner", "id", "isCrossRepository",
                "isDraft", "labels", "latestReviews", "maintainerCanModify", "mergeCommit", "mergeStateStatus",
                "mergeable", "mergedAt", "mergedBy", "milestone", "number", "potentialMergeCommit", "projectCards",
                "projectItems", "reactionGroups", "reviewDecision", "reviewRequests", "reviews", "state",
                "statusCheckRollup", "title", "updatedAt", "url")


def auto_merge(pr):
    """gh's autoMergeRequest: set on an open PR where a human enabled auto-merge (`auto_merge`), else null."""
    return {"enabledAt": "2026-01-01T00:00:00Z", "mergeMethod": "MERGE"} \
        if state.get("auto_merge") and pr["state"] == "OPEN" else None


def closing(pr):
    if state.get("close") and pr["state"] == "OPEN":
        pr["state"] = "CLOSED"


def queue(pr, expected):
    """The PR joins the merge queue (or auto-merge is set): `merge_queue` N > 1 merges it at the Nth view after,
    `True` never; the first `dequeue` times it joins, it leaves the queue unmerged instead."""
    turns = state["merge_queue"] if type(state.get("merge_queue")) is int else 0
    pr["queued"] = [turns, expected]
    save()


def queue_turn(pr):
    """A view of a queued PR: the queue's turn may come (merged at the head queued) or it drops the PR."""
    if not pr.get("queued") or pr["state"] != "OPEN" or pr["queued"][0] <= 0:
        return
    pr["queued"][0] -= 1
    if pr["queued"][0] > 0:
        return
    expected = pr.pop("queued")[1]
    head = head_of(pr["head"])
    fits = merged_tree(head_of(pr["base"]), head) is not None
    if state.get("dequeue", 0) > 0 or (expected and expected != head) or not fits:
        state["dequeue"] = max(0, state.get("dequeue", 0) - 1)  # dropped: a push, a conflict, its checks failed
    else:
        merge(pr, expected)


def merged_tree(base_sha, head_sha):
    """What merging head into base gives: head itself (a fast-forward), or with `merge_method` "merge" the tree
    of a merge commit on a base that moved; None when it cannot be made."""
    if subprocess.run(["git", "--git-dir", state["remote"], "merge-base", "--is-ancestor", base_sha,
                       head_sha]).returncode == 0:
        return head_sha
    if state.get("merge_method") != "merge":
        return None
    tree = subprocess.run(["git", "--git-dir", state["remote"], "merge-tree", "--write-tree", base_sha, head_sha],
                          capture_output=True, text=True)
    return tree.stdout.split()[0] if tree.returncode == 0 else None


def merge(pr, expected):
    base_sha, head_sha = head_of(pr["base"]), head_of(pr["head"])
    if expected and expected != head_sha:
        die("GraphQL: Head branch was modified. Review and try the merge again. (mergePullRequest)" if tool == "gh"
            else "PUT merge_requests/%d/merge: 409 {message: SHA does not match HEAD of source branch: %s}"
            % (pr["number"], head_sha))
    result = merged_tree(base_sha, head_sha)
    if result is None:
        die("Pull request is not mergeable: the merge commit cannot be cleanly created.")
    if result != head_sha:  # the forge's merge commit, on the base as it is now
        result = subprocess.run(["git", "--git-dir", state["remote"], "-c", "user.name=GitHub", "-c",
                                 "user.email=noreply@github.com", "commit-tree", result, "-p", base_sha, "-p",
                                 head_sha, "-m", "Merge pull request #%d" % pr["number"]],
                                capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "--git-dir", state["remote"], "update-ref", "refs/heads/" + pr["base"], result],
                   check=True)
    pr["state"], pr["merged_sha"] = "MERGED", head_sha


if tool == "gh":
    if args[:2] == ["pr", "list"]:
        head = opt("--head")
        if state.get("lagging", 0) > 0:  # a list that does not show the PR just created yet
            state["lagging"] -= 1
            save()
            out([])
        out([{"number": p["number"], "url": p["url"], "state": p["state"], "headRefName": p["head"],
              "baseRefName": p["base"], "isCrossRepository": bool(p.get("cross"))}
             for p in state["prs"] if head in (None, p["head"])])
    if args[:2] == ["pr", "create"]:
        head, base = opt("--head"), opt("--base")
        for p in state["prs"]:
            if p["head"] == head and p["state"] == "OPEN" and p["base"] == base and not p.get("cross"):
                die('a pull request for branch "%s" into branch "%s" already exists:\n%s' % (head, base, p["url"]))
        if not head_of(head):
            die("pull request create failed: GraphQL: Head sha can't be blank, Base sha can't be blank, "
                "No commits between %s and %s, Head ref must be a branch (createPullRequest)" % (base, head))
        number, url = open_pr("https://github.com/org/app/pull/%d", head, base, opt("--title"), opt("--body"))
        state["lagging"] = state.get("list_lag", 0)
        save()
        if "pr create" in state.get("lost_answer", []):  # opened, but the answer never came back
            die("Post \"https://api.github.com/graphql\": read tcp 10.0.0.2:5555->140.82.112.6:443: read: "
                "connection reset by peer")
        print(url)
        sys.exit(0)
    if args[:2] == ["pr", "view"]:
        asked = (opt("--json") or "").split(",")
        known = sorted(f for f in GH_PR_FIELDS if f not in state.get("unknown_fields", []))
        for field in asked:
            if field not in known:  # gh's own check (cmdutil.AddJSONFlags), before any request
                die('Unknown JSON field: "%s"\nAvailable fields:\n  %s' % (field, "\n  ".join(known)))
        pr = find(args[2])
        closing(pr)
        queue_turn(pr)
        sha, index, rnd, _ = round_of(pr)
        save()
        # gh lists every review the PR ever had (one per round here, its comments as one body), oldest first.
        reviews = [{"id": "PRR_%d" % n, "author": {"login": "reviewer"}, "body": "\n\n".join(r.get("comments", [])),
                    "state": r["review"], "submittedAt": "2026-01-01T00:%02d:00Z" % n}
                   for n, r in enumerate((state.get("rounds") or [])[:index + 1])
                   if r.get("review") in ("CHANGES_REQUESTED", "APPROVED", "COMMENTED")]
        doc = {"number": pr["number"], "url": pr["url"], "state": pr["state"], "headRefOid": sha,
               "baseRefName": pr["base"], "headRefName": pr["head"], "isCrossRepository": bool(pr.get("cross")),
               "reviewDecision": rnd.get("review", ""), "reviews": reviews, "autoMergeRequest": auto_merge(pr)}
        out({field: doc.get(field) for field in asked if field})  # gh prints the fields asked, no other
    if args[:2] == ["api", "graphql"]:
        fields = {}
        for n, arg in enumerate(args):
            if arg in ("-f", "-F", "--raw-field", "--field") and n + 1 < len(args) and "=" in args[n + 1]:
                key, value = args[n + 1].split("=", 1)
                if arg in ("-F", "--field"):  # gh's magic: integers, and {owner}/{repo} from the current repository
                    value = int(value) if value.isdigit() else {"{owner}": "org", "{repo}": "app"}.get(value, value)
                fields[key] = value
        query = str(fields.pop("query", ""))
        if not query or type(fields.get("number")) is not int or not fields.get("owner") or not fields.get("name"):
            die("gh: Variable $number of type Int! was provided invalid value (HTTP 200)")
        lacking = [f for f in state.get("graphql_unknown_fields", []) if re.search(r"\b%s\b" % f, query)]
        if lacking:  # the server's schema lacks them: GitHub's validation errors, no data
            errors = ["Field '%s' doesn't exist on type 'PullRequest'" % f for f in lacking]
            print(json.dumps({"errors": [{"message": e, "extensions": {"code": "undefinedField",
                                                                       "typeName": "PullRequest"}} for e in errors]}))
            die("gh: " + "\n".join(errors))
        pr = find(fields["number"])
        queued = bool(pr.get("queued")) and pr["state"] == "OPEN"
        answer = {"number": pr["number"], "state": pr["state"], "isInMergeQueue": queued,
                  "mergeQueueEntry": {"state": "AWAITING_CHECKS", "position": 1} if queued else None,
                  "autoMergeRequest": auto_merge(pr)}
        out({"data": {"repository": {"pullRequest": {k: v for k, v in answer.items()
                                                       if re.search(r"\b%s\b" % k, query)}}}})
    if args[:2] == ["pr", "checks"]:
        pr = find(args[2])
        _, _, rows = checks_of(pr, True)
        save()
        if not rows:
            die("no checks reported on the '%s' branch" % pr["head"])
        buckets = {r["bucket"] for r in rows}
        out(rows, 1 if "fail" in buckets else 8 if "pending" in buckets else 0)
    if args[:2] == ["run", "view"] and "--log-failed" in args:
        index = int(args[2]) - 100
        rounds = state.get("rounds") or [{}]
        text = rounds[min(index, len(rounds) - 1)].get("log", "")
        print("\n".join("build\tRun tests\t" + line for line in text.splitlines()))
        sys.exit(0)
    if args[:2] == ["repo", "view"]:
        out(state.get("repo", {"mergeCommitAllowed": False, "squashMergeAllowed": True,
                               "rebaseMergeAllowed": True}))
    if args[:2] == ["pr", "merge"]:
        if not any(flag in args for flag in ("--merge", "--squash", "--rebase")):
            die("--merge, --rebase, or --squash required when not running interactively")
        pr = find(args[2])
        if state.get("merge_noop"):  # a CLI that says nothing went wrong and did nothing
            sys.exit(0)
        state.setdefault("fail", {}).update(state.pop("after_merge_fail", {}))  # armed once a merge is accepted
        if state.get("merge_queue"):  # documented: with a merge queue the PR is queued (or auto-merge enabled)
            queue(pr, opt("--match-head-commit"))
            print("\u2713 Pull request #%d will be added to the merge queue for %s when ready" % (pr["number"],
                                                                                             pr["base"]))
            sys.exit(0)
        merge(pr, opt("--match-head-commit"))
        save()
        if "pr merge" in state.get("lost_answer", []):  # merged, but the answer never came back
            die("Post \"https://api.github.com/graphql\": read tcp: connection reset by peer")
        print("\u2713 Merged pull request #%d" % pr["number"])
        sys.exit(0)
else:
    def mr(pr):
        return {"iid": pr["number"], "web_url": pr["url"], "source_branch": pr["head"],
                "source_project_id": 2 if pr.get("cross") else 1, "target_project_id": 1,
                "target_branch": pr["base"], "state": {"OPEN": "opened", "MERGED": "merged",
                                                       "CLOSED": "closed"}[pr["state"]]}
    if args[:2] == ["mr", "list"]:
        head = opt("--source-branch")
        out([mr(p) for p in state["prs"] if head in (None, p["head"])])
    if args[:2] == ["mr", "create"]:
        head, base = opt("--source-branch"), opt("--target-branch")
        for p in state["prs"]:
            if p["head"] == head and p["state"] == "OPEN" and p["base"] == base and not p.get("cross"):
                die('failed to create merge request. Another open merge request already exists for this source '
                    'branch: !%d' % p["number"])
        number, url = open_pr("https://gitlab.example.com/group/app/-/merge_requests/%d", head, base, opt("--title"),
                              opt("--description"))
        print("\nCreating merge request for %s into %s in group/app\n\n!%d %s\n%s" % (
            head, base, number, opt("--title"), url))
        sys.exit(0)
    if args[:2] == ["mr", "view"]:
        pr = find(args[2])
        closing(pr)
        queue_turn(pr)
        index, rnd, rows = checks_of(pr, True)
        sha = pr["heads"][index] if pr.get("heads") else ""
        save()
        buckets = {r["bucket"] for r in rows}
        status = ("failed" if "fail" in buckets else "running" if "pending" in buckets else
                  "success" if rows else None)
        doc = mr(pr)
        doc.update({"sha": sha, "head_pipeline": {"id": 1000 + index, "status": status} if status else None,
                    "detailed_merge_status": "requested_changes" if rnd.get("review") == "CHANGES_REQUESTED"
                    else "mergeable", "approved": rnd.get("review") == "APPROVED",
                    "merge_when_pipeline_succeeds": bool(pr.get("queued")) and pr["state"] == "OPEN"})
        if "--comments" in args:
            # Every note the MR ever had, system notes included (glab marshals them under "Notes"); GitLab's
            # API lists them newest first unless asked otherwise: `notes_order` "desc" serves them so.
            notes = [{"id": 9000 + i * 1000 + n, "body": text, "system": False, "author": {"username": "reviewer"}}
                     for i, r in enumerate((state.get("rounds") or [])[:index + 1])
                     for n, text in enumerate(r.get("comments", []))]
            notes.insert(0, {"id": 8999, "body": "added 1 commit", "system": True, "author": {"username": "bot"}})
            notes = notes[::-1] if state.get("notes_order") == "desc" else notes
            # glab asks for one page of them: --page (1) and --per-page (default 20), as `glab mr view` does.
            page, per_page = int(opt("--page", "1")), int(opt("--per-page", "20"))
            doc["Notes"] = notes[(page - 1) * per_page:page * per_page]
        out(doc)
    if args[:2] == ["ci", "get"]:
        index = int(opt("--pipeline-id")) - 1000
        rounds = state.get("rounds") or [{}]
        rnd = rounds[min(index, len(rounds) - 1)]
        out({"id": 1000 + index, "status": "failed", "jobs": [
            {"id": 7000 + index * 10 + n, "name": c["name"],
             "status": "failed" if c.get("bucket") == "fail" else "success"}
            for n, c in enumerate(rnd.get("checks", []))]})
    if args[:2] == ["ci", "trace"]:
        index = (int(args[2]) - 7000) // 10
        rounds = state.get("rounds") or [{}]
        print(rounds[min(index, len(rounds) - 1)].get("log", ""))
        sys.exit(0)
    if args[:2] == ["mr", "merge"]:
        pr = find(args[2])
        _, _, rows = checks_of(pr, False)
        running = any(r["bucket"] == "pending" for r in rows)
        if (state.get("merge_queue") or running) and opt("--auto-merge", "true") == "true":
            # documented: while a pipeline runs, auto-merge is enabled by default (merged later, not now)
            queue(pr, opt("--sha"))
            print("\u2713 Will auto-merge when the pipeline succeeds")
            sys.exit(0)
        merge(pr, opt("--sha"))
        save()
        print("\u2713 Merged!")
        sys.exit(0)
die("fake %s: unknown command: %s" % (tool, " ".join(args)), 1)
'''


@dataclass
class FakeForge:
    bin_dir: Path
    state_file: Path

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def update(self, **changes: Any) -> None:
        doc = self.state()
        doc.update(changes)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.state_file)

    def calls(self, tool: str | None = None) -> list[list[str]]:
        path = self.state_file.with_name("calls.jsonl")
        lines = [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []
        return [c["args"] for c in lines if tool in (None, c["tool"])]

    def call_records(self) -> list[dict[str, Any]]:
        path = self.state_file.with_name("calls.jsonl")
        return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []

    def prs(self) -> list[dict[str, Any]]:
        return self.state()["prs"]


def push_issue_branch(proj: Any, name: str) -> str:
    """A commit adding the file `name` on feature/issue-1 of the project's repo, force-pushed to its remote (the
    next round of the PR, or someone else's push); its sha."""
    from conftest import git

    git(proj.repo, "switch", "-q", "-C", "feature/issue-1")
    (proj.repo / name).write_text(name)
    git(proj.repo, "add", "-A")
    git(proj.repo, "commit", "-q", "-m", name)
    git(proj.repo, "push", "-q", "-f", "origin", "feature/issue-1")
    return git(proj.repo, "rev-parse", "HEAD")


def opened_pr(project: Any, fake_forge: Any, merge: str = "auto", **state: Any) -> tuple[Any, Any, Path, Any, Any]:
    """A github project whose issue #1's PR is open on a fake forge whose checks pass (`state`: the forge's
    scripted state, as fake_forge takes it): (project, its config, state root, the forge, the worker record)."""
    from lib.paths import Paths
    from orchestrator import pins, pulls
    from orchestrator.config import load_config
    from orchestrator.state import WorkerRecord

    proj = project([{"number": 1, "title": "t"}], pipeline=["implement"], platform="github",
                   review={"open": "pr", "merge": merge, "poll_seconds": 5})
    cfg = load_config(proj.config)
    state_root = proj.home / "state"
    assert pins.ensure([cfg], state_root, Paths.from_env().home) == {}
    fake = fake_forge(proj.remote, [{"checks": [{"name": "build", "bucket": "pass"}]}], **state)
    record = WorkerRecord(1, status="running", project="demo", issue_number=1, branch="feature/issue-1")
    push_issue_branch(proj, "a")
    pulls.open_pr(state_root, cfg, cfg.issues[0], record, 0.0)
    return proj, cfg, state_root, fake, record


@pytest.fixture
def fake_forge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Factory: fake gh and glab first on PATH, serving `rounds` for the PRs of the bare `remote`."""

    def factory(remote: Path, rounds: list[dict[str, Any]] | None = None, **state: Any) -> FakeForge:
        root = tmp_path / "forge"
        bin_dir = root / "bin"
        bin_dir.mkdir(parents=True)
        state_file = root / "state.json"
        state_file.write_text(json.dumps({"remote": str(remote), "auth": True, "prs": [], "next_number": 1,
                                          "rounds": rounds or [{"checks": [{"name": "build", "bucket": "pass"}]}],
                                          **state}))
        script = f"#!{os.path.realpath(sys.executable)}\n" + FAKE.replace("__STATE__", repr(str(state_file)))
        for tool in ("gh", "glab"):
            path = bin_dir / tool
            path.write_text(script)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        return FakeForge(bin_dir, state_file)

    return factory
