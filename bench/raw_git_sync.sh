#!/bin/sh
# The raw-git baseline every sync benchmark compares against, with no safety check at all:
#   git fetch -q origin; git merge -q --ff-only @{u}
# in every repo listed in DIR/repos.txt, PARALLEL at a time (xargs -P).
#   raw_git_sync.sh DIR [PARALLEL]
set -eu
[ $# -ge 1 ] || { echo "usage: raw_git_sync.sh DIR [PARALLEL]" >&2; exit 2; }
LIST="$1/repos.txt"
[ -f "$LIST" ] || { echo "raw_git_sync.sh: $LIST not found" >&2; exit 2; }
xargs -d '\n' -P "${2:-4}" -I{} sh -c 'git -C "{}" fetch -q origin 2>/dev/null; git -C "{}" merge -q --ff-only @{u} >/dev/null 2>&1; true' < "$LIST"
