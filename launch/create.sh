#!/usr/bin/env bash
# Create the TPU VM (or queued resource) --name and wait until it is READY (ACTIVE).
set -euo pipefail
ACTION_FLAGS='--no-wait'
USAGE='Usage: launch/create.sh --name NAME --zone ZONE --accelerator TYPE [--spot|--reserved] [--queued] [--no-wait] [--dry-run]

Creates a TPU VM with "gcloud compute tpus tpu-vm create" (which returns once it
is READY), or with --queued a queued resource ("queued-resources create", node id
= NAME) and then polls until it is ACTIVE (--no-wait: return at once).'
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
note "create $NAME: $ACCEL ($(num_workers "$ACCEL") worker(s)) in $ZONE, $kind"

if ((QUEUED)); then
  gcloud_args queued-resources create
  run "${GCLOUD[@]}" --node-id="$NAME" --accelerator-type="$ACCEL" \
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
