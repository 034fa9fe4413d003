#!/usr/bin/env bash
# Follow the trainer's log of run --run on a worker of --name (Ctrl-C stops following,
# not the run).
set -euo pipefail
ACTION_FLAGS='--worker --lines --no-follow'
USAGE='Usage: launch/logs.sh --name NAME --zone ZONE [--run RUN] [--worker N|all] [--lines N] [--no-follow] [--dry-run]

Prints the last --lines (100) lines of the run'"'"'s log on --worker (0; all: every
worker, interleaved) and follows it (tail -F) unless --no-follow. Each worker keeps
its log in ~/stvit_jax_runs/RUN/log.'
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone
[[ -n $RUN ]] || die "--run is required (default: --name)"

ssh_all "$WORKER" "$(logs_script)"
