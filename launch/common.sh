# shellcheck shell=bash
# shellcheck disable=SC2034  # the globals set here are read by the scripts that source this file
#
# Shared by launch/*.sh (sourced, never run): one set of flags for every script,
# so that one array of flags serves create, setup, run, logs, resume and delete;
# their validation; and printing / running the exact gcloud and gsutil commands.
# Written for bash 3.2+ (macOS laptops): no associative arrays, no mapfile.

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LAUNCH_DIR/.." && pwd)"
PROG="launch/$(basename "$0")"

# What the workers install. jax comes from pyproject.toml at --ref, as
# "jax[tpu]==<that pin>"; jax 0.10.2's tpu extra pins libtpu==0.0.42.* (wheel METADATA).
UV_VERSION=0.13.8
PYTHON_VERSION=3.11
POLL_S="${STVIT_LAUNCH_POLL_S:-30}"  # seconds between state checks while waiting

SHARED_FLAGS_HELP='Shared flags (every script takes them; pass the same array to each):
  --name NAME            TPU VM / queued resource name (lowercase letters, digits, -)
  --zone ZONE            e.g. us-west4-a; checked against the TPU zones of the generation
  --project PROJECT      GCP project (default: gcloud config)
  --accelerator TYPE     v4-32, v5p-8, v5litepod-16, v6e-8, ...
  --runtime-version V    TPU software version (default: the one for the generation)
  --spot | --reserved    capacity (default: on-demand)
  --queued               use a queued resource (queued-resources create/delete)
  --num_slices N         N slices of --accelerator as one queued resource (Multislice; needs
                         --queued): nodes NAME-0 .. NAME-(N-1), data parallel over DCN (default 1)
  --skip-zone-check      accept a zone missing from the known TPU zone list
  --bucket gs://NAME     bucket for the workdir (gs://NAME/RUN) and staged source
  --run RUN              run name, the workdir is gs://NAME/RUN (default: --name)
  --ref REF              git commit/branch/tag installed on the workers (default: HEAD)
  --config FILE[:ARGS]   trainer config, e.g. configs/deit_s.py or configs/deit_s.py:baseline
  --env KEY=VALUE        environment for the trainer (repeatable), e.g. TFDS_DATA_DIR=gs://...
  --dry-run              print the commands instead of running them (no gcloud/gsutil call)
  -h, --help             this help'

NAME='' ZONE='' PROJECT='' ACCEL='' RUNTIME='' BUCKET='' RUN='' REF=HEAD CONFIG=''
SPOT=0 RESERVED=0 QUEUED=0 SKIP_ZONE_CHECK=0 DRY_RUN=0 NUM_SLICES=1
ENVS=() OVERRIDES=()
# Action flags: each script lists the ones it takes in ACTION_FLAGS before parse_args.
NO_WAIT=0 FORCE=0 RESTART=0 ENSURE=0 FOLLOW=0 NO_FOLLOW=0 WORKER=0 LINES=100 SLICE=''
ACTION_FLAGS="${ACTION_FLAGS:-}"
TAKES_OVERRIDES="${TAKES_OVERRIDES:-0}"

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

usage() {
  printf '%s\n\n%s\n' "$USAGE" "$SHARED_FLAGS_HELP"
  exit 0
}

parse_args() {
  local arg flag val has_val
  while (($#)); do
    arg=$1
    has_val=0
    val=''
    case "$arg" in
      --)
        shift
        ((TAKES_OVERRIDES)) || die "$PROG takes no trainer overrides after --; got: $*"
        OVERRIDES=("$@")
        break ;;
      --*=*) flag=${arg%%=*}; val=${arg#*=}; has_val=1 ;;
      *) flag=$arg ;;
    esac
    case "$flag" in
      --name|--zone|--project|--accelerator|--runtime-version|--bucket|--run|--ref|--config|--env|--worker|--lines|--slice|--num_slices)
        if ((!has_val)); then
          # A number such as -1 is a (bad) value, which validate names with the valid ones.
          if (($# < 2)) || { [[ $2 == -* ]] && ! [[ $2 =~ ^-[0-9]+$ ]]; }; then
            die "$flag needs a value; see $PROG --help"
          fi
          val=$2
          shift
        fi ;;
      --spot|--reserved|--queued|--skip-zone-check|--dry-run|--no-wait|--force|--restart|--ensure|--follow|--no-follow|-h|--help)
        ((!has_val)) || die "$flag takes no value (got $arg)" ;;
      -*) die "unknown flag $flag; see $PROG --help" ;;
      *) die "unexpected argument '$arg' (trainer overrides go after --; see $PROG --help)" ;;
    esac
    case "$flag" in
      --worker|--lines|--slice|--no-wait|--force|--restart|--ensure|--follow|--no-follow)
        [[ " $ACTION_FLAGS " == *" $flag "* ]] ||
          die "$flag is not a flag of $PROG (its own flags: ${ACTION_FLAGS:-none}; shared flags: see --help)" ;;
    esac
    case "$flag" in
      --name) NAME=$val ;;
      --zone) ZONE=$val ;;
      --project) PROJECT=$val ;;
      --accelerator) ACCEL=$val ;;
      --runtime-version) RUNTIME=$val ;;
      --bucket) BUCKET=$val ;;
      --run) RUN=$val ;;
      --ref) REF=$val ;;
      --config) CONFIG=$val ;;
      --env) ENVS+=("$val") ;;
      --worker) WORKER=$val ;;
      --lines) LINES=$val ;;
      --slice) SLICE=$val ;;
      --num_slices) NUM_SLICES=$val ;;
      --spot) SPOT=1 ;;
      --reserved) RESERVED=1 ;;
      --queued) QUEUED=1 ;;
      --skip-zone-check) SKIP_ZONE_CHECK=1 ;;
      --dry-run) DRY_RUN=1 ;;
      --no-wait) NO_WAIT=1 ;;
      --force) FORCE=1 ;;
      --restart) RESTART=1 ;;
      --ensure) ENSURE=1 ;;
      --follow) FOLLOW=1 ;;
      --no-follow) NO_FOLLOW=1 ;;
      -h|--help) usage ;;
    esac
    shift
  done
  [[ -n $RUN || -z $NAME ]] || RUN=$NAME
  validate
}

# require FLAG...: fail naming each missing flag and what it is for.
require() {
  local f
  for f in "$@"; do
    case "$f" in
      name) [[ -n $NAME ]] || die "--name is required: the TPU VM / queued resource name, e.g. --name=stvit-s" ;;
      zone) [[ -n $ZONE ]] || die "--zone is required, e.g. --zone=us-west4-a" ;;
      accelerator) [[ -n $ACCEL ]] || die "--accelerator is required, e.g. --accelerator=v5litepod-16 or v4-32" ;;
      bucket) [[ -n $BUCKET ]] || die "--bucket is required: gs://NAME, which holds the workdir gs://NAME/RUN" ;;
      config) [[ -n $CONFIG ]] || die "--config is required, e.g. --config=configs/deit_s.py" ;;
      *) die "internal: require $f" ;;
    esac
  done
}

# Accelerator type -> generation (v4, v5e, v5p, v6e); empty if unknown.
tpu_family() {
  case "$1" in
    v4-*) echo v4 ;;
    v5p-*) echo v5p ;;
    v5litepod-*) echo v5e ;;
    v6e-*) echo v6e ;;
  esac
}

# Zones that offer each generation (cloud.google.com/tpu/docs/regions-zones, 2025);
# Google adds zones: --skip-zone-check accepts one missing here.
family_zones() {
  case "$1" in
    v4) echo "us-central2-b" ;;
    v5e) echo "us-central1-a us-south1-a us-west1-c us-west4-a us-west4-b us-east5-a us-east5-b us-east5-c europe-west4-b asia-southeast1-b" ;;
    v5p) echo "us-central1-a us-east5-a us-east5-b us-east5-c us-south1-a europe-west4-b" ;;
    v6e) echo "us-central1-b us-east1-d us-east4-a us-east4-b us-east5-a us-east5-b us-east5-c us-west1-c europe-west4-a asia-northeast1-b" ;;
  esac
}

family_runtime() {
  case "$1" in
    v4) echo tpu-ubuntu2204-base ;;
    v5e) echo v2-alpha-tpuv5-lite ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v6e) echo v2-alpha-tpuv6e ;;
  esac
}

# Number of TPU VM hosts (workers) of an accelerator type.
num_workers() {
  local n=${1##*-}
  case "$(tpu_family "$1")" in
    v4|v5p) echo $((n / 8)) ;;        # N TensorCores, 2 per chip, 4 chips per host
    v5e|v6e) if ((n <= 8)); then echo 1; else echo $((n / 4)); fi ;;  # N chips, 4 per host beyond 8
  esac
}

in_list() {  # in_list WORD "A B C"
  [[ " $2 " == *" $1 "* ]]
}

validate() {
  local family n sizes zones all_zones f
  if [[ -n $NAME && ! $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
    die "--name=$NAME: a TPU name is 1-63 lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen (e.g. stvit-s-v5e)"
  fi
  if [[ -n $PROJECT && ! $PROJECT =~ ^([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$ ]]; then
    die "--project=$PROJECT: a project ID is 6-30 lowercase letters, digits and hyphens, starting with a letter (e.g. my-project-123)"
  fi
  if [[ -n $ACCEL ]]; then
    family=$(tpu_family "$ACCEL")
    n=${ACCEL##*-}
    case "$ACCEL" in
      v5e-*|v5lite-*|v5litepod)
        [[ $n =~ ^[0-9]+$ ]] || n=16
        die "--accelerator=$ACCEL: TPU v5e types are named v5litepod-N (N chips in 1 4 8 16 32 64 128 256), e.g. v5litepod-$n" ;;
      v6e-*|v5litepod-*) sizes="1 4 8 16 32 64 128 256"
        if [[ ! $n =~ ^[0-9]+$ ]] || ! in_list "$n" "$sizes"; then
          die "--accelerator=$ACCEL: ${ACCEL%-*}-N takes N (chips) in: $sizes"
        fi ;;
      v4-*|v5p-*)
        if [[ ! $n =~ ^[0-9]+$ ]] || ((n % 8 || n < 8 || n > 12288)) || { [[ $family == v4 ]] && ((n > 8192)); }; then
          die "--accelerator=$ACCEL: ${ACCEL%-*}-N takes N (TensorCores, 2 per chip) a multiple of 8, e.g. ${ACCEL%-*}-8, ${ACCEL%-*}-32"
        fi ;;
      *) die "--accelerator=$ACCEL: not a TPU type this launcher knows; valid: v4-N, v5p-N (N a multiple of 8), v5litepod-N, v6e-N (N in 1 4 8 16 ... 256), e.g. v5litepod-16, v4-32" ;;
    esac
  fi
  if [[ -n $ZONE ]]; then
    [[ $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z][a-z0-9]*$ ]] ||
      die "--zone=$ZONE: not a zone name; expected REGION-ZONE such as us-west4-a or us-central2-b"
    if ((!SKIP_ZONE_CHECK)); then
      if [[ -n $ACCEL ]]; then
        zones=$(family_zones "$family")
        in_list "$ZONE" "$zones" ||
          die "--zone=$ZONE does not offer TPU $family (--accelerator=$ACCEL); $family zones: $zones (a newer zone: add --skip-zone-check)"
      else
        all_zones=''
        for f in v4 v5e v5p v6e; do all_zones="$all_zones $(family_zones "$f")"; done
        in_list "$ZONE" "$all_zones" ||
          die "--zone=$ZONE is not a known TPU zone (v4/v5e/v5p/v6e); known:$all_zones (a newer zone: add --skip-zone-check)"
      fi
    fi
  fi
  if [[ -n $RUNTIME && ! $RUNTIME =~ ^[a-z0-9][-a-z0-9.]*$ ]]; then
    die "--runtime-version=$RUNTIME: expected a TPU software version such as v2-alpha-tpuv5-lite or tpu-ubuntu2204-base"
  fi
  ((SPOT + RESERVED <= 1)) || die "--spot and --reserved exclude each other: choose one (neither: on-demand)"
  [[ $NUM_SLICES =~ ^[1-9][0-9]{0,3}$ ]] ||
    die "--num_slices=$NUM_SLICES: expected a number of slices from 1 (the default: one slice) to 9999; 2 or more make a Multislice (with --queued)"
  if ((NUM_SLICES > 1)); then
    # Cloud TPU makes a multislice only as one queued resource (--node-count), whose nodes
    # are NAME-0 .. NAME-(N-1): each node name must itself be a valid TPU name.
    ((QUEUED)) ||
      die "--num_slices=$NUM_SLICES: several slices are created as one queued resource: add --queued"
    local last="$NAME-$((NUM_SLICES - 1))"
    ((${#last} <= 63)) ||
      die "--name=$NAME: with --num_slices=$NUM_SLICES the last node is $last, longer than a TPU name's 63 characters; shorten --name"
  fi
  if [[ -n $SLICE ]]; then
    [[ $SLICE == all || ( $SLICE =~ ^(0|[1-9][0-9]{0,3})$ && $SLICE -lt $NUM_SLICES ) ]] ||
      die "--slice=$SLICE: expected a slice number 0 .. $((NUM_SLICES - 1)) (--num_slices=$NUM_SLICES) or all"
  fi
  if [[ -n $BUCKET ]]; then
    [[ $BUCKET == gs://* ]] || die "--bucket=$BUCKET: expected gs://NAME (the workers read and write the workdir on GCS)"
    local b=${BUCKET#gs://}
    [[ $b != */* ]] || die "--bucket=$BUCKET: give the bucket alone, gs://${b%%/*}; the path inside it is --run (workdir gs://BUCKET/RUN)"
    if [[ ! $b =~ ^[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]$ || $b == *..* ]] || { [[ $b != *.* ]] && ((${#b} > 63)); }; then
      die "--bucket=$BUCKET: a bucket name is 3-63 lowercase letters, digits, -, _ and ., starting and ending with a letter or digit (e.g. gs://my-bucket)"
    fi
  fi
  if [[ -n $RUN && ! $RUN =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$ ]]; then
    die "--run=$RUN: a run name is 1-100 letters, digits, ., _ and -, starting with a letter or digit, no slash (e.g. stvit_deit_s)"
  fi
  if [[ -n $CONFIG && ! $CONFIG =~ ^configs/[A-Za-z0-9_./-]+\.py(:[A-Za-z0-9_,]*)?$ ]]; then
    die "--config=$CONFIG: expected configs/FILE.py with an optional :variant, e.g. configs/deit_s.py or configs/deit_s.py:baseline"
  fi
  local e o
  for e in ${ENVS[@]+"${ENVS[@]}"}; do
    [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= && $e != *$'\n'* ]] ||
      die "--env=$e: expected KEY=VALUE with KEY a variable name, e.g. --env=TFDS_DATA_DIR=gs://my-bucket/tensorflow_datasets"
  done
  for o in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
    case "$o" in
      --workdir=*|--workdir|--config=*|--config) die "trainer override $o: --workdir comes from --bucket/--run and --config from --config; after -- give only --config.a.b=v" ;;
    esac
    [[ $o =~ ^--config\.[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=.*$ && $o != *$'\n'* ]] ||
      die "trainer override $o: expected --config.a.b=value (e.g. --config.batch_size=4096)"
  done
  [[ $WORKER =~ ^(all|[0-9]+)$ ]] || die "--worker=$WORKER: expected a worker number (0, 1, ...) or all"
  [[ $LINES =~ ^[0-9]+$ ]] || die "--lines=$LINES: expected a number of lines"
  [[ $POLL_S =~ ^[0-9]+$ ]] || die "STVIT_LAUNCH_POLL_S=$POLL_S: expected whole seconds"
}

# resolve_ref: SHA of --ref in this checkout (workers install exactly that commit).
resolve_ref() {
  SHA=$(git -C "$REPO_ROOT" rev-parse --verify --quiet "${REF}^{commit}") ||
    die "--ref=$REF: not a commit of the checkout $REPO_ROOT (give a commit, branch or tag; uncommitted work is never shipped)"
}

# check_config: --config must exist in the commit the workers run.
check_config() {
  local path=${CONFIG%%:*} there
  git -C "$REPO_ROOT" cat-file -e "$SHA:$path" 2>/dev/null && return 0
  there=$(git -C "$REPO_ROOT" ls-tree --name-only "$SHA" configs/ | tr '\n' ' ')
  die "--config=$CONFIG: $path is not in commit ${SHA:0:12} (--ref=$REF), which the workers run; configs there: ${there:-none (commit them first)}"
}

# quote ARG: ARG as shell input, quoted only when needed (--flag='value' style).
quote() {
  local s=$1 sq="'\\''"
  if [[ $s =~ ^[A-Za-z0-9_./:@%+,=-]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s =~ ^(--[a-z0-9-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${s//\'/$sq}"
  fi
}

# dquote ARG: ARG for a script that runs on the workers, in double quotes when needed,
# so that the script itself holds no single quote and prints cleanly inside '...'.
dquote() {
  local s=$1
  if [[ $s =~ ^[A-Za-z0-9_./:@%+,=-]+$ ]]; then
    printf '%s' "$s"
  else
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//\$/\\\$}; s=${s//\`/\\\`}
    printf '"%s"' "$s"
  fi
}

# show CMD...: print CMD exactly as it runs ("+ " in front unless --dry-run).
show() {
  local line='' a
  for a in "$@"; do line="$line $(quote "$a")"; done
  if ((DRY_RUN)); then printf '%s\n' "${line# }"; else printf '+ %s\n' "${line# }"; fi
}

note() {
  printf '# %s\n' "$*"
}

# run CMD...: show CMD, then run it unless --dry-run.
run() {
  show "$@"
  ((DRY_RUN)) || "$@"
}

# The gcloud commands themselves (node names, ssh, states, templates): gcloud.sh.
# shellcheck source-path=SCRIPTDIR source=gcloud.sh
source "$LAUNCH_DIR/gcloud.sh"
