#!/usr/bin/env bash
# Container entry point.
#   entrypoint.sh [SUBCOMMAND] [ARGS...]
# A first word that is a subcommand (eval, selftest, parity, bench, diagnose, synth, compare) runs it; anything else, bare flags included,
# goes to `eval`, so `docker compose run eval --default-param-bw 4` evaluates FP32 and W4A8.
# `shell` opens bash. --help, -h or --version anywhere print and exit, with no GPU or dataset check.
# Before eval, selftest, parity and bench a GPU preflight explains a missing GPU or one this image's torch
# cannot drive (exit code 3); without --use-cuda, eval asks for a GPU (a full evaluation on the CPU takes
# hours): pass --use-cuda false to run on the CPU instead. Before eval and parity, a missing or empty dataset
# folder is explained (exit code 2).
# Environment: HRNET_QUANTEVAL_UMASK (default 0022) is the umask of everything a run writes: with 0022 the
# results are readable by every user of the host, whichever uid the container ran as.
set -euo pipefail

fail() {
    echo "entrypoint: error: $*" >&2
    exit 2
}

file_umask=${HRNET_QUANTEVAL_UMASK:-0022}
[[ "$file_umask" =~ ^0?[0-7]{3}$ ]] || fail "HRNET_QUANTEVAL_UMASK=$file_umask is not an octal umask such as 0022 or 0002"
umask "$file_umask"

# Under a uid with no home (compose's user: HOST_UID:HOST_GID), libraries that keep caches in ~ get /tmp.
if [ ! -w "${HOME:-/}" ]; then
    export HOME=/tmp
fi

subcommands=" eval selftest parity bench diagnose synth compare "

if [ $# -eq 0 ]; then
    set -- eval
fi
case "$1" in
    shell)
        shift
        exec bash "$@"
        ;;
    -h | --help | --version)
        exec hrnet-quanteval "$@"
        ;;
esac
if [[ "$subcommands" == *" $1 "* ]]; then
    subcommand=$1
    shift
else
    subcommand="eval"
fi

# What was given: --help/--version anywhere, the --use-cuda value (empty when absent), the dataset folder.
use_cuda=""
dataset=${HRNET_QUANTEVAL_DATASET:-}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --) break ;;
        -h | --help) exec hrnet-quanteval "$subcommand" "$@" ;;
        --version) exec hrnet-quanteval --version ;;
        --use-cuda=*) use_cuda=${args[i]#--use-cuda=} ;;
        --use-cuda) use_cuda=${args[i + 1]:-} ;;
        --evaluation-dataset=*) dataset=${args[i]#--evaluation-dataset=} ;;
        --evaluation-dataset) dataset=${args[i + 1]:-} ;;
    esac
done

# The preflight is told exactly what was given: --use-cuda VALUE, or, for eval without one, `auto` plus
# --require-gpu (eval's default here is a GPU; the preflight says that no --use-cuda was given).
case "$subcommand" in
    eval)
        if [ -z "$use_cuda" ]; then
            python -m hrnet_quanteval.preflight --use-cuda auto --require-gpu
        else
            python -m hrnet_quanteval.preflight --use-cuda "$use_cuda"
        fi
        ;;
    selftest | parity | bench | diagnose)
        python -m hrnet_quanteval.preflight --use-cuda "${use_cuda:-auto}"
        ;;
esac

# In the image the dataset is a mount; without one /data/coco is an empty folder.
case "$subcommand" in
    eval | parity | diagnose)
        if [ -n "$dataset" ]; then
            how="Set COCO_DIR to the host folder that holds annotations/person_keypoints_val2017.json and images/val2017/ (or val2017/): compose mounts it read-only at /data/coco (COCO_DIR=/path/to/coco docker compose run --rm eval); with docker run pass -v /path/to/coco:/data/coco:ro; or pass --evaluation-dataset DIR."
            if [ ! -d "$dataset" ]; then
                fail "the COCO dataset folder $dataset does not exist. $how"
            fi
            entries=$(find "$dataset" -mindepth 1 -maxdepth 1 -print -quit 2>/dev/null || true)
            if [ -z "$entries" ]; then
                fail "the COCO dataset folder $dataset is empty or unreadable (nothing is mounted there). $how"
            fi
        fi
        ;;
esac

exec hrnet-quanteval "$subcommand" "$@"
