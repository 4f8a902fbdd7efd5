#!/usr/bin/env bash
# Runs musicflax on a Cloud TPU VM slice (one host or many) with gcloud: create the slice
# (directly or through a queued resource), copy the run's pinned code to every worker and
# install it, start training on every worker, follow the log, keep a Spot run alive through
# preemptions until its last step, delete.
#
# Usage: launch/tpu_vm.sh COMMAND --name NAME --zone ZONE [options] [-- extra --config.x=y flags]
#
# Commands:
#   create   create the slice (needs --type; --runtime defaults from the type; --spot;
#            --queued: request it as a queued resource, which Google recommends for Spot)
#   setup    copy the run's code to every worker and install it (needs --workdir): the code
#            pinned in WORKDIR/code/musicflax-src.tar.gz, or, on the run's first setup (or
#            with --repin), this repository's sources packed and pinned there. Each worker
#            unpacks it to DIR/src, makes DIR/.venv with python3.12 or python3.11 (apt-installs
#            python3.11 and tmux when missing) and pip install -e DIR/src 'jax[tpu]==0.10.2'
#   train    start training on every worker, in tmux session musicflax-W (needs --workdir);
#            worker W logs to DIR/train_worker_W.log, copied to WORKDIR/logs/ every minute
#   status   the slice's state and health, the run's heartbeat, each worker's trainer
#   logs     follow the log of worker 0 (or --worker W)
#   stop     SIGTERM the training on every worker: it saves a checkpoint and exits
#   watch    keep the run alive until its last step (leave it running, e.g. in tmux here).
#            Every --interval seconds it reads WORKDIR/heartbeat.json and the slice's state:
#              heartbeat "finished" at the last step: stop watching (and, with
#                  --delete-when-done, delete the slice once the trainers have exited and
#                  copied their logs, waiting at most 600 s)
#              NOT_FOUND, PREEMPTED, TERMINATED, STOPPED (queued resource: SUSPENDED, FAILED,
#                  or its node gone): delete, create, setup, train
#              READY but health not HEALTHY for --unhealthy-polls polls in a row: the same
#              READY, code not set up on a worker: setup, train
#              READY, a worker's trainer not running, or the heartbeat older than
#                  --stale-after seconds: stop what is left, train again (same slice)
#              CREATING, queued, repairing, ...: wait
#            setup and train are tried --retries times before the slice is given up
#            (deleted, then created again). A second watch of the same slice is refused.
#            Needs what create and train need. Stop it with Ctrl-C.
#   delete   delete the slice (asks first); with --queued, the queued resource and its slice
#
# Options:
#   --name NAME       TPU name (required)
#   --zone ZONE       zone, e.g. us-central2-b (required)
#   --project P       project (default: gcloud's configured project)
#   --type TYPE       accelerator type: v4-32, v5p-8, v5litepod-8, v6e-8, ...
#   --runtime V       runtime version; default from the type family: v2/v3/v4 ->
#                     tpu-ubuntu2204-base, v5p -> v2-alpha-tpuv5, v5litepod/v5e ->
#                     v2-alpha-tpuv5-lite, v6e -> v2-alpha-tpuv6e
#   --spot            Spot capacity (cheaper, can be preempted: use watch)
#   --queued          go through a queued resource (create, delete, watch)
#   --qr-name QR      the queued resource's name (default NAME-qr)
#   --config CONFIG   config file, relative to the repository (default configs/default.py)
#   --workdir W       the run's checkpoints and logs: gs://bucket/path (the TPU's service
#                     account needs write access), or an absolute path every worker mounts
#   --remote-dir DIR  the run's folder on each worker (default ~/musicflax)
#   --python PY       train with PY on the workers instead of DIR/.venv/bin/python (setup
#                     then makes no venv and installs nothing)
#   --env K=V         environment for training on every worker (repeatable)
#   --repin           (setup, watch) pin this repository's current sources as the run's code
#   --worker W        worker whose log `logs` follows (default 0)
#   --interval S      seconds between polls in watch (default 60)
#   --retries N       attempts at setup and train before the slice is given up (default 3)
#   --unhealthy-polls N  polls in a row with an unhealthy slice before it is recreated (default 3)
#   --stale-after S   a running heartbeat older than S seconds means the trainer hangs
#                     (default 1800; 0: never)
#   --max-restarts N  watch gives up (status 1) after N restarts without progress (default 5)
#   --delete-when-done  watch deletes the slice after the last step
#   --max-polls N     watch stops (status 3) after N polls (default 0: no limit)
#   --dry-run         print the commands (one per line, shell-quoted) instead of running them
#   -h, --help        print this help
set -euo pipefail

PROG=launch/tpu_vm.sh
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JAX_SPEC='jax[tpu]==0.10.2'
FINISH_WAIT=600  # seconds a finished run's trainers get to save, copy their logs and exit

source "$REPO/launch/common.sh"

command="" name="" zone="" project="" type="" runtime="" spot=0 queued=0 qr_name="" dry_run=0
config=configs/default.py workdir="" worker=0 interval=60 remote_dir="~/musicflax" python=""
repin=0 retries=3 unhealthy_polls=3 stale_after=1800 max_restarts=5 delete_when_done=0 max_polls=0
envs=() extra=()
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --spot) spot=1 ;;
    --queued) queued=1 ;;
    --repin) repin=1 ;;
    --delete-when-done) delete_when_done=1 ;;
    --name|--zone|--project|--type|--runtime|--config|--workdir|--worker|--interval|--qr-name|--remote-dir|--python|--env|--retries|--unhealthy-polls|--stale-after|--max-restarts|--max-polls)
      (($# >= 2)) || die "$1 needs a value"
      set -- "$1=$2" "${@:3}"; continue ;;
    --env=*)
      [[ ${1#*=} == [A-Za-z_]*=* ]] || die "--env wants NAME=VALUE, got '${1#*=}'"
      envs+=("${1#*=}") ;;
    --name=*|--zone=*|--project=*|--type=*|--runtime=*|--config=*|--workdir=*|--worker=*|--interval=*|--qr-name=*|--remote-dir=*|--python=*|--retries=*|--unhealthy-polls=*|--stale-after=*|--max-restarts=*|--max-polls=*)
      opt=${1%%=*}; opt=${opt#--}; printf -v "${opt//-/_}" '%s' "${1#*=}" ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option '$1' (flags for training go after --; see --help)" ;;
    *) [[ -z $command ]] || die "one command at a time (got '$command' and '$1')"
       command=$1 ;;
  esac
  shift
done

case $command in
  create|setup|train|status|logs|stop|watch|delete) ;;
  "") die "missing command: create, setup, train, status, logs, stop, watch or delete (see --help)" ;;
  *) die "unknown command '$command': use create, setup, train, status, logs, stop, watch or delete" ;;
esac
[[ -n $name ]] || die "missing --name (the TPU's name)"
[[ -n $zone ]] || die "missing --zone (e.g. --zone=us-central2-b)"
[[ $worker =~ ^[0-9]+$ ]] || die "--worker must be a worker number, got '$worker'"
[[ $interval =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ && ! $interval =~ ^[0.]+$ ]] ||
  die "--interval must be a positive number of seconds, got '$interval'"
for opt in retries unhealthy_polls max_restarts; do
  [[ ${!opt} =~ ^[1-9][0-9]*$ ]] || die "--${opt//_/-} must be a positive integer, got '${!opt}'"
done
for opt in stale_after max_polls; do
  [[ ${!opt} =~ ^[0-9]+$ ]] || die "--${opt//_/-} must be a whole number, got '${!opt}'"
done
[[ -n $remote_dir ]] || die "--remote-dir is empty"
qr_name=${qr_name:-$name-qr}

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
if [[ $command == setup || $command == train || $command == watch ]]; then
  check_workdir worker
fi
if [[ $command == train || $command == watch ]]; then
  [[ -f $REPO/${config%%:*} ]] || die "config file not found in the repository: ${config%%:*}"
fi
[[ -z $workdir ]] || workdir=${workdir%/}

gcloud_tpu=(gcloud compute tpus tpu-vm)
gcloud_qr=(gcloud compute tpus queued-resources)
where=("--zone=$zone")
[[ -z $project ]] || where+=("--project=$project")
rdir=$(rword "$remote_dir")
log() { echo "$(date '+%F %T') $name: $*" >&2; }

# ------------------------------------------------------------------ the commands on workers

# worker.sh COMMAND ... for every worker (a string for the remote shell); where setup has
# not left worker.sh yet, a check line saying so (status 4).
on_worker() {
  local cmd=$1; shift
  local line
  line="bash $rdir/worker.sh $cmd --dir $rdir --name $(q 'train_worker_{i}')"
  [[ -z $python ]] || line+=" --python $(q "$python")"
  (($# == 0)) || line+=" $(qline "$@")"
  printf 'if [ -f %s/worker.sh ]; then %s; else echo "musicflax-worker ? on $(hostname): setup=missing trainer=stopped"; exit 4; fi' \
    "$rdir" "$line"
}
ssh_all() { run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$1"; }

# ------------------------------------------------------------------ slice

do_create() {
  local cmd
  if ((queued)); then
    cmd=("${gcloud_qr[@]}" create "$qr_name" "${where[@]}" "--node-id=$name"
         "--accelerator-type=$type" "--runtime-version=$runtime")
  else
    cmd=("${gcloud_tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$type" "--version=$runtime")
  fi
  ((spot)) && cmd+=(--spot)
  run "${cmd[@]}"
}

do_delete() {  # do_delete [--quiet]
  if ((queued)); then run "${gcloud_qr[@]}" delete "$qr_name" "${where[@]}" --force "$@"
  else run "${gcloud_tpu[@]}" delete "$name" "${where[@]}" "$@"; fi
}

describe=("${gcloud_tpu[@]}" describe "$name" "${where[@]}" '--format=value(state,health)')
describe_qr=("${gcloud_qr[@]}" describe "$qr_name" "${where[@]}" '--format=value(state.state)')

# Runs a describe; prints its state fields, NOT_FOUND, or ERROR: <first line of the error>.
describe_state() {
  local out err rc=0
  err=$(mktemp "${TMPDIR:-/tmp}/musicflax-describe.XXXXXX")
  out=$("$@" 2>"$err") || rc=$?
  if ((rc == 0)); then printf '%s\n' "$out" | tr '\t' ' '
  elif grep -qiE 'NOT_FOUND|not found|does not exist' "$err"; then echo NOT_FOUND
  else echo "ERROR: $(grep -v '^[[:space:]]*$' "$err" | head -n 1)"; fi
  rm -f "$err"
}

# ------------------------------------------------------------------ the run's pinned code

pin_url() { printf '%s/code/musicflax-src.tar.gz' "$workdir"; }
# Where the pin lives when the workdir is a path that is not mounted here.
local_pin() { printf '%s/musicflax/pins/%s.tar.gz' "${XDG_STATE_HOME:-$HOME/.local/state}" "$name"; }

# pin LOCAL.tar.gz: the run's pinned code into LOCAL; pins this tree first if there is none
# yet (or with --repin).
pin() {
  local out=$1 url have=0 msg
  url=$(pin_url)
  if ((dry_run)); then
    if ((repin)); then
      echo "# pin this repository's sources as the run's code"
      echo "# (pack_tree $out)"
      if [[ $workdir == gs://* ]]; then run gcloud storage cp "$out" "$url"; else run cp "$out" "$url"; fi
    else
      echo "# the run's pinned code: fetched from $url, or (first setup) this tree packed and put there"
      if [[ $workdir == gs://* ]]; then run gcloud storage cp "$url" "$out"; else run cp "$url" "$out"; fi
    fi
    return
  fi
  if [[ $workdir == gs://* ]]; then
    if ((!repin)); then
      if msg=$(gcloud storage ls "$url" 2>&1); then have=1
      elif ! grep -qiE 'matched no objects|not found|No URLs matched|NotFound|does not exist' <<< "$msg"; then
        log "cannot tell whether $url exists: $(head -n 1 <<< "$msg")"; return 1
      fi
    fi
    if ((have)); then
      gcloud storage cp "$url" "$out" >/dev/null 2>&1 || { log "could not fetch $url"; return 1; }
      log "code: the run's pin $url"
    else
      pack_tree "$out"
      gcloud storage cp "$out" "$url" >/dev/null 2>&1 || { log "could not upload the pin to $url"; return 1; }
      log "code: pinned this tree ($(sed -n 2p <(tar -xzOf "$out" PINNED))) as $url"
    fi
  else
    [[ -d $workdir ]] || { url=$(local_pin); mkdir -p "$(dirname "$url")"; }
    if ((!repin)) && [[ -f $url ]]; then
      cp "$url" "$out"; log "code: the run's pin $url"
    else
      pack_tree "$out"; mkdir -p "$(dirname "$url")"; cp "$out" "$url.tmp.$$" && mv -f "$url.tmp.$$" "$url"
      log "code: pinned this tree as $url"
    fi
  fi
}

# setup_workers STAGE: copy STAGE/musicflax-src.tar.gz and worker.sh, then set up every worker.
setup_workers() {
  local stage=$1
  run "${gcloud_tpu[@]}" scp "$stage/musicflax-src.tar.gz" "$stage/musicflax-worker.sh" "$name:" \
    "${where[@]}" --worker=all || return
  local line="bash musicflax-worker.sh setup --dir $rdir --tarball musicflax-src.tar.gz"
  line+=" --jax-spec $(q "$JAX_SPEC")"
  [[ -z $python ]] || line+=" --python $(q "$python")"
  ssh_all "$line"
}

start_workers() {
  local args=(--config "$config" --workdir "$workdir") e
  for e in ${envs[@]+"${envs[@]}"}; do args+=(--env "$e"); done
  ssh_all "$(on_worker start "${args[@]}" -- --config.distributed.enabled=True ${extra[@]+"${extra[@]}"})"
}

stop_workers() { ssh_all "$(on_worker stop "$@")"; }

# ------------------------------------------------------------------ heartbeat, workers

hb_state="" hb_step="" hb_total="" hb_time=""
read_heartbeat() {
  local json=""
  hb_state="" hb_step="" hb_total="" hb_time=""
  if [[ $workdir == gs://* ]]; then json=$(gcloud storage cat "$workdir/heartbeat.json" 2>/dev/null) || json=""
  elif [[ -d $workdir ]]; then json=$(cat "$workdir/heartbeat.json" 2>/dev/null) || json=""
  else
    json=$("${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=0 \
      --command "cat $(q "$workdir/heartbeat.json")" 2>/dev/null) || json=""
  fi
  json=$(printf '%s' "$json" | tr -d '\n')
  local s='[[:space:]]*'
  [[ $json =~ \"state\"$s:$s\"([a-z]+)\" ]] && hb_state=${BASH_REMATCH[1]}
  [[ $json =~ \"step\"$s:$s([0-9]+) ]] && hb_step=${BASH_REMATCH[1]}
  [[ $json =~ \"num_train_steps\"$s:$s([0-9]+) ]] && hb_total=${BASH_REMATCH[1]}
  [[ $json =~ \"time\"$s:$s([0-9]+) ]] && hb_time=${BASH_REMATCH[1]}
  return 0
}

# The run's last step: --config.num_train_steps among the extra flags, else the heartbeat's.
target_steps() {
  local t=$hb_total i
  for ((i = 0; i < ${#extra[@]}; i++)); do
    case ${extra[$i]} in
      --config.num_train_steps=*) t=${extra[$i]#*=} ;;
      --config.num_train_steps) ((i + 1 < ${#extra[@]})) && t=${extra[$((i + 1))]} ;;
    esac
  done
  printf '%s' "$t"
}
finished() {
  local t; t=$(target_steps)
  [[ $hb_state == finished && -n $hb_step && -n $t ]] && ((hb_step >= t))
}

# Sets workers to running, missing (a worker is not set up), dead (a trainer is not
# running) or unreachable (the ssh failed), from each worker's check line.
workers=""
check_workers() {
  local out rc=0
  out=$("${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$(on_worker check)" 2>&1) || rc=$?
  local lines; lines=$(grep '^musicflax-worker ' <<< "$out" || true)
  if [[ -z $lines ]]; then workers=unreachable
  elif grep -q 'setup=missing' <<< "$lines"; then workers=missing
  elif grep -q 'trainer=stopped' <<< "$lines"; then workers=dead
  elif ((rc != 0)); then workers=unreachable
  else workers=running; fi
  [[ $workers == running ]] || log "workers: $workers: $(tr '\n' ';' <<< "${lines:-$(tail -n 1 <<< "$out")}" | sed 's/;$//; s/;/; /g')"
}

# ------------------------------------------------------------------ commands

stage=""
make_stage() {
  stage=$(mktemp -d "${TMPDIR:-/tmp}/musicflax-tpu.XXXXXX")
  cp "$REPO/launch/worker.sh" "$stage/musicflax-worker.sh"
}

case $command in
  create) do_create ;;
  delete) do_delete ;;
  setup)
    make_stage; trap 'rm -rf "$stage"' EXIT
    pin "$stage/musicflax-src.tar.gz" || die "could not get the run's code (see above)"
    setup_workers "$stage" ;;
  train) start_workers ;;
  stop) stop_workers ;;
  logs)
    run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" "--worker=$worker" \
      --command "tail -n 200 -F $rdir/train_worker_$worker.log" ;;
  status)
    if ((dry_run)); then
      ((queued)) && run "${describe_qr[@]}"
      run "${describe[@]}"
      [[ -z $workdir || $workdir != gs://* ]] || run gcloud storage cat "$workdir/heartbeat.json"
      ssh_all "$(on_worker check)"
      exit 0
    fi
    ((queued)) && echo "queued resource $qr_name: $(describe_state "${describe_qr[@]}")"
    node=$(describe_state "${describe[@]}")
    echo "slice $name: $node"
    if [[ -n $workdir ]]; then
      read_heartbeat
      echo "heartbeat: ${hb_state:-none}${hb_step:+ at step $hb_step/$hb_total}${hb_time:+, $(( $(date +%s) - hb_time ))s ago}"
    fi
    [[ $node != READY* ]] || ssh_all "$(on_worker check)" ;;
  watch)
    if ((dry_run)); then
      echo "# every $interval s: is the run finished (then stop; --delete-when-done: delete the slice)"
      [[ $workdir != gs://* ]] || run gcloud storage cat "$workdir/heartbeat.json"
      echo "# the slice's state and health"
      ((queued)) && run "${describe_qr[@]}"
      run "${describe[@]}"
      echo "# READY and healthy: is every worker set up, is its trainer alive"
      ssh_all "$(on_worker check)"
      echo "# a trainer is dead: stop what is left, start again"
      stop_workers --kill-after 60
      start_workers
      echo "# NOT_FOUND, PREEMPTED, TERMINATED, unhealthy: recreate, set up the pinned code, train"
      do_delete --quiet; do_create
      stage='$STAGE'
      pin "$stage/musicflax-src.tar.gz"; setup_workers "$stage"; start_workers
      exit 0
    fi

    # One watch per slice on this machine: a symlink naming the owner's pid.
    lock="${TMPDIR:-/tmp}/musicflax-watch-$(printf '%s' "${project:-default}-$zone-$name" | tr -c 'A-Za-z0-9._-' _).lock"
    if ! ln -s "$$" "$lock" 2>/dev/null; then
      other=$(readlink "$lock" 2>/dev/null || true)
      if [[ -n $other ]] && kill -0 "$other" 2>/dev/null; then
        die "another watch (pid $other) is watching $name: stop it first (lock $lock)"
      fi
      rm -f "$lock"
      ln -s "$$" "$lock" 2>/dev/null || die "could not take the lock $lock"
    fi
    make_stage
    napper=""
    trap 'rm -rf "$stage"; [[ -z $napper ]] || kill "$napper" 2>/dev/null || true
          [[ $(readlink "$lock" 2>/dev/null) != "$$" ]] || rm -f "$lock"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    pin "$stage/musicflax-src.tar.gz" || die "could not get the run's code (see above)"
    log "watching (every $interval s; workdir $workdir)"

    polls=0 unhealthy=0 unreachable=0 restarts=0 progress=-1 started_at=0 finishing_since=0

    give_up() {
      log "giving up on this slice: $1"
      do_delete --quiet || true
    }
    bring_up() {  # set up and train, --retries times
      local attempt
      for ((attempt = 1; attempt <= retries; attempt++)); do
        if setup_workers "$stage" && start_workers; then
          started_at=$(date +%s); log "training started"; return 0
        fi
        log "setup/train attempt $attempt of $retries failed"
        ((attempt == retries)) || sleep "$interval"
      done
      give_up "setup/train failed $retries times"; return 1
    }
    recreate() {  # recreate REASON [gone]
      log "$1: recreating the slice, then resuming from the last checkpoint in $workdir"
      unhealthy=0 unreachable=0
      [[ ${2:-} == gone ]] || do_delete --quiet || true
      if ! do_create; then log "create failed (no capacity?): trying again next poll"; return; fi
      ((queued)) || bring_up || true  # a queued resource's node comes later: see the polls
    }
    restart() {
      if [[ -n $hb_step ]] && ((hb_step > progress)); then progress=$hb_step restarts=0; fi
      restarts=$((restarts + 1))
      if ((restarts > max_restarts)); then
        log "giving up: the trainer stopped $max_restarts times without progress (heartbeat: ${hb_state:-none} at step ${hb_step:-?}); see $workdir/logs/"
        exit 1
      fi
      log "$1: restarting training (restart $restarts of at most $max_restarts without progress)"
      stop_workers --kill-after 60 || true
      local attempt
      for ((attempt = 1; attempt <= retries; attempt++)); do
        if start_workers; then started_at=$(date +%s); return 0; fi
        log "train attempt $attempt of $retries failed"
        ((attempt == retries)) || sleep "$interval"
      done
      give_up "train failed $retries times"
    }

    while :; do
      polls=$((polls + 1))
      read_heartbeat
      if finished; then
        if ((!delete_when_done)); then
          log "finished: step $hb_step saved; the slice is kept (delete it: $PROG delete --name $name --zone $zone$( ((queued)) && echo ' --queued'))"
          exit 0
        fi
        check_workers
        now=$(date +%s)
        if [[ $workers == running ]] && ((finishing_since == 0 || now - finishing_since < FINISH_WAIT)); then
          ((finishing_since)) || { finishing_since=$now
            log "finished at step $hb_step; waiting for the trainers to exit (at most $FINISH_WAIT s)"; }
        else
          log "finished: step $hb_step saved; deleting the slice"
          do_delete --quiet || log "delete failed (gone already?): check with $PROG status"
          exit 0
        fi
      else
        node=""
        if ((queued)); then
          qr=$(describe_state "${describe_qr[@]}")
          case $qr in
            NOT_FOUND) recreate "queued resource $qr_name NOT_FOUND" gone ;;
            ACTIVE) node=$(describe_state "${describe[@]}")
                    [[ $node != NOT_FOUND ]] || { recreate "queued resource ACTIVE but its node is gone"; node=""; } ;;
            SUSPENDED|FAILED) recreate "queued resource $qr" ;;
            *) log "queued resource $qr_name: ${qr:-no state}: waiting" ;;
          esac
        else
          node=$(describe_state "${describe[@]}")
        fi
        read -r state health _ <<< "$node" || true
        case $state in
          "") ;;
          NOT_FOUND) recreate NOT_FOUND gone ;;
          PREEMPTED|TERMINATED|STOPPED) recreate "$state" ;;
          READY)
            case $health in
              ""|HEALTHY|HEALTH_UNSPECIFIED) unhealthy=0 ;;
              *) unhealthy=$((unhealthy + 1)) ;;
            esac
            if ((unhealthy >= unhealthy_polls)); then recreate "health $health for $unhealthy polls"
            elif ((unhealthy > 0)); then log "READY but health $health ($unhealthy of $unhealthy_polls polls)"
            else
              check_workers
              case $workers in
                running)
                  unreachable=0
                  now=$(date +%s) last=${hb_time:-0}
                  ((last > started_at)) || last=$started_at
                  if [[ $hb_state == running ]] && ((stale_after > 0 && now - last > stale_after)); then
                    restart "heartbeat at step $hb_step is $((now - last))s old"
                  else
                    log "READY, training${hb_step:+ at step $hb_step/$hb_total}"
                  fi ;;
                missing) unreachable=0; log "READY, not set up"; bring_up || true ;;
                dead) unreachable=0
                      read_heartbeat  # the trainers may have finished since this poll read it
                      if finished; then log "the trainers exited: finished at step $hb_step"
                      else restart "trainer not running (heartbeat: ${hb_state:-none}${hb_step:+ at step $hb_step})"; fi ;;
                *) unreachable=$((unreachable + 1))
                   if ((unreachable >= retries)); then give_up "workers unreachable for $unreachable polls"; unreachable=0; fi ;;
              esac
            fi ;;
          ERROR:*) log "describe failed: ${node#ERROR: }" ;;
          *) log "$state: waiting" ;;
        esac
      fi
      if ((max_polls && polls >= max_polls)); then log "stopping after $polls polls (--max-polls)"; exit 3; fi
      sleep "$interval" & napper=$!
      wait "$napper" || true  # a signal ends the wait at once (a foreground sleep would delay it)
    done ;;
esac
