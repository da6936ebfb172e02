#!/bin/sh
# The raw-git baseline every status benchmark compares against: the least work a
# multi-repo status can do. For each repo in DIR/repos.txt run
#   git status --porcelain=v2 --branch   and   git log -1
# in PARALLEL shells (xargs -P), parsing in the shell, one line per repo.
#   raw_git_status.sh DIR [PARALLEL]
set -eu
[ $# -ge 1 ] || { echo "usage: raw_git_status.sh DIR [PARALLEL]" >&2; exit 2; }
DIR=$1
P=${2:-1}
LIST="$DIR/repos.txt"
[ -f "$LIST" ] || { echo "raw_git_status.sh: $LIST not found" >&2; exit 2; }
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null LC_ALL=C

ONE='
r=$1
st=$(git -C "$r" status --porcelain=v2 --branch) || { printf "%s\tERROR\n" "$r"; exit 0; }
lg=$(git -C "$r" log -1 --format="%h%x09%s%x09%cI")
head=?; ab=-; changed=0; untracked=0
nl="
"
IFS=$nl
for line in $st; do
  case $line in
    "# branch.head "*) head=${line#\# branch.head } ;;
    "# branch.ab "*)   ab=${line#\# branch.ab } ;;
    "#"*) ;;
    "? "*) untracked=$((untracked + 1)) ;;
    *) changed=$((changed + 1)) ;;
  esac
done
printf "%s\t%s\t%s\tchanged=%d untracked=%d\t%s\n" "$r" "$head" "$ab" "$changed" "$untracked" "$lg"
'
if [ "$P" -le 1 ]; then
    while IFS= read -r repo; do sh -c "$ONE" sh "$repo"; done < "$LIST"
else
    xargs -d '\n' -n 1 -P "$P" sh -c "$ONE" sh < "$LIST"
fi
