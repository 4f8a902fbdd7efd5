#!/usr/bin/env bash
# What the launchers run on each TPU VM worker or GPU host (through `gcloud ... ssh` or ssh):
# unpack the run's pinned code, make the Python 3.12/3.11 venv, start the trainer detached,
# check that it is alive, stop it, and copy its log into the workdir. Standalone (it is
# copied to DIR/worker.sh on the host); tpu_vm.sh and gpu_vms.sh build these commands.
#
# Usage: launch/worker.sh COMMAND --dir DIR [options] [-- extra --config.x=y flags]
#
# Commands:
#   setup      unpack --tarball into DIR/src, replacing the previous code (DIR/.venv and the
#              logs stay); make DIR/.venv with python3.12 or python3.11 (apt-installs
#              python3.11 when neither can make a venv) and pip install -e DIR/src JAX_SPEC.
#              Skips the install when the same tarball is already installed. Refuses while
#              a trainer runs in DIR.
#   start      start training detached (tmux session musicflax-ID, or nohup), logging to
#              DIR/NAME.log; refuses (status 1) while one already runs
#   check      print one line `musicflax-worker ID on HOST: setup=ok|missing
#              trainer=running|stopped [pid=P]` (and `heartbeat: {...}` with --heartbeat)
#   preflight  exit 0 only if `start` can run now: set up, no trainer running, the config
#              exists, the workdir is writable (a path) or Google credentials exist (gs://)
#   stop       SIGTERM the trainer (it saves a checkpoint and exits); --kill-after S:
#              SIGKILL it if it still runs S seconds later
#   run        (what `start` runs detached) the trainer, its log, the log's copy in the workdir
#
# Options:
#   --dir DIR         the run's folder on this host (a leading ~/ is this host's home)
#   --id ID           worker/process number, used in names; 'auto' (default): $MUSICFLAX_WORKER_ID,
#                     else the TPU VM metadata's agent-worker-number, else the hostname
#   --name NAME       log DIR/NAME.log, pid file DIR/NAME.pid, copy WORKDIR/logs/NAME.log;
#                     {i} is replaced by the id (default train_{i})
#   --tarball FILE    (setup) the code to unpack
#   --jax-spec SPEC   (setup) the jax requirement to install, e.g. 'jax[tpu]==0.10.2'
#   --python PY       run training with PY instead of DIR/.venv/bin/python (setup then
#                     makes no venv and installs nothing; PY must have musicflax's deps)
#   --config CONFIG   (start, preflight) config file relative to the code (default configs/default.py)
#   --workdir W       (start, preflight, check --heartbeat) the run's gs:// or shared folder
#   --env K=V         (start, preflight) environment for the trainer (repeatable); MUSICFLAX_*, XLA_FLAGS,
#                     JAX_*, TPU_*, CUDA_VISIBLE_DEVICES and GOOGLE_APPLICATION_CREDENTIALS are
#                     passed on from this shell as well
#   --detach tmux|nohup  (start) default: tmux when installed, else nohup
#   --log-every S     (start) copy the log into WORKDIR/logs every S seconds (default 60)
#   --kill-after S    (stop) see stop
#   --heartbeat       (check) also print the workdir's heartbeat.json
#   -h, --help        print this help
set -euo pipefail

PROG=launch/worker.sh
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "$PROG: error: $*" >&2; exit 2; }
note() { echo "musicflax-worker $id on $(hostname): $*" >&2; }

command="" dir="" id=auto name='train_{i}' tarball="" jax_spec="" python="" config=configs/default.py
workdir="" detach="" log_every=60 kill_after="" heartbeat=0
envs=() extra=()
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --heartbeat) heartbeat=1 ;;
    --dir|--id|--name|--tarball|--jax-spec|--python|--config|--workdir|--detach|--log-every|--kill-after|--env)
      (($# >= 2)) || die "$1 needs a value"
      case $1 in
        --env) [[ $2 == [A-Za-z_]*=* ]] || die "--env wants NAME=VALUE, got '$2'"; envs+=("$2") ;;
        *) opt=${1#--}; printf -v "${opt//-/_}" '%s' "$2" ;;
      esac
      shift ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option '$1'" ;;
    *) [[ -z $command ]] || die "one command at a time (got '$command' and '$1')"; command=$1 ;;
  esac
  shift
done
case $command in
  setup|start|check|preflight|stop|run) ;;
  "") die "missing command: setup, start, check, preflight, stop or run (see --help)" ;;
  *) die "unknown command '$command'" ;;
esac
[[ -n $dir ]] || die "missing --dir"
# Paths may come with a leading ~/ that the remote shell left quoted.
for opt in dir tarball python; do
  [[ ${!opt} != "~/"* ]] || printf -v "$opt" '%s' "$HOME/${!opt#"~/"}"
done
[[ -z $kill_after || $kill_after =~ ^[0-9]+$ ]] || die "--kill-after must be seconds, got '$kill_after'"
[[ $log_every =~ ^[1-9][0-9]*$ ]] || die "--log-every must be positive seconds, got '$log_every'"

if [[ $id == auto ]]; then
  if [[ -n ${MUSICFLAX_WORKER_ID:-} ]]; then id=$MUSICFLAX_WORKER_ID
  elif id=$(curl -sf --max-time 5 -H Metadata-Flavor:Google \
      http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
      2>/dev/null) && [[ $id =~ ^[0-9]+$ ]]; then :
  else id=$(hostname); fi
fi
name=${name//\{i\}/$id}
log=$dir/$name.log pidfile=$dir/$name.pid marker=$dir/.setup-done
py=${python:-$dir/.venv/bin/python}

# The trainer's pid if it runs (the pid file names a live musicflax.train process).
trainer_pid() {
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r /proc/$pid/cmdline ]]; then tr '\0' ' ' < "/proc/$pid/cmdline"
  else ps -p "$pid" -o args= 2>/dev/null; fi | grep -q 'musicflax\.train' || return 1
  echo "$pid"
}
# The `run` wrapper outlives its trainer until the log is copied to the workdir.
wrapper_pid() {
  local pid
  pid=$(cat "$pidfile.run" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}
set_up() { [[ -f $marker && -d $dir/src ]] && { [[ -n $python ]] || [[ -x $py ]]; }; }

# Copies between this host and the workdir (a gs:// URL or a path every host mounts).
put() {  # put LOCAL DEST
  if [[ $2 == gs://* ]]; then
    if command -v gcloud >/dev/null; then gcloud storage cp -q "$1" "$2" >/dev/null 2>&1
    elif command -v gsutil >/dev/null; then gsutil -q cp "$1" "$2" >/dev/null 2>&1
    else return 1; fi
  else
    mkdir -p "$(dirname "$2")" && cp "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"
  fi
}
get() {  # get SRC LOCAL
  if [[ $1 == gs://* ]]; then
    if command -v gcloud >/dev/null; then gcloud storage cp -q "$1" "$2" >/dev/null 2>&1
    elif command -v gsutil >/dev/null; then gsutil -q cp "$1" "$2" >/dev/null 2>&1
    else return 1; fi
  else
    [[ -f $1 ]] && cp "$1" "$2"
  fi
}
cat_workdir() {  # cat_workdir FILE: the workdir's FILE on stdout
  if [[ $workdir == gs://* ]]; then gcloud storage cat "$workdir/$1" 2>/dev/null
  else cat "$workdir/$1" 2>/dev/null; fi
}

# A python3.12 or python3.11 that can make a venv; apt-installs python3.11 when there is none.
venv_python() {
  local p v
  for p in python3.12 python3.11; do
    command -v "$p" >/dev/null && "$p" -c 'import ensurepip, venv' 2>/dev/null && { echo "$p"; return; }
  done
  command -v apt-get >/dev/null || { note "needs python3.12 or python3.11 (with venv)"; return 1; }
  local sudo=""; (( $(id -u) == 0 )) || sudo=sudo
  note "installing python3.11 with apt"
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
      python3.11 python3.11-venv >&2 || return 1
  echo python3.11
}

do_setup() {
  [[ -n $tarball ]] || die "setup needs --tarball"
  [[ $tarball == /* ]] || tarball=$PWD/$tarball
  [[ -f $tarball ]] || die "no such tarball: $tarball"
  if pid=$(trainer_pid); then die "a trainer runs in $dir (pid $pid): stop it first"; fi
  mkdir -p "$dir"
  local sum
  sum=$( (sha256sum "$tarball" 2>/dev/null || shasum -a 256 "$tarball") | cut -d' ' -f1)
  [[ $tarball == "$dir/musicflax-src.tar.gz" ]] || cp "$tarball" "$dir/musicflax-src.tar.gz"
  [[ $SELF == "$dir/worker.sh" ]] || cp "$SELF" "$dir/worker.sh"
  local want="code $sum python ${python:-venv} jax ${jax_spec:-none}"
  if [[ -f $marker && $(cat "$marker") == "$want" && -d $dir/src ]]; then
    note "code and environment already set up ($sum)"; return 0
  fi
  rm -f "$marker"
  rm -rf "$dir/src.new" "$dir/src.old"
  mkdir "$dir/src.new"
  tar -xzf "$tarball" -C "$dir/src.new"
  [[ ! -d $dir/src ]] || mv "$dir/src" "$dir/src.old"
  mv "$dir/src.new" "$dir/src"
  rm -rf "$dir/src.old"
  if [[ -z $python ]]; then
    if ! command -v tmux >/dev/null && command -v apt-get >/dev/null; then
      local sudo=""; (( $(id -u) == 0 )) || sudo=sudo
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq tmux >&2 ||
        note "tmux could not be installed; training will run under nohup"
    fi
    # Keep a venv of Python 3.11/3.12; anything else is replaced.
    if ! "$dir/.venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' 2>/dev/null; then
      local base
      base=$(venv_python) || die "no python3.12 or python3.11 to make a venv with"
      rm -rf "$dir/.venv"
      "$base" -m venv "$dir/.venv"
    fi
    "$dir/.venv/bin/python" -m pip install -q --upgrade pip
    "$dir/.venv/bin/python" -m pip install -q -e "$dir/src" ${jax_spec:+"$jax_spec"}
  else
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))' ||
      die "--python $python is not Python 3.11 or 3.12"
  fi
  echo "$want" > "$marker"
  note "set up: code $sum in $dir/src, $("$py" -V 2>&1)"
}

do_check() {
  local line="musicflax-worker $id on $(hostname): setup=" pid
  if set_up; then line+=ok; else line+=missing; fi
  if pid=$(trainer_pid); then line+=" trainer=running pid=$pid"
  elif pid=$(wrapper_pid); then line+=" trainer=running pid=$pid (copying its log)"
  else line+=" trainer=stopped"; fi
  echo "$line"
  if ((heartbeat)) && [[ -n $workdir ]]; then
    local hb; hb=$(cat_workdir heartbeat.json | tr -d '\n') || hb=""
    echo "heartbeat: ${hb:-none}"
  fi
}

do_preflight() {
  local pid v
  for v in ${envs[@]+"${envs[@]}"}; do export "$v"; done  # the trainer's environment
  set_up || { note "not set up in $dir (run the launcher's setup first)"; return 1; }
  if pid=$(trainer_pid); then note "training already running (pid $pid)"; return 1; fi
  [[ -f $dir/src/${config%%:*} ]] || { note "config file not found in the code: ${config%%:*}"; return 1; }
  [[ -n $workdir ]] || { note "no --workdir"; return 1; }
  if [[ $workdir == gs://* ]]; then
    # Orbax/TensorFlow reach gs:// with application-default credentials.
    local adc=${GOOGLE_APPLICATION_CREDENTIALS:-${CLOUDSDK_CONFIG:-$HOME/.config/gcloud}/application_default_credentials.json}
    if [[ ! -f $adc ]] && ! "$py" -c "import urllib.request as u; u.urlopen(u.Request(
        'http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1/',
        headers={'Metadata-Flavor': 'Google'}), timeout=3)" >/dev/null 2>&1; then
      note "no Google credentials for $workdir: run 'gcloud auth application-default login' here, or set GOOGLE_APPLICATION_CREDENTIALS to a key file, or use a shared-filesystem workdir"
      return 1
    fi
  else
    mkdir -p "$workdir" 2>/dev/null && [[ -w $workdir ]] ||
      { note "workdir $workdir is not writable here (it must be a folder every host mounts)"; return 1; }
  fi
  echo "musicflax-worker $id on $(hostname): ready"
}

do_start() {
  local pid
  if pid=$(trainer_pid); then echo "training already running on $(hostname) (pid $pid)" >&2; exit 1; fi
  set_up || die "not set up in $dir (run setup first)"
  local v pass=()
  # The trainer's environment: what this shell has of these, then --env.
  while IFS= read -r v; do
    case ${v%%=*} in
      MUSICFLAX_WORKER_ID) ;;
      MUSICFLAX_*|XLA_FLAGS|JAX_*|TPU_*|CUDA_VISIBLE_DEVICES|GOOGLE_APPLICATION_CREDENTIALS|TF_CPP_MIN_LOG_LEVEL)
        pass+=(--env "$v") ;;
    esac
  done < <(env | grep -E '^[A-Za-z_][A-Za-z0-9_]*=' || true)
  for v in ${envs[@]+"${envs[@]}"}; do pass+=(--env "$v"); done
  local args=(bash "$dir/worker.sh" run --dir "$dir" --id "$id" --name "$name" --config "$config"
              --log-every "$log_every" ${python:+--python "$python"} ${workdir:+--workdir "$workdir"}
              ${pass[@]+"${pass[@]}"} -- ${extra[@]+"${extra[@]}"})
  rm -f "$pidfile"
  [[ -n $detach ]] || { if command -v tmux >/dev/null; then detach=tmux; else detach=nohup; fi; }
  case $detach in
    tmux)
      tmux kill-session -t "musicflax-$id" 2>/dev/null || true
      tmux new-session -d -s "musicflax-$id" "${args[@]}" ;;
    nohup)
      if command -v setsid >/dev/null; then args=(setsid "${args[@]}"); fi
      nohup "${args[@]}" > /dev/null 2>&1 < /dev/null & ;;
    *) die "--detach must be tmux or nohup, got '$detach'" ;;
  esac
  # The wrapper writes the trainer's pid; wait for it so that a check right after sees it.
  local i
  for i in $(seq 100); do
    pid=$(trainer_pid) && { note "started (pid $pid, log $log, $detach)"; return 0; }
    sleep 0.1
  done
  note "the trainer did not start; end of $log:"; tail -n 20 "$log" >&2 2>/dev/null || true
  exit 1
}

do_run() {
  cd "$dir/src"
  local v
  for v in ${envs[@]+"${envs[@]}"}; do export "$v"; done
  if [[ -n $workdir && ! -f $log ]]; then get "$workdir/logs/$name.log" "$log" || true; fi
  echo "=== $(date '+%F %T') $name on $(hostname): code $dir/src (tarball $(cut -d' ' -f2 "$marker" | cut -c1-12)), $("$py" -V 2>&1)" >> "$log"
  local train=("$py" -m musicflax.train "--config=$config" ${workdir:+"--workdir=$workdir"} ${extra[@]+"${extra[@]}"})
  "${train[@]}" >> "$log" 2>&1 < /dev/null &
  local pid=$! rc
  echo "$pid" > "$pidfile"
  echo "$$" > "$pidfile.run"
  trap 'kill -TERM $pid 2>/dev/null' TERM INT HUP
  sync_log() { [[ -z $workdir ]] || put "$log" "$workdir/logs/$name.log" || true; }
  ( while kill -0 "$pid" 2>/dev/null; do
      for _ in $(seq "$log_every"); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 1; done
      sync_log
    done ) &
  local syncer=$!
  while :; do  # wait returns early when a signal is forwarded
    rc=0; wait "$pid" || rc=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  kill "$syncer" 2>/dev/null || true
  echo "=== $(date '+%F %T') $name: trainer exited with status $rc" >> "$log"
  sync_log
  rm -f "$pidfile.run"
  exit "$rc"
}

do_stop() {
  local pid
  if ! pid=$(trainer_pid); then echo "no training running on $(hostname)"; return 0; fi
  kill -TERM "$pid"
  note "sent SIGTERM to the trainer (pid $pid): it saves a checkpoint and exits"
  [[ -n $kill_after ]] || return 0
  local i
  for ((i = 0; i < kill_after * 10; i++)); do trainer_pid >/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  note "killed the trainer (pid $pid), still running ${kill_after}s after SIGTERM"
}

case $command in
  setup) do_setup ;;
  check) do_check ;;
  preflight) do_preflight ;;
  start) do_start ;;
  run) do_run ;;
  stop) do_stop ;;
esac
