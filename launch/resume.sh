#!/usr/bin/env bash
# Make run --run go on after a preemption: re-create --name when it was preempted
# (or is gone), set it up, and start the same command with the same workdir; the
# trainer restores the latest checkpoint there. A no-op while the run is active.
set -euo pipefail
ACTION_FLAGS='--follow'
TAKES_OVERRIDES=1
USAGE='Usage: launch/resume.sh (the flags of launch/run.sh) [--follow] [-- --config.a.b=v ...]

Reads the state of --name, then:
  READY (queued: ACTIVE)                       -> setup + run --ensure
  PREEMPTED, TERMINATED (queued: SUSPENDED,
  SUSPENDING, FAILED)                          -> delete, create, setup, run --ensure
  absent                                       -> create, setup, run --ensure
  CREATING, WAITING_FOR_RESOURCES, ...         -> wait, then setup + run --ensure
setup is a no-op on workers that have --ref installed, and run --ensure leaves an
active or successfully finished run alone, so resume can run on a timer:
  while sleep 600; do launch/resume.sh ARGS... -- OVERRIDES...; done
Give it the same flags and overrides as the first launch/run.sh.'
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone accelerator bucket config
resolve_ref
check_config
profile_args
run_args=("${PROFILE_ARGS[@]}" --ensure)
((!FOLLOW)) || run_args+=(--follow)

sub() {  # sub SCRIPT ARGS...: another launch/ script, which prints its own commands
  local script=$1
  shift
  bash "$LAUNCH_DIR/$script" "$@"
}

if ((DRY_RUN)); then
  describe_args
  note "resume $NAME: its state is read with"
  show "${GCLOUD[@]}"
  note "when it is PREEMPTED or TERMINATED (a queued resource: SUSPENDED, SUSPENDING or FAILED):"
  sub delete.sh "${PROFILE_ARGS[@]}"
  note "then (and when it does not exist):"
  sub create.sh "${PROFILE_ARGS[@]}"
  note "then in every case (setup is a no-op where --ref is installed):"
else
  s=$(state)
  case "$s" in
    READY|ACTIVE)
      note "$NAME is $s" ;;
    NOT_FOUND)
      note "$NAME does not exist: creating it"
      sub create.sh "${PROFILE_ARGS[@]}" ;;
    PREEMPTED|TERMINATED|SUSPENDED|SUSPENDING|FAILED)
      note "$NAME is $s: deleting and re-creating it"
      sub delete.sh "${PROFILE_ARGS[@]}"
      sub create.sh "${PROFILE_ARGS[@]}" ;;
    CREATING|STARTING|RESTARTING|REPAIRING|ACCEPTED|PROVISIONING|WAITING_FOR_RESOURCES)
      note "$NAME is $s: waiting for it"
      wait_ready ;;
    STOPPED)
      die "$NAME is STOPPED: start it (gcloud compute tpus tpu-vm start $NAME --zone=$ZONE) or delete it, then resume again" ;;
    *)
      die "$NAME is $s, which resume does not handle (it re-creates PREEMPTED/TERMINATED, queued SUSPENDED/FAILED); try again later, or launch/delete.sh it and resume" ;;
  esac
fi
sub setup.sh "${PROFILE_ARGS[@]}"
sub run.sh "${run_args[@]}" -- ${OVERRIDES[@]+"${OVERRIDES[@]}"}
