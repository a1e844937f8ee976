#!/usr/bin/env bash
# Container entry point.
#   entrypoint.sh [SUBCOMMAND] [ARGS...]
# A first word that is a subcommand (eval, selftest, parity, bench, synth, compare) runs it; anything else, bare flags included,
# goes to `eval`, so `docker compose run eval --default-param-bw 4` evaluates FP32 and W4A8.
# `shell` opens bash. Before eval, a GPU preflight explains a missing GPU or one this image's torch
# cannot drive (exit code 3); pass --use-cuda false to run on the CPU instead.
set -euo pipefail

subcommands=" eval selftest parity bench synth compare "

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

# The --use-cuda value the CLI will see; `auto` when absent.
use_cuda=auto
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --use-cuda=*) use_cuda=${args[i]#--use-cuda=} ;;
        --use-cuda) use_cuda=${args[i + 1]:-} ;;
    esac
done

case "$subcommand" in
    eval)
        # a full evaluation on the CPU takes hours: without a GPU, say why unless the CPU was asked for
        if [ "$use_cuda" = auto ]; then
            use_cuda=true
        fi
        python -m hrnet_quanteval.preflight --use-cuda "$use_cuda"
        ;;
    selftest | parity | bench)
        python -m hrnet_quanteval.preflight --use-cuda "$use_cuda"
        ;;
esac

exec hrnet-quanteval "$subcommand" "$@"
