#!/usr/bin/env bash
# Start `python -m stvit_jax.main --config=... --workdir=gs://BUCKET/RUN [overrides]`
# on every worker of --name, detached (it survives the ssh session), logging to
# ~/stvit_jax_runs/RUN/log on each worker. The trainer resumes from the workdir's
# latest checkpoint by itself, so the same command restarts a run.
set -euo pipefail
ACTION_FLAGS='--restart --ensure --follow'
TAKES_OVERRIDES=1
USAGE='Usage: launch/run.sh --name NAME --zone ZONE --accelerator TYPE --bucket gs://B --config FILE
         [--run RUN] [--ref REF] [--env K=V]... [--restart|--ensure] [--follow] [--dry-run] [-- --config.a.b=v ...]

Every worker must have commit REF installed (launch/setup.sh). A worker that has a
run active refuses to start another, unless --restart (stop it first: SIGTERM to its
process group, SIGKILL after 60 s) or --ensure (leave this run alone when it is
active or has finished with exit status 0; what launch/resume.sh uses).
--follow: then follow worker 0'"'"'s log (launch/logs.sh). Multi-host slices get
STVIT_JAX_INIT=1, so the trainer calls jax.distributed.initialize().
--num_slices N > 1: started on every worker of each node NAME-0 .. NAME-(N-1), in
turn, with STVIT_JAX_INIT=1 and the override --config.mesh.dcn_data=N (the slices
are the data-parallel axis over DCN).'
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone accelerator bucket config
((RESTART + ENSURE <= 1)) || die "--restart and --ensure exclude each other"
resolve_ref
check_config

workers=$(num_workers "$ACCEL")
workdir="$BUCKET/$RUN"
slice_args=()
if ((NUM_SLICES > 1)); then
  # The trainer's mesh gets one data-parallel axis across the slices (over DCN), so it must
  # know their number; the queued resource tells JAX the rest (MEGASCALE_*: launch/README.md).
  for o in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
    [[ $o != --config.mesh.dcn_data=* ]] ||
      die "trainer override $o: launch passes --config.mesh.dcn_data=$NUM_SLICES from --num_slices=$NUM_SLICES; drop it"
  done
  slice_args=(--config.mesh.dcn_data="$NUM_SLICES")
fi
# XLA's compilation cache in the bucket, beside the runs: every worker, every slice and
# every restart of a run (and of any run of the same programs) reads the train and eval
# steps back instead of compiling them again. Only compiles of 1 s or more are kept
# there: the model's hundreds of sub-second initialiser compiles would be one bucket
# round trip each. A trainer override (after these) changes either.
cache_args=(--config.compilation_cache_dir="$BUCKET/xla_cache"
            --config.compilation_cache_min_compile_secs=1)
train=(python -m stvit_jax.main --config="$CONFIG" --workdir="$workdir" "${cache_args[@]}"
       ${slice_args[@]+"${slice_args[@]}"} ${OVERRIDES[@]+"${OVERRIDES[@]}"})
train_line=''
for a in "${train[@]}"; do train_line="$train_line $(dquote "$a")"; done
exports=''
# One process per worker of every slice: more than one needs jax.distributed.initialize().
((workers * NUM_SLICES == 1)) || exports="export STVIT_JAX_INIT=1"$'\n'
for e in ${ENVS[@]+"${ENVS[@]}"}; do exports="${exports}export ${e%%=*}=$(dquote "${e#*=}")"$'\n'; done
if ((NUM_SLICES == 1)); then
  note "run $RUN on $workers worker(s) of $NAME (stvit_jax ${SHA:0:12}), workdir $workdir:"
else
  note "run $RUN on $NUM_SLICES slices x $workers worker(s) of $NAME, nodes $(node 0) .. $(node $((NUM_SLICES - 1))) (stvit_jax ${SHA:0:12}), workdir $workdir:"
fi
note "  ${train_line# }"

runner='' on_active='' remote=''
template runner <<'RUNNER'
cd "$HOME/stvit_jax" || exit 1
. "$HOME/stvit_venv/bin/activate"
@EXPORTS@echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): stvit_jax @SHA@"
@TRAIN@
rc=$?
echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): exit status $rc"
echo "$rc" > "$HOME/stvit_jax_runs/@RUN@/status"
exit "$rc"
RUNNER

if ((RESTART)); then
  template on_active <<'ACTIVE'
    pid="$(cat "$p")"
    echo "$(hostname): stopping the active run ($p, pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
ACTIVE
elif ((ENSURE)); then
  template on_active <<'ACTIVE'
    if [ "$p" = "$dir/pid" ]; then
      echo "$(hostname): @RUN@ is running (pid $(cat "$p")); nothing to do"
      exit 0
    fi
    echo "$(hostname): another run is active ($p); not starting @RUN@" >&2
    exit 1
ACTIVE
else
  template on_active <<'ACTIVE'
    echo "$(hostname): a run is active ($p): launch/logs.sh follows it, launch/run.sh --restart replaces it" >&2
    exit 1
ACTIVE
fi
on_finished=''
if ((ENSURE)); then
  template on_finished <<'FINISHED'
if [ "$(cat "$dir/status" 2>/dev/null || true)" = 0 ]; then
  echo "$(hostname): @RUN@ has finished (exit status 0); nothing to do"
  exit 0
fi
FINISHED
fi

# On each worker: refuse a commit other than --ref; look for a live run (a pid file
# whose process is one of our runners: after a reboot the pid may be another's); then
# write the runner script and start it in its own session, so that it outlives ssh and
# --restart can stop its whole process group.
template remote <<'REMOTE'
set -euo pipefail
ref=@SHA@
dir="$HOME/stvit_jax_runs/@RUN@"
installed="$(cat "$HOME/stvit_jax/.launch_ref" 2>/dev/null || true)"
if [ "$installed" != "$ref" ]; then
  echo "$(hostname): stvit_jax ${installed:-nothing} is installed, not $ref: run launch/setup.sh --ref=$ref first" >&2
  exit 1
fi
for p in "$HOME"/stvit_jax_runs/*/pid; do
  if [ -f "$p" ] && grep -qs stvit_jax_runs "/proc/$(cat "$p")/cmdline"; then
@ON_ACTIVE@  fi
done
@ON_FINISHED@mkdir -p "$dir"
rm -f "$dir/status"
cat > "$dir/run.sh" <<\STVIT_RUNNER
@RUNNER@STVIT_RUNNER
setsid nohup bash "$dir/run.sh" >> "$dir/log" 2>&1 < /dev/null &
echo "$!" > "$dir/pid"
echo "$(hostname): started @RUN@ (pid $!), log $dir/log"
REMOTE

runner=$(fill "$runner" EXPORTS="$exports" SHA="$SHA" RUN="$RUN" TRAIN="${train_line# }")$'\n'
ssh_all all "$(fill "$remote" ON_ACTIVE="$on_active" ON_FINISHED="$on_finished" SHA="$SHA" RUN="$RUN" \
  RUNNER="$runner")"
if ((FOLLOW)); then
  ssh_node 0 0 "$(logs_script)"  # worker 0 of slice 0, which JAX numbers process 0
fi
