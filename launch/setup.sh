#!/usr/bin/env bash
# Install commit --ref of this repo on every worker of --name: the source staged on
# GCS, Python 3.11 in a uv venv, pip install -e . and jax[tpu] (jax pinned by
# pyproject.toml at that commit; its tpu extra pins libtpu).
set -euo pipefail
ACTION_FLAGS='--force'
USAGE='Usage: launch/setup.sh --name NAME --zone ZONE --bucket gs://B [--ref REF] [--force] [--dry-run]

1. git archive REF -> gs://B/launch/src/stvit_jax-SHA.tar.gz (the exact commit, no
   uncommitted changes);
2. on every worker (--worker=all; with --num_slices N, of each node NAME-0 ..
   NAME-(N-1) in turn): unpack it to ~/stvit_jax, create the venv
   ~/stvit_venv (Python 3.11, uv), pip install -e ~/stvit_jax "jax[tpu]==PIN".
A worker that already has SHA installed is left as it is (--force: reinstall); a
worker with an active run refuses to reinstall.'
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone bucket
resolve_ref

jax_pin=$(git -C "$REPO_ROOT" show "$SHA:pyproject.toml" 2>/dev/null |
  sed -n 's/^[[:space:]]*"jax==\([0-9][0-9a-z.]*\)".*/\1/p' | head -n 1) || true
[[ -n $jax_pin ]] ||
  die "pyproject.toml at --ref=$REF (${SHA:0:12}) pins no \"jax==VERSION\"; the workers install jax[tpu] at that pin"
if [[ $REF == HEAD && -n $(git -C "$REPO_ROOT" status --porcelain --untracked-files=no) ]]; then
  note "warning: uncommitted changes in $REPO_ROOT are not shipped: workers get commit ${SHA:0:12}"
fi

tarball="${TMPDIR:-/tmp}/stvit_jax-$SHA.tar.gz"
staged="$BUCKET/launch/src/stvit_jax-$SHA.tar.gz"
note "setup $NAME: stvit_jax $SHA, jax[tpu]==$jax_pin, Python $PYTHON_VERSION on every worker"
run git -C "$REPO_ROOT" archive --format=tar.gz --output="$tarball" "$SHA"
run gsutil -q cp "$tarball" "$staged"

remote=''
template remote <<'REMOTE'
set -euo pipefail
ref=@SHA@
force=@FORCE@
src="$HOME/stvit_jax"
venv="$HOME/stvit_venv"
uv="$HOME/.local/bin/uv"
if [ "$force" = 0 ] && [ "$(cat "$src/.launch_ref" 2>/dev/null || true)" = "$ref" ] && [ -x "$venv/bin/python" ]; then
  echo "$(hostname): stvit_jax $ref is already set up"
  exit 0
fi
for p in "$HOME"/stvit_jax_runs/*/pid; do
  if [ -f "$p" ] && grep -qs stvit_jax_runs "/proc/$(cat "$p")/cmdline"; then
    echo "$(hostname): a run is active ($p): stop it (launch/run.sh --restart, or delete) before reinstalling" >&2
    exit 1
  fi
done
gsutil -q cp @STAGED@ "/tmp/stvit_jax-$ref.tar.gz"
rm -rf "$src" "$venv"
mkdir -p "$src"
tar -xzf "/tmp/stvit_jax-$ref.tar.gz" -C "$src"
python3 -m pip install --user --quiet uv==@UV@
"$uv" venv --quiet --seed --python @PYTHON@ "$venv"
"$uv" pip install --quiet --python "$venv/bin/python" -e "$src" "jax[tpu]==@JAX@"
"$uv" pip list --python "$venv/bin/python" | grep -iE "^(stvit[-_]jax|jax|jaxlib|libtpu) "
echo "$ref" > "$src/.launch_ref"
echo "$(hostname): stvit_jax $ref set up"
REMOTE
ssh_all all "$(fill "$remote" SHA="$SHA" FORCE="$FORCE" STAGED="$staged" UV="$UV_VERSION" \
  PYTHON="$PYTHON_VERSION" JAX="$jax_pin")"
