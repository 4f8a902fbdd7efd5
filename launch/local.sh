#!/usr/bin/env bash
# Trains musicflax on this machine (CPU, one GPU or several; one process), logging to
# DIR/train.log as well as the terminal. Running it again with the same workdir resumes
# from the latest checkpoint; Ctrl-C or SIGTERM saves and exits.
#
# Usage: launch/local.sh [--config CONFIG] [--workdir DIR] [--devices N] [--dry-run]
#                        [-- extra --config.x=y flags]
#
#   --config CONFIG  config file, optionally with its argument (default configs/default.py;
#                    e.g. configs/default.py:runlocal). Relative paths: to this directory
#                    or to the repository root.
#   --workdir DIR    checkpoints, logs, images (default workdirs/<config name> in the repo).
#                    With a gs:// workdir the log goes to workdirs/<config name>/train.log.
#   --devices N      N fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N),
#                    to try sharding on a CPU machine. On a GPU machine choose GPUs with
#                    CUDA_VISIBLE_DEVICES instead.
#   --dry-run        print the commands (one per line, shell-quoted) instead of running them.
#   -h, --help       print this help.
#   PYTHON=...       the interpreter (default: the repository's .venv, else python3).
set -euo pipefail

PROG=launch/local.sh
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

source "$REPO/launch/common.sh"

config=configs/default.py workdir="" devices="" dry_run=0
extra=()
while (($#)); do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    --config|--workdir|--devices)
      (($# >= 2)) || die "$1 needs a value"
      declare "${1#--}=$2"; shift ;;
    --config=*|--workdir=*|--devices=*) opt=${1%%=*}; declare "${opt#--}=${1#*=}" ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1' (flags for training go after --; see --help)" ;;
  esac
  shift
done

[[ -n $config ]] || die "--config is empty"
[[ -z $devices || $devices =~ ^[1-9][0-9]*$ ]] || die "--devices must be a positive integer, got '$devices'"

# The config path works from the caller's directory or from the repository root; training
# runs in the repository root (configs import each other as `configs.<name>`).
config_file=${config%%:*} config_arg=""
[[ $config == *:* ]] && config_arg=:${config#*:}
if [[ $config_file != /* && -f $config_file && $PWD != "$REPO" ]]; then
  config="$PWD/$config_file$config_arg"
elif [[ $config_file != /* && ! -f $config_file && -f $REPO/$config_file ]]; then
  :
elif [[ ! -f $config_file ]]; then
  die "config file not found: $config_file"
fi

name=$(basename "$config_file" .py)
if [[ -z $workdir ]]; then
  workdir="$REPO/workdirs/$name"
elif [[ $workdir != gs://* && $workdir != /* ]]; then
  workdir="$PWD/$workdir"
fi
if [[ $workdir == gs://* ]]; then log="$REPO/workdirs/$name/train.log"; else log="$workdir/train.log"; fi

if [[ -n ${PYTHON:-} ]]; then python=$PYTHON
elif [[ -x $REPO/.venv/bin/python ]]; then python=.venv/bin/python
else python=python3; fi

train=("$python" -m musicflax.train "--config=$config" "--workdir=$workdir" ${extra[@]+"${extra[@]}"})
if [[ -n $devices ]]; then
  train=(env "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices" "${train[@]}")
fi

if ((dry_run)); then
  qline cd "$REPO"; echo
  qline mkdir -p "$(dirname "$log")"; echo
  echo "$(qline "${train[@]}") 2>&1 | tee -i -a $(q "$log")"
  exit 0
fi

cd "$REPO"
mkdir -p "$(dirname "$log")"
echo "$PROG: logging to $log" >&2
# Same as `TRAIN 2>&1 | tee -i -a LOG`, but training replaces this shell, so a SIGTERM sent
# to this script reaches it (it saves and exits) and its exit status is the script's.
# tee ignores Ctrl-C so that the lines written while saving still reach the log.
exec > >(tee -i -a "$log") 2>&1
exec "${train[@]}"
