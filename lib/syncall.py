"""sync-all's use case for both front doors (`inv sync-all`, scripts/sync_all_repos.py): the sync here, or in a
build host's workspace. Apart from lib.sync, which is uploaded to hosts and runs there, and from lib.remote.sync,
which imports lib.sync."""
from __future__ import annotations

from lib.config import load_workspace
from lib.paths import Paths
from lib.sync import NET_TIMEOUT_S, SyncOutcome, SyncReport, run_sync
from lib.views import load_tables_meanwhile


def run_command(paths: Paths, tags: list[str] | None = None, net_jobs: int = 4,
                timeout: float | None = NET_TIMEOUT_S, clone_missing: bool = False, dry_run: bool = False,
                host: str = "", accept_new_host_key: bool = False) -> SyncReport:
    """`inv sync-all` and scripts/sync_all_repos.py: the sync here, or in a build host's workspace (`host`).

    Both doors print the report's table, its `closing_line` and then its `notes` (warnings such as a results
    file set aside or not recorded).
    """
    if host:
        from lib.remote.sync import sync_on_host  # lazily: a sync here never loads paramiko (start-up time)

        return sync_on_host(paths, host, tags, net_jobs, timeout, clone_missing, dry_run, accept_new_host_key)
    loading: list[bool] = []

    def first_done(outcome: SyncOutcome) -> None:
        # Both doors print the outcomes' table at the end: its library is imported meanwhile, once the repos
        # are under way (before, it held up the start of the first fetch).
        if not loading:
            loading.append(True)
            load_tables_meanwhile()

    return run_sync(paths, load_workspace(paths.repos_file), tags, net_jobs, timeout, clone_missing, dry_run,
                    on_done=first_done)
