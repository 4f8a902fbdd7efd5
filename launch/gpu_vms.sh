#!/usr/bin/env bash
# Runs one musicflax training over several GPU VMs (or any Linux hosts) through ssh: process
# i on host i (one process per host, driving all of its GPUs), the coordinator on the first
# host. Also sets the hosts up (--setup), stops a run (--stop: SIGTERM, which saves and
# exits) and shows it (--status).
#
# Usage: launch/gpu_vms.sh --hosts HOST1,HOST2,... --workdir gs://BUCKET/DIR|/SHARED/DIR
#                          [--config CONFIG] [--port 1234] [--ssh-user U] [--gpus-per-host N]
#                          [--coordinator-host ADDR] [--remote-dir DIR] [--python PY]
#                          [--env K=V ...] [--ssh-opts OPTS] [--setup | --stop | --status]
#                          [--dry-run] [-- extra --config.x=y flags]
#
#   --hosts H1,H2,...     ssh destinations (name or address, optionally user@); the order
#                         gives the process ids 0..N-1
#   --workdir W           the run's checkpoints and logs, reachable from every host: gs://...
#                         (hosts outside Google Cloud need application-default credentials:
#                         `gcloud auth application-default login` on each, or
#                         GOOGLE_APPLICATION_CREDENTIALS=key.json) or an absolute path on a
#                         filesystem every host mounts at that path (NFS, Lustre, ...)
#   --config CONFIG       config file, relative to the repository (default configs/default.py)
#   --port P              coordinator port on the first host (default 1234; open it between
#                         the hosts)
#   --coordinator-host A  address the other hosts reach the first one at (default: the first
#                         host without its user@; use its internal IP if names don't resolve)
#   --ssh-user U          ssh as U (for hosts given without user@)
#   --gpus-per-host N     use GPUs 0..N-1 on each host (CUDA_VISIBLE_DEVICES; default: all)
#   --remote-dir DIR      the run's folder on each host (default ~/musicflax); {i} in it is
#                         replaced by the host's index (hosts that share a home directory)
#   --python PY           train with PY on the hosts instead of DIR/.venv/bin/python (then
#                         --setup makes no venv and installs nothing)
#   --env K=V             environment for the training processes (repeatable)
#   --ssh-opts OPTS       options for every ssh, e.g. '-p 2222 -i ~/.ssh/key' (default:
#                         $MUSICFLAX_SSH_OPTS)
#   --setup               on every host (in parallel): copy this repository's sources
#                         (git-tracked and untracked, not ignored) to DIR/src, replacing the
#                         previous copy; make DIR/.venv with python3.12 or python3.11
#                         (apt-installs python3.11 when neither exists) and
#                         pip install -e DIR/src 'jax[cuda12]==0.10.2'
#   --stop                SIGTERM the training on every host: it saves a checkpoint and exits
#   --status              whether training runs on each host, and the run's heartbeat.json
#   --dry-run             print the commands (one per line, shell-quoted) instead of running them
#   -h, --help            print this help
#
# Without --setup/--stop/--status it starts training, after checking that every host is
# ready (set up, nothing running, the workdir writable or credentials present; else nothing
# starts). Host i runs, in DIR/src, detached (nohup), logging to DIR/train_host_i.log (copied
# to WORKDIR/logs/ every minute and at exit):
#   MUSICFLAX_COORDINATOR=HOST1:PORT MUSICFLAX_NUM_PROCESSES=N MUSICFLAX_PROCESS_ID=i
#   DIR/.venv/bin/python -m musicflax.train --config=... --workdir=... \
#     --config.distributed.enabled=True ...
# If a host fails to start, the hosts already started are stopped again. Starting it again
# after a stop or a crash resumes from the last checkpoint in the workdir.
set -euo pipefail

PROG=launch/gpu_vms.sh
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JAX_SPEC='jax[cuda12]==0.10.2'

source "$REPO/launch/common.sh"

hosts="" workdir="" config=configs/default.py port=1234 ssh_user="" gpus_per_host=""
coordinator_host="" remote_dir="~/musicflax" python="" ssh_opts=${MUSICFLAX_SSH_OPTS:-}
mode=train dry_run=0
envs=() extra=()
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --setup|--stop|--status)
      [[ $mode == train ]] || die "--setup, --stop and --status don't go together"
      mode=${1#--} ;;
    --hosts|--workdir|--config|--port|--ssh-user|--gpus-per-host|--coordinator-host|--remote-dir|--python|--ssh-opts|--env)
      (($# >= 2)) || die "$1 needs a value"
      opt=${1#--}; set -- "--$opt=$2" "${@:3}"; continue ;;
    --env=*)
      [[ ${1#*=} == [A-Za-z_]*=* ]] || die "--env wants NAME=VALUE, got '${1#*=}'"
      envs+=("${1#*=}") ;;
    --hosts=*|--workdir=*|--config=*|--port=*|--ssh-user=*|--gpus-per-host=*|--coordinator-host=*|--remote-dir=*|--python=*|--ssh-opts=*)
      opt=${1%%=*}; opt=${opt#--}; printf -v "${opt//-/_}" '%s' "${1#*=}" ;;
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
[[ $hosts != *, ]] || die "--hosts has an empty or blank entry: '$hosts'"
n=${#host_list[@]}
dests=()
for h in "${host_list[@]}"; do
  if [[ -n $ssh_user && $h != *@* ]]; then dests+=("$ssh_user@$h"); else dests+=("$h"); fi
done
[[ $port =~ ^[1-9][0-9]*$ ]] || die "--port must be a number, got '$port'"
[[ -z $gpus_per_host || $gpus_per_host =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-host must be a positive integer, got '$gpus_per_host'"
[[ -n $remote_dir ]] || die "--remote-dir is empty"
if [[ $mode == train || -n $workdir ]]; then check_workdir host; fi
if [[ $mode == train ]]; then
  [[ -f $REPO/${config%%:*} ]] || die "config file not found in the repository: ${config%%:*}"
fi
coordinator="${coordinator_host:-${host_list[0]#*@}}:$port"
# shellcheck disable=SC2206  # the options are words, as on an ssh command line
ssh_cmd=(ssh ${ssh_opts})

dir_of() { local d=$remote_dir; printf '%s' "${d//\{i\}/$1}"; }
# The worker.sh command line for host i (a string for the remote shell).
worker() {
  local i=$1 cmd=$2 d; shift 2
  d=$(dir_of "$i")
  printf 'bash %s/worker.sh %s --dir %s --id %s --name train_host_%s' "$(rword "$d")" "$cmd" \
    "$(rword "$d")" "$i" "$i"
  (($# == 0)) || printf ' %s' "$(qline "$@")"
}
# ... run only where setup left worker.sh (else a clear message and status 4).
guarded() {
  local i=$1 d; d=$(dir_of "$i")
  printf 'if [ -f %s/worker.sh ]; then %s; else echo "musicflax-worker %s on $(hostname): setup=missing (run gpu_vms.sh --setup)"; exit 4; fi' \
    "$(rword "$d")" "$(worker "$@")" "$i"
}

ship_and_setup() {  # host i: copy the sources and worker.sh, then set up
  local i=$1 tarball=$2 d dest=${dests[$1]}
  d=$(rword "$(dir_of "$i")")
  run_from "$tarball" "${ssh_cmd[@]}" "$dest" "mkdir -p $d && cat > $d/musicflax-src.tar.gz" || return
  run_from "$REPO/launch/worker.sh" "${ssh_cmd[@]}" "$dest" "cat > $d/worker.sh" || return
  run "${ssh_cmd[@]}" -n "$dest" "$(worker "$i" setup) --tarball $d/musicflax-src.tar.gz $(qline \
    --jax-spec "$JAX_SPEC" ${python:+--python "$python"})"
}

case $mode in
  setup)
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/musicflax-gpu.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    if ((dry_run)); then
      echo "# pack the sources (git-tracked and untracked files, not ignored) into $tmp/musicflax-src.tar.gz"
      for i in "${!dests[@]}"; do ship_and_setup "$i" "$tmp/musicflax-src.tar.gz"; done
      exit 0
    fi
    pack_tree "$tmp/musicflax-src.tar.gz"
    pids=()
    for i in "${!dests[@]}"; do
      ship_and_setup "$i" "$tmp/musicflax-src.tar.gz" > "$tmp/host$i.out" 2>&1 &
      pids+=($!)
    done
    failed=()
    for i in "${!dests[@]}"; do
      if wait "${pids[$i]}"; then status=ok; else status=FAILED; failed+=("$i (${dests[$i]})"); fi
      sed "s|^|host $i (${dests[$i]}): |" "$tmp/host$i.out" >&2
      echo "host $i (${dests[$i]}): setup $status" >&2
    done
    ((${#failed[@]} == 0)) || die "setup failed on host $(IFS=,; echo "${failed[*]}" | sed 's/,/, /g')"
    ;;
  stop)
    for i in "${!dests[@]}"; do run "${ssh_cmd[@]}" -n "${dests[$i]}" "$(guarded "$i" stop)" || true; done ;;
  status)
    for i in "${!dests[@]}"; do
      if ((i == 0)) && [[ -n $workdir ]]; then args=(--heartbeat --workdir "$workdir"); else args=(); fi
      run "${ssh_cmd[@]}" -n "${dests[$i]}" "$(guarded "$i" check ${python:+--python "$python"} ${args[@]+"${args[@]}"})" ||
        echo "host $i (${dests[$i]}): no answer" >&2
    done ;;
  train)
    common=(--config "$config" --workdir "$workdir" ${python:+--python "$python"})
    user_env=()
    for e in ${envs[@]+"${envs[@]}"}; do user_env+=(--env "$e"); done
    env_args=(--env "MUSICFLAX_COORDINATOR=$coordinator" --env "MUSICFLAX_NUM_PROCESSES=$n")
    [[ -z $gpus_per_host ]] || env_args+=(--env "CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((gpus_per_host - 1)))")
    env_args+=(${user_env[@]+"${user_env[@]}"})
    if ((dry_run)); then echo "# check that every host is ready before starting any"; fi
    problems=()
    for i in "${!dests[@]}"; do
      check=$(guarded "$i" preflight "${common[@]}" ${user_env[@]+"${user_env[@]}"})
      if ((dry_run)); then run "${ssh_cmd[@]}" -n "${dests[$i]}" "$check"; continue; fi
      if ! out=$("${ssh_cmd[@]}" -n "${dests[$i]}" "$check" 2>&1); then
        out=$(printf '%s\n' "$out" | grep -v '^[[:space:]]*$' | tail -n 1)
        problems+=("host $i (${dests[$i]}): ${out:-ssh failed}")
      fi
    done
    if ((${#problems[@]})); then
      msg=$(printf '%s; ' "${problems[@]}")
      die "nothing started: ${msg%; }"
    fi
    if ((dry_run)); then echo "# start host 0..$((n - 1)); if one fails, stop the ones started"; fi
    for i in "${!dests[@]}"; do
      start=$(worker "$i" start "${common[@]}" --detach nohup "${env_args[@]}" \
        --env "MUSICFLAX_PROCESS_ID=$i" -- --config.distributed.enabled=True ${extra[@]+"${extra[@]}"})
      if ((dry_run)); then run "${ssh_cmd[@]}" -n "${dests[$i]}" "$start"; continue; fi
      if ! "${ssh_cmd[@]}" -n "${dests[$i]}" "$start"; then
        for ((j = 0; j < i; j++)); do
          "${ssh_cmd[@]}" -n "${dests[$j]}" "$(worker "$j" stop --kill-after 30)" >&2 || true
        done
        die "host $i (${dests[$i]}) did not start; stopped hosts 0..$((i - 1)) again"
      fi
    done
    if ((!dry_run)); then
      echo "$PROG: started $n processes; follow host 0 with: ssh ${dests[0]} tail -F $(dir_of 0)/train_host_0.log" >&2
      echo "$PROG: logs are copied to $workdir/logs/; stop with --stop, look with --status" >&2
    fi ;;
esac
