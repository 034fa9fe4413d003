#!/usr/bin/env bash
# Create the TPU VM (or queued resource) --name and wait until it is READY (ACTIVE).
set -euo pipefail
ACTION_FLAGS='--no-wait'
USAGE='Usage: launch/create.sh --name NAME --zone ZONE --accelerator TYPE [--spot|--reserved] [--queued [--num_slices N]] [--no-wait] [--dry-run]

Creates a TPU VM with "gcloud compute tpus tpu-vm create" (which returns once it
is READY), or with --queued a queued resource ("queued-resources create", node id
= NAME) and then polls until it is ACTIVE (--no-wait: return at once).
--num_slices N (N > 1, with --queued): one queued resource of N slices of TYPE
(Multislice: --node-count N --node-prefix NAME), nodes NAME-0 .. NAME-(N-1).'
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone accelerator

family=$(tpu_family "$ACCEL")
runtime=${RUNTIME:-$(family_runtime "$family")}
capacity=()
((!SPOT)) || capacity=(--spot)
((!RESERVED)) || capacity=(--reserved)
kind=on-demand
((!SPOT)) || kind=spot
((!RESERVED)) || kind=reserved
((!QUEUED)) || kind="$kind, queued resource"
if ((NUM_SLICES == 1)); then
  note "create $NAME: $ACCEL ($(num_workers "$ACCEL") worker(s)) in $ZONE, $kind"
  nodes=(--node-id="$NAME")
else
  note "create $NAME: $NUM_SLICES slices of $ACCEL ($(num_workers "$ACCEL") worker(s) each) in $ZONE, $kind; nodes $(node 0) .. $(node $((NUM_SLICES - 1)))"
  # --node-count replaces --node-id (the reference: exactly one of the two); the prefix is
  # given although it defaults to the queued resource's id, so that the node names the
  # other scripts ssh to do not rest on a default.
  nodes=(--node-count="$NUM_SLICES" --node-prefix="$NAME")
fi

if ((QUEUED)); then
  gcloud_args queued-resources create
  run "${GCLOUD[@]}" "${nodes[@]}" --accelerator-type="$ACCEL" \
    --runtime-version="$runtime" ${capacity[@]+"${capacity[@]}"}
  if ((NO_WAIT)); then
    note "not waiting (--no-wait): launch/setup.sh needs $NAME ACTIVE"
  else
    wait_ready
  fi
else
  gcloud_args tpu-vm create
  run "${GCLOUD[@]}" --accelerator-type="$ACCEL" --version="$runtime" \
    ${capacity[@]+"${capacity[@]}"}
fi
