#!/usr/bin/env bash
# Delete the TPU VM (or queued resource, with its node) --name, without a prompt.
set -euo pipefail
USAGE='Usage: launch/delete.sh --name NAME --zone ZONE [--queued] [--dry-run]

Deletes the TPU VM (tpu-vm delete --quiet), or with --queued the queued resource
and its node (queued-resources delete --force --quiet). The workdir on GCS stays.'
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone

if ((QUEUED)); then
  gcloud_args queued-resources delete
  run "${GCLOUD[@]}" --force --quiet
else
  gcloud_args tpu-vm delete
  run "${GCLOUD[@]}" --quiet
fi
