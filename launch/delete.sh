#!/usr/bin/env bash
# Delete the TPU VM (or queued resource, with its node) --name, without a prompt.
set -euo pipefail
USAGE='Usage: launch/delete.sh --name NAME --zone ZONE [--queued [--num_slices N]] [--dry-run]

Deletes the TPU VM (tpu-vm delete --quiet), or with --queued the queued resource
and its node (queued-resources delete --force --quiet); with --num_slices N, all N
nodes NAME-0 .. NAME-(N-1) go with it. The workdir on GCS stays.'
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone

if ((QUEUED)); then
  # --force deletes the nodes with the queued resource: every slice of a multislice.
  ((NUM_SLICES == 1)) || note "delete $NAME with its $NUM_SLICES nodes $(node 0) .. $(node $((NUM_SLICES - 1)))"
  gcloud_args queued-resources delete
  run "${GCLOUD[@]}" --force --quiet
else
  gcloud_args tpu-vm delete
  run "${GCLOUD[@]}" --quiet
fi
