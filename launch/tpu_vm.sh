#!/usr/bin/env bash
# Runs musicflax on a Cloud TPU VM slice (one host or many) with gcloud: create the slice,
# copy the repository to every worker and install it, start training on every worker,
# follow the log, recreate and resume after a preemption, delete.
#
# Usage: launch/tpu_vm.sh COMMAND --name NAME --zone ZONE [options] [-- extra --config.x=y flags]
#
# Commands:
#   create   create the slice (needs --type; --runtime defaults from the type, --spot)
#   setup    copy this repository (without .venv, .git, workdirs) to ~/musicflax on every
#            worker, install Python 3.11 and tmux if missing, then
#            .venv: pip install -e . 'jax[tpu]==0.10.2'
#   train    start training on every worker in tmux session 'musicflax' (needs a gs://
#            --workdir); worker W logs to ~/musicflax/train_worker_W.log
#   logs     follow the log of worker 0 (or --worker W)
#   stop     SIGTERM the training on every worker: it saves a checkpoint and exits
#   watch    every --interval seconds, look at the slice's state; when it is PREEMPTED or
#            TERMINATED: delete, create, setup, train (training resumes from the last
#            checkpoint in the workdir). Needs what create and train need. Stop it with Ctrl-C.
#   delete   delete the slice (asks first)
#
# Options:
#   --name NAME       TPU name (required)
#   --zone ZONE       zone, e.g. us-central2-b (required)
#   --project P       project (default: gcloud's configured project)
#   --type TYPE       accelerator type: v4-32, v5p-8, v5litepod-8, v6e-8, ...
#   --runtime V       runtime version; default from the type family: v2/v3/v4 ->
#                     tpu-ubuntu2204-base, v5p -> v2-alpha-tpuv5, v5litepod/v5e ->
#                     v2-alpha-tpuv5-lite, v6e -> v2-alpha-tpuv6e
#   --spot            create a Spot slice (cheaper, can be preempted: use watch)
#   --config CONFIG   config file, relative to the repository (default configs/default.py)
#   --workdir gs://B/DIR  shared checkpoint/log folder (train, watch)
#   --worker W        worker whose log `logs` follows (default 0)
#   --interval S      seconds between state checks in watch (default 60)
#   --dry-run         print the commands (one per line, shell-quoted) instead of running them
#   -h, --help        print this help
set -euo pipefail

PROG=launch/tpu_vm.sh
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JAX_SPEC='jax[tpu]==0.10.2'
SESSION=musicflax

source "$REPO/launch/common.sh"
# Prints the command (--dry-run) or runs it.
run() { if ((dry_run)); then qline "$@"; echo; else "$@"; fi; }

command="" name="" zone="" project="" type="" runtime="" spot=0 dry_run=0
config=configs/default.py workdir="" worker=0 interval=60
extra=()
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --spot) spot=1 ;;
    --name|--zone|--project|--type|--runtime|--config|--workdir|--worker|--interval)
      (($# >= 2)) || die "$1 needs a value"
      declare "${1#--}=$2"; shift ;;
    --name=*|--zone=*|--project=*|--type=*|--runtime=*|--config=*|--workdir=*|--worker=*|--interval=*)
      opt=${1%%=*}; declare "${opt#--}=${1#*=}" ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option '$1' (flags for training go after --; see --help)" ;;
    *) [[ -z $command ]] || die "one command at a time (got '$command' and '$1')"
       command=$1 ;;
  esac
  shift
done

case $command in
  create|setup|train|logs|stop|watch|delete) ;;
  "") die "missing command: create, setup, train, logs, stop, watch or delete (see --help)" ;;
  *) die "unknown command '$command': use create, setup, train, logs, stop, watch or delete" ;;
esac
[[ -n $name ]] || die "missing --name (the TPU's name)"
[[ -n $zone ]] || die "missing --zone (e.g. --zone=us-central2-b)"
[[ $worker =~ ^[0-9]+$ ]] || die "--worker must be a worker number, got '$worker'"
[[ $interval =~ ^[1-9][0-9]*$ ]] || die "--interval must be a positive number of seconds, got '$interval'"

if [[ $command == create || $command == watch ]]; then
  [[ -n $type ]] || die "missing --type (accelerator type, e.g. v4-32, v5p-8, v6e-8)"
  if [[ -z $runtime ]]; then
    case ${type%%-*} in
      v2|v3|v4) runtime=tpu-ubuntu2204-base ;;
      v5p) runtime=v2-alpha-tpuv5 ;;
      v5litepod|v5e) runtime=v2-alpha-tpuv5-lite ;;
      v6e) runtime=v2-alpha-tpuv6e ;;
      *) die "no default runtime for TPU type '$type': give --runtime (see gcloud compute tpus tpu-vm versions list --zone=$zone)" ;;
    esac
  fi
fi
if [[ $command == train || $command == watch ]]; then
  [[ -n $workdir ]] || die "missing --workdir (a gs://bucket/path every worker can reach)"
  [[ $workdir == gs://* ]] || die "--workdir must start with gs:// (workers need a shared path), got '$workdir'"
  [[ -f $REPO/${config%%:*} ]] || die "config file not found in the repository: ${config%%:*}"
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
[[ -z $project ]] || where+=("--project=$project")

do_create() {
  local cmd=("${gcloud_tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$type" "--version=$runtime")
  ((spot)) && cmd+=(--spot)
  run "${cmd[@]}"
}

do_setup() {
  local tarball="${TMPDIR:-/tmp}/musicflax-src-$name.tar.gz" remote
  # The sources only: a local .venv, checkpoints or logs must not travel to the workers.
  run tar -czf "$tarball" -C "$REPO" --exclude=.git --exclude=.venv --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=.pytest_cache --exclude='*.log' \
    --exclude=./workdirs --exclude=./build --exclude=./tmp . || return
  run "${gcloud_tpu[@]}" scp "$tarball" "$name:musicflax-src.tar.gz" "${where[@]}" --worker=all || return
  # TPU VM images are Ubuntu 22.04 (Python 3.10); musicflax needs Python 3.11 (and a venv).
  remote="set -e; mkdir -p ~/musicflax && tar -xzf ~/musicflax-src.tar.gz -C ~/musicflax && cd ~/musicflax"
  remote+="; if ! command -v tmux >/dev/null || ! python3.11 -m venv .venv >/dev/null 2>&1; then"
  remote+=" sudo apt-get -o DPkg::Lock::Timeout=600 update -qq"
  remote+=" && sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq"
  remote+=" python3.11 python3.11-venv tmux && rm -rf .venv && python3.11 -m venv .venv; fi"
  remote+="; .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e . $(q "$JAX_SPEC")"
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$remote"
}

do_train() {
  local train inner remote
  train=$(qline .venv/bin/python -m musicflax.train "--config=$config" "--workdir=$workdir" \
    --config.distributed.enabled=True ${extra[@]+"${extra[@]}"})
  # Runs inside tmux on each worker: JAX finds the coordinator and process ids itself;
  # the worker number (for the log's name) comes from the TPU VM's metadata.
  inner="cd ~/musicflax && W=\$(curl -sf --max-time 10 -H Metadata-Flavor:Google"
  inner+=" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"
  inner+=" || hostname) && exec $train >> ~/musicflax/train_worker_\$W.log 2>&1"
  remote="cd ~/musicflax && tmux new-session -d -s $SESSION $(q "$inner")"
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$remote"
}

do_delete() { run "${gcloud_tpu[@]}" delete "$name" "${where[@]}" "$@"; }

describe=("${gcloud_tpu[@]}" describe "$name" "${where[@]}" '--format=value(state)')

case $command in
  create) do_create ;;
  setup) do_setup ;;
  train) do_train ;;
  logs)
    run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" "--worker=$worker" \
      --command "tail -n 200 -F ~/musicflax/train_worker_$worker.log" ;;
  stop)
    run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command \
      "p=\$(tmux list-panes -t $SESSION -F '#{pane_pid}' 2>/dev/null) && kill -TERM \$p || echo \"no training running on \$(hostname)\"" ;;
  delete) do_delete ;;
  watch)
    if ((dry_run)); then
      echo "# every $interval s, while the state is not PREEMPTED or TERMINATED:"
      run "${describe[@]}"
      echo "# then, to recreate the slice and resume training:"
      do_delete --quiet; do_create; do_setup; do_train
      exit 0
    fi
    recreate=0
    while :; do
      if ((!recreate)); then
        state=$("${describe[@]}" 2>/dev/null) || state="UNKNOWN (describe failed)"
        echo "$(date '+%F %T') $name: $state" >&2
        case $state in PREEMPTED|TERMINATED) recreate=1 ;; esac
      fi
      if ((recreate)); then
        echo "$(date '+%F %T') $name: recreating and resuming from the last checkpoint in $workdir" >&2
        do_delete --quiet || true  # may already be gone after a failed attempt
        if do_create && do_setup && do_train; then recreate=0
        else echo "$(date '+%F %T') $name: recreate failed; trying again in $interval s" >&2; fi
      fi
      sleep "$interval"
    done ;;
esac
