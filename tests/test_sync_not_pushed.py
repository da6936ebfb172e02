"""sync-all says `not pushed` only about commits that are on no remote-tracking ref."""
from __future__ import annotations

from tests.conftest import git


def reason_of(home, name: str) -> str:
    return next(r for r in home.state("sync-results.json")["results"] if r["repo"] == name)["reason"]


def test_not_pushed_only_for_commits_on_no_remote_tracking_ref(home, make_repo, inv, tmp_path):
    rewound = make_repo("rewound")
    first = rewound.head()
    for i in range(3):
        rewound.commit({f"f{i}": "x"}, f"pushed {i}")
    rewound.git("push", "-q", "origin", "main")
    git(tmp_path, "--git-dir", str(rewound.remote), "update-ref", "refs/heads/main", first)  # a force-rewind upstream
    local = make_repo("local")
    local.commit({"a": "1"}, "mine")
    local.commit({"b": "2"}, "mine too")
    elsewhere = make_repo("elsewhere")
    elsewhere.commit({"c": "3"}, "on a feature branch")
    elsewhere.git("push", "-q", "origin", "HEAD:refs/heads/feature")
    partly = make_repo("partly")
    partly.commit({"d": "4"}, "pushed to feature")
    partly.git("push", "-q", "origin", "HEAD:refs/heads/feature")
    partly.commit({"e": "5"}, "not anywhere")
    home.add(rewound, local, elsewhere, partly)
    result = inv("sync-all")
    assert result.code == 0, result.out + result.err
    assert reason_of(home, "rewound") == "ahead 3: pushed, but origin/main was rewound since"
    assert reason_of(home, "local") == "ahead 2, not pushed"
    assert reason_of(home, "elsewhere") == "ahead 1, all on other remote-tracking refs"
    assert reason_of(home, "partly") == "ahead 2, 1 not pushed"
    assert rewound.git("rev-parse", "main") != first  # sync never moves a branch that is ahead
