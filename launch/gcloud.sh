# shellcheck shell=bash
# shellcheck disable=SC2034  # globals shared with common.sh and the scripts
#
# Sourced by common.sh (never run): the gcloud TPU commands the scripts print or run,
# the node names of one or several slices, ssh to their workers, the queued resource's
# state, and the text templates of the remote scripts.

gcloud_args() {  # gcloud_args KIND VERB [RESOURCE]: the start of a gcloud TPU command for
  # RESOURCE (default --name)
  GCLOUD=(gcloud compute tpus "$1" "$2" "${3:-$NAME}" --zone="$ZONE")
  [[ -z $PROJECT ]] || GCLOUD+=(--project="$PROJECT")
}

# node SLICE: the TPU VM (node) of slice SLICE: --name itself for one slice; for
# --num_slices N, the queued resource's nodes NAME-0 .. NAME-(N-1) (its --node-prefix is NAME).
node() {
  if ((NUM_SLICES == 1)); then printf '%s' "$NAME"; else printf '%s' "$NAME-$1"; fi
}

# ssh_node SLICE WORKER SCRIPT: run SCRIPT (bash) on WORKER (a number or all) of SLICE's node.
ssh_node() {
  gcloud_args tpu-vm ssh "$(node "$1")"
  run "${GCLOUD[@]}" --worker="$2" --command="$3"
}

# ssh_all WORKER SCRIPT: run SCRIPT on WORKER of every slice, one node after the other (a
# failure stops before the next slice is touched; each command returns once it has run).
ssh_all() {
  local s
  for ((s = 0; s < NUM_SLICES; s++)); do ssh_node "$s" "$1" "$2"; done
}

# describe_args: GCLOUD = the command that prints the state of --name.
describe_args() {
  if ((QUEUED)); then
    gcloud_args queued-resources describe
    GCLOUD+=(--format='value(state.state)')
  else
    gcloud_args tpu-vm describe
    GCLOUD+=(--format='value(state)')
  fi
}

# state: print the state of --name (READY, PREEMPTED... or state.state of a queued
# resource: ACTIVE, SUSPENDED...), or NOT_FOUND. Never called with --dry-run.
state() {
  local err out
  describe_args
  show "${GCLOUD[@]}" >&2
  err=$(mktemp)
  if out=$("${GCLOUD[@]}" 2>"$err"); then
    rm -f "$err"
    echo "${out:-UNKNOWN}"
  elif grep -q NOT_FOUND "$err"; then
    rm -f "$err"
    echo NOT_FOUND
  else
    cat "$err" >&2
    rm -f "$err"
    die "could not read the state of $NAME (the gcloud error is above)"
  fi
}

# wait_ready: poll until --name is READY (TPU VM) / ACTIVE (queued resource).
wait_ready() {
  local want=READY s last=''
  ((!QUEUED)) || want=ACTIVE
  if ((DRY_RUN)); then
    describe_args
    note "wait: repeated every ${POLL_S}s until the state is $want"
    show "${GCLOUD[@]}"
    return 0
  fi
  while :; do
    s=$(state)
    [[ $s == "$last" ]] || note "$NAME is $s"
    last=$s
    case "$s" in
      "$want") return 0 ;;
      FAILED|SUSPENDED|SUSPENDING|PREEMPTED|TERMINATED|STOPPED|NOT_FOUND|DELETING)
        die "$NAME is $s while waiting for $want (launch/resume.sh deletes and re-creates it)" ;;
    esac
    sleep "$POLL_S"
  done
}

# The profile flags, rebuilt from the parsed values (resume passes them on).
profile_args() {
  PROFILE_ARGS=(--name="$NAME" --zone="$ZONE" --accelerator="$ACCEL" --bucket="$BUCKET"
                --run="$RUN" --ref="$SHA" --config="$CONFIG")
  [[ -z $PROJECT ]] || PROFILE_ARGS+=(--project="$PROJECT")
  [[ -z $RUNTIME ]] || PROFILE_ARGS+=(--runtime-version="$RUNTIME")
  ((!SPOT)) || PROFILE_ARGS+=(--spot)
  ((!RESERVED)) || PROFILE_ARGS+=(--reserved)
  ((!QUEUED)) || PROFILE_ARGS+=(--queued)
  ((NUM_SLICES == 1)) || PROFILE_ARGS+=(--num_slices="$NUM_SLICES")
  ((!SKIP_ZONE_CHECK)) || PROFILE_ARGS+=(--skip-zone-check)
  ((!DRY_RUN)) || PROFILE_ARGS+=(--dry-run)
  local e
  for e in ${ENVS[@]+"${ENVS[@]}"}; do PROFILE_ARGS+=(--env="$e"); done
}

# The log of run --run on a worker (where run.sh starts it: ~/stvit_jax_runs/RUN/).
logs_script() {
  local follow=' -F'
  ((!NO_FOLLOW)) || follow=''
  # shellcheck disable=SC2016  # $HOME expands on the worker
  printf 'tail -n %s%s "$HOME/stvit_jax_runs/%s/log"' "$LINES" "$follow" "$RUN"
}

# template VAR <<'EOF' ... EOF: read a here-document into VAR (scripts for the workers).
template() {
  IFS= read -r -d '' "$1" || true
}

# fill TEXT KEY=VALUE...: TEXT with every @KEY@ replaced by VALUE (quoted replacement:
# a literal '&' stays '&' under bash 5.2's patsub_replacement).
fill() {
  local t=$1 kv k v
  shift
  for kv in "$@"; do
    k=${kv%%=*}
    v=${kv#*=}
    t=${t//"@$k@"/"$v"}
  done
  printf '%s' "$t"
}
