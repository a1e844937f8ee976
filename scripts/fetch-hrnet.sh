#!/usr/bin/env bash
# Fetch HRNet-Human-Pose-Estimation at exactly one commit into a new git checkout, and fail unless HEAD is it.
# usage: scripts/fetch-hrnet.sh REPO COMMIT DEST
set -euo pipefail

fail() {
    echo "fetch-hrnet: error: $*" >&2
    exit 1
}

[ $# -eq 3 ] || fail "usage: $0 REPO COMMIT DEST"
repo=$1
commit=$2
dest=$3
[ ! -e "$dest" ] || fail "$dest exists already; remove it or pick another folder"
git init -q "$dest"
git -C "$dest" fetch -q --depth 1 "$repo" "$commit" || fail "cannot fetch $commit from $repo"
git -C "$dest" checkout -q FETCH_HEAD
head=$(git -C "$dest" rev-parse HEAD)
[ "$head" = "$commit" ] || fail "$repo gave $head for $commit"
echo "fetch-hrnet: $dest is $repo at $commit"
