#!/usr/bin/env bash
# Runs one musicflax training over several GPU VMs through ssh: process i on host i (one
# process per host, driving all of its GPUs), the coordinator on the first host. Also sets
# the hosts up (--setup) and stops a run (--stop: SIGTERM, which saves and exits).
#
# Usage: launch/gpu_vms.sh --hosts HOST1,HOST2,... --workdir gs://BUCKET/DIR [--config CONFIG]
#                          [--port 1234] [--ssh-user U] [--gpus-per-host N]
#                          [--coordinator-host ADDR] [--setup | --stop] [--dry-run]
#                          [-- extra --config.x=y flags]
#
#   --hosts H1,H2,...     ssh destinations (name or address, optionally user@); the order
#                         gives the process ids 0..N-1
#   --workdir gs://...    shared checkpoint/log folder (every host must reach it)
#   --config CONFIG       config file, relative to the repository (default configs/default.py)
#   --port P              coordinator port on the first host (default 1234; open it between
#                         the hosts)
#   --coordinator-host A  address the other hosts reach the first one at (default: the first
#                         host without its user@; use its internal IP if names don't resolve)
#   --ssh-user U          ssh as U (for hosts given without user@)
#   --gpus-per-host N     use GPUs 0..N-1 on each host (CUDA_VISIBLE_DEVICES; default: all)
#   --setup               copy this repository to ~/musicflax on every host (rsync, without
#                         .venv, .git, workdirs) and install it there:
#                         .venv (Python 3.11): pip install -e . 'jax[cuda12]==0.10.2'
#   --stop                SIGTERM the training on every host: it saves a checkpoint and exits
#   --dry-run             print the commands (one per line, shell-quoted) instead of running them
#   -h, --help            print this help
#
# Without --setup/--stop it starts training: on host i, in ~/musicflax,
#   MUSICFLAX_COORDINATOR=HOST1:PORT MUSICFLAX_NUM_PROCESSES=N MUSICFLAX_PROCESS_ID=i
#   nohup .venv/bin/python -m musicflax.train --config=... --workdir=... \
#     --config.distributed.enabled=True ... > ~/musicflax/train_host_i.log 2>&1 &
# Starting it again after a stop or a crash resumes from the last checkpoint in the workdir.
set -euo pipefail

PROG=launch/gpu_vms.sh
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JAX_SPEC='jax[cuda12]==0.10.2'

source "$REPO/launch/common.sh"
# Prints the command (--dry-run) or runs it.
run() { if ((dry_run)); then qline "$@"; echo; else "$@"; fi; }

hosts="" workdir="" config=configs/default.py port=1234 ssh_user="" gpus_per_host=""
coordinator_host="" mode=train dry_run=0
extra=()
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --setup|--stop)
      [[ $mode == train ]] || die "--setup and --stop don't go together"
      mode=${1#--} ;;
    --hosts|--workdir|--config|--port|--ssh-user|--gpus-per-host|--coordinator-host)
      (($# >= 2)) || die "$1 needs a value"
      opt=${1#--}; declare "${opt//-/_}=$2"; shift ;;
    --hosts=*|--workdir=*|--config=*|--port=*|--ssh-user=*|--gpus-per-host=*|--coordinator-host=*)
      opt=${1%%=*}; opt=${opt#--}; declare "${opt//-/_}=${1#*=}" ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1' (flags for training go after --; see --help)" ;;
  esac
  shift
done

[[ -n $hosts ]] || die "missing --hosts (comma-separated ssh destinations, e.g. --hosts=gpu-0,gpu-1)"
IFS=, read -r -a host_list <<< "$hosts"
for h in "${host_list[@]}"; do
  [[ -n $h && $h != *[[:space:]]* ]] || die "--hosts has an empty or blank entry: '$hosts'"
done
n=${#host_list[@]}
dests=()
for h in "${host_list[@]}"; do
  if [[ -n $ssh_user && $h != *@* ]]; then dests+=("$ssh_user@$h"); else dests+=("$h"); fi
done
[[ $port =~ ^[1-9][0-9]*$ ]] || die "--port must be a number, got '$port'"
[[ -z $gpus_per_host || $gpus_per_host =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-host must be a positive integer, got '$gpus_per_host'"
if [[ $mode == train ]]; then
  [[ -n $workdir ]] || die "missing --workdir (a gs://bucket/path every host can reach)"
  [[ $workdir == gs://* ]] || die "--workdir must start with gs:// (hosts need a shared path), got '$workdir'"
  [[ -f $REPO/${config%%:*} ]] || die "config file not found in the repository: ${config%%:*}"
fi
coordinator="${coordinator_host:-${host_list[0]#*@}}:$port"

case $mode in
  setup)
    # Python 3.11 is needed; on Ubuntu it is installed with apt when missing. The NVIDIA
    # driver must already be there (CUDA 12 wheels need driver >= 525).
    remote="set -e; cd ~/musicflax"
    remote+="; if ! python3.11 -m venv .venv >/dev/null 2>&1; then"
    remote+=" sudo apt-get -o DPkg::Lock::Timeout=600 update -qq"
    remote+=" && sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq"
    remote+=" python3.11 python3.11-venv && rm -rf .venv && python3.11 -m venv .venv; fi"
    remote+="; .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e . $(q "$JAX_SPEC")"
    for i in "${!dests[@]}"; do
      run rsync -az --delete --exclude=.git --exclude=.venv --exclude=__pycache__ \
        --exclude='*.egg-info' --exclude=.pytest_cache --exclude='*.log' --exclude='*.pid' \
        --exclude=/workdirs --exclude=/build --exclude=/tmp "$REPO/" "${dests[$i]}:musicflax/"
      run ssh "${dests[$i]}" "$remote"
    done ;;
  stop)
    for i in "${!dests[@]}"; do
      run ssh -n "${dests[$i]}" "kill -TERM \$(cat ~/musicflax/train_host_$i.pid) || echo \"no training running on \$(hostname)\""
    done ;;
  train)
    train=$(qline .venv/bin/python -m musicflax.train "--config=$config" "--workdir=$workdir" \
      --config.distributed.enabled=True ${extra[@]+"${extra[@]}"})
    env_common=$(qline "MUSICFLAX_COORDINATOR=$coordinator" "MUSICFLAX_NUM_PROCESSES=$n")
    [[ -z $gpus_per_host ]] || env_common+=" CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus_per_host - 1)))"
    for i in "${!dests[@]}"; do
      pidfile="~/musicflax/train_host_$i.pid"
      # Refuses to start a second copy; $! is python's pid (nohup execs it), for --stop.
      remote="cd ~/musicflax && if [ -f $pidfile ] && kill -0 \$(cat $pidfile) 2>/dev/null;"
      remote+=" then echo \"training already running on \$(hostname)\" >&2; exit 1; fi"
      remote+=" && { $env_common MUSICFLAX_PROCESS_ID=$i nohup $train"
      remote+=" > ~/musicflax/train_host_$i.log 2>&1 < /dev/null & echo \$! > $pidfile; }"
      run ssh -n "${dests[$i]}" "$remote"
    done ;;
esac
