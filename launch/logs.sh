#!/usr/bin/env bash
# Follow the trainer's log of run --run on a worker of --name (Ctrl-C stops following,
# not the run).
set -euo pipefail
ACTION_FLAGS='--worker --lines --no-follow --slice'
USAGE='Usage: launch/logs.sh --name NAME --zone ZONE [--run RUN] [--worker N|all] [--slice N|all] [--lines N] [--no-follow] [--dry-run]

Prints the last --lines (100) lines of the run'"'"'s log on --worker (0; all: every
worker, interleaved) and follows it (tail -F) unless --no-follow. Each worker keeps
its log in ~/stvit_jax_runs/RUN/log. With --num_slices N: on the workers of --slice
(default: 0, or all with --worker=all), i.e. of node NAME-SLICE.'
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone
[[ -n $RUN ]] || die "--run is required (default: --name)"
if [[ -z $SLICE ]]; then
  SLICE=0
  [[ $WORKER != all ]] || SLICE=all
fi

if ((NUM_SLICES == 1)) || [[ $SLICE != all ]]; then
  ssh_node "${SLICE/all/0}" "$WORKER" "$(logs_script)"
elif ((NO_FOLLOW)); then
  ssh_all "$WORKER" "$(logs_script)"  # each node's tail returns: one node after the other
else
  # tail -F never returns, so one ssh per node in turn would follow only the first: the
  # queued resource's own ssh reaches every node at once (--node=all), and Ctrl-C stops all.
  gcloud_args queued-resources ssh
  run "${GCLOUD[@]}" --node=all --worker="$WORKER" --command="$(logs_script)"
fi
