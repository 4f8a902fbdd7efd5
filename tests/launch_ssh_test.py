"""The launchers for real, over ssh: two "hosts" on this machine (127.0.0.1 and 127.0.0.2,
both loopback on Linux) reached through a private sshd the test starts, each host a JAX
process on 2 fake CPU devices, the coordinator on the first.

- gpu_vms.sh: set up both hosts, train, checkpoint, SIGTERM to one host stops both with a
  checkpoint, the same launcher command resumes and finishes the run.
- tpu_vm.sh: everything it runs on the workers, through `watch` with a stand-in `gcloud`
  whose ssh/scp go to the two hosts over the real ssh (the TPU VM control plane is the only
  fake part): setup, start in tmux, trainers killed (a maintenance reboot) and restarted on
  the same slice, the run finishes, watch deletes the slice and stops.

Both run with images written during training, as a real run does; the gpu_vms.sh run with
fsdp-sharded params (replicated multi-host runs are tests/multihost_test.py's). Skipped when
sshd cannot be found or started (CI installs Debian's openssh-server).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"

# A model small enough to compile in seconds; eval only at the last step.
TINY = ["--config.batch_size=8", "--config.model.width=16", "--config.model.res_depth=1",
        "--config.model.quantizer.codebook_size=32", "--config.model.quantizer.code_dim=8",
        "--config.model.quantizer.kmeans_iters=2", "--config.optim.warmup_steps=2",
        "--config.log_every=1", "--config.eval_every=1000", "--config.checkpoint_every=3",
        "--config.image_every=3"]
MODES = {"replicated": [], "fsdp-images": ["--config.param_sharding=fsdp"]}
TRAINER_ENV = ["XLA_FLAGS=--xla_force_host_platform_device_count=2",
               "JAX_THREEFRY_PARTITIONABLE=false", "TF_CPP_MIN_LOG_LEVEL=2"]
STEPS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def heartbeat_supported() -> bool:
    return "heartbeat" in (REPO / "musicflax" / "train" / "trainer.py").read_text()


class Sshd:
    def __init__(self, root: Path, port: int, opts: str):
        self.root, self.port, self.opts = root, port, opts


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    sshd_bin = shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None)
    if sshd_bin is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("sshd/ssh not found (Debian: apt-get install openssh-server openssh-client)")
    root = tmp_path_factory.mktemp("sshd")
    root.chmod(0o700)
    for key in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)],
                       check=True)
    shutil.copy(root / "id.pub", root / "authorized_keys")
    (root / "authorized_keys").chmod(0o600)
    port = free_port()
    (root / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", "ListenAddress 127.0.0.2",
        f"HostKey {root / 'host_key'}", f"AuthorizedKeysFile {root / 'authorized_keys'}",
        f"PidFile {root / 'sshd.pid'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
        "MaxStartups 100", ""]))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    log = open(root / "sshd.log", "w")
    proc = subprocess.Popen([sshd_bin, "-f", str(root / "sshd_config"), "-D", "-e"],
                            stdout=log, stderr=subprocess.STDOUT)
    opts = (f"-p {port} -i {root / 'id'} -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR "
            "-o ConnectTimeout=10")
    try:
        deadline = time.time() + 15
        for host in ("127.0.0.1", "127.0.0.2"):
            while subprocess.run(["ssh", *shlex.split(opts), host, "true"],
                                 capture_output=True, timeout=20).returncode != 0:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.skip(f"could not start or reach a private sshd on {host}: "
                                f"{(root / 'sshd.log').read_text()[-500:]}")
                time.sleep(0.2)
        yield Sshd(root, port, opts)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    # Built once here, before two processes would race to build it.
    subprocess.run([sys.executable, "-m", "musicflax.prepare", "--config=configs/default.py",
                    f"--config.data.tfds_data_dir={path}"], cwd=REPO, check=True,
                   capture_output=True, timeout=600)
    return str(path)


def latest_checkpoint(workdir: Path) -> int:
    folder = workdir / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []
    return max(steps, default=0)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def pids(pidfiles) -> list[int]:
    return [int(p.read_text()) for p in pidfiles if p.exists() and p.read_text().strip()]


def wait_for(predicate, what: str, timeout: float, logs=(), while_=lambda: True):
    """Waits for predicate(); fails after timeout, or at once when while_() turns false."""
    deadline = time.time() + timeout
    while not predicate():
        hopeless = not while_()
        if hopeless and predicate():
            return
        if hopeless or time.time() > deadline:
            tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
            pytest.fail(f"{'gave up' if hopeless else 'timed out'} waiting for {what}\n{tails}")
        time.sleep(0.2)


def kill_all(pidfiles):
    for pid in pids(pidfiles):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def kill_tmux(tmux_tmpdir: Path):
    """Ends the private tmux server (TMUX_TMPDIR) the workers' trainers ran in, if any."""
    if shutil.which("tmux"):
        subprocess.run(["tmux", "kill-server"], env={**os.environ, "TMUX_TMPDIR": str(tmux_tmpdir)},
                       capture_output=True)


def read_heartbeat(workdir: Path) -> dict:
    return json.loads((workdir / "heartbeat.json").read_text())


def failed(workdir: Path) -> bool:
    """The trainer says it exited with an error (a crashed multi-host process may take
    minutes to end: it waits for its peers)."""
    try:
        return read_heartbeat(workdir)["state"] == "failed"
    except (OSError, ValueError, KeyError):
        return False


# ------------------------------------------------------------------ gpu_vms.sh

@pytest.mark.parametrize("mode", ["fsdp-images"])
def test_gpu_vms_two_hosts_train_stop_resume(sshd, tfds_dir, tmp_path, mode):
    workdir = tmp_path / "workdir"  # a "shared filesystem": both hosts are this machine
    base = ["--hosts", "127.0.0.1,127.0.0.2", "--remote-dir", f"{tmp_path}/host{{i}}",
            "--python", sys.executable]
    train = [*base, "--workdir", str(workdir), "--port", str(free_port()),
             *(a for e in TRAINER_ENV for a in ("--env", e)), "--",
             f"--config.data.tfds_data_dir={tfds_dir}", f"--config.num_train_steps={STEPS}",
             *TINY, *MODES[mode]]
    env = {**os.environ, "MUSICFLAX_SSH_OPTS": sshd.opts}
    env.pop("XLA_FLAGS", None)
    pidfiles = [tmp_path / f"host{i}" / f"train_host_{i}.pid" for i in range(2)]
    logs = [tmp_path / f"host{i}" / f"train_host_{i}.log" for i in range(2)]

    def launch(*args):
        return subprocess.run(["bash", str(LAUNCH / "gpu_vms.sh"), *args], env=env,
                              capture_output=True, text=True, timeout=120)

    try:
        result = launch(*base, "--setup")
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "host1" / "src" / "musicflax" / "train" / "trainer.py").is_file()

        result = launch(*train)
        assert result.returncode == 0, result.stderr
        training = lambda: all(map(alive, pids(pidfiles))) and not failed(workdir)  # noqa: E731
        wait_for(lambda: latest_checkpoint(workdir) >= 3, "a checkpoint at step 3", 300, logs,
                 while_=training)
        # SIGTERM to host 1 only: both processes stop at the same step, with a checkpoint.
        os.kill(pids(pidfiles)[1], signal.SIGTERM)
        wait_for(lambda: not any(map(alive, pids(pidfiles))), "both trainers to stop", 180, logs)
        stopped = latest_checkpoint(workdir)
        assert 3 <= stopped < STEPS, "the run was not stopped before its end"
        for log in logs:
            assert f"stopped at step {stopped}" in log.read_text(), log.read_text()[-3000:]
        status = launch(*base, "--status", "--workdir", str(workdir))
        assert status.stdout.count("setup=ok trainer=stopped") == 2, status.stdout + status.stderr
        if heartbeat_supported():
            assert read_heartbeat(workdir)["state"] == "stopped"

        # The same command resumes the run and finishes it.
        result = launch(*train)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: not any(map(alive, pids(pidfiles))), "the resumed run to end", 300, logs,
                 while_=lambda: not failed(workdir))
        assert latest_checkpoint(workdir) == STEPS, logs[0].read_text()[-5000:]
        for i, log in enumerate(logs):
            assert f"resumed from step {stopped}" in log.read_text(), log.read_text()[-3000:]
            copy = workdir / "logs" / f"train_host_{i}.log"  # the host's log, in the workdir
            wait_for(lambda: copy.exists() and "trainer exited with status 0" in copy.read_text()
                     .split(f"resumed from step {stopped}")[-1], f"{copy}", 30)
        if heartbeat_supported():
            beat = read_heartbeat(workdir)
            assert (beat["state"], beat["step"], beat["num_train_steps"]) == (
                "finished", STEPS, STEPS)
        # Images were drawn on every image step, before and after the resume.
        assert sorted(p.name for p in (workdir / "recon").glob("*.png")) == sorted(
            f"step_{s}.png" for s in range(3, STEPS + 1, 3))
    finally:
        kill_all(pidfiles)


# ------------------------------------------------------------------ tpu_vm.sh on workers

GCLOUD = r'''#!/usr/bin/env bash
# Stand-in for gcloud: a READY, HEALTHY two-worker slice whose workers are 127.0.0.1 and
# 127.0.0.2 over real ssh; each worker gets its own HOME (its own machine) and the
# environment JAX finds on a TPU VM, here as explicit variables.
printf '%q ' "$@" >> "$STUB/calls"; echo >> "$STUB/calls"
read -r -a opts <<< "$MUSICFLAX_SSH_OPTS"
prefix() {  # the environment of worker $1
  printf 'export HOME=%q MUSICFLAX_WORKER_ID=%s MUSICFLAX_PROCESS_ID=%s MUSICFLAX_NUM_PROCESSES=2 ' \
    "$STUB/worker$1" "$1" "$1"
  printf 'MUSICFLAX_COORDINATOR=127.0.0.1:%s TMUX_TMPDIR=%q ' "$PORT" "$STUB/tmux"
  printf '%q ' $TRAINER_ENV
  printf '; mkdir -p "$HOME" "$TMUX_TMPDIR" && cd; '
}
case "$1 $2 $3 $4" in
  "compute tpus tpu-vm describe") printf 'READY\tHEALTHY\n' ;;
  "compute tpus tpu-vm ssh"|"compute tpus tpu-vm scp")
    kind=$4; shift 4
    workers="0 1" command="" files=()
    while (($#)); do
      case $1 in
        --worker=all) ;;
        --worker=*) workers=${1#--worker=} ;;
        --command) command=$2; shift ;;
        --zone=*|--project=*) ;;
        *:) ;;
        *) [[ $kind == scp ]] && files+=("$1") ;;
      esac
      shift
    done
    rc=0
    for w in $workers; do
      if [[ $kind == ssh ]]; then
        ssh "${opts[@]}" "127.0.0.$((w + 1))" "$(prefix "$w")$command" || rc=$?
      else
        for f in "${files[@]}"; do
          ssh "${opts[@]}" "127.0.0.$((w + 1))" "$(prefix "$w")cat > $(basename "$f")" < "$f" || rc=$?
        done
      fi
    done
    exit $rc ;;
esac
'''


def test_tpu_vm_watch_runs_the_workers_over_ssh(sshd, tfds_dir, tmp_path):
    if not heartbeat_supported():
        pytest.skip("the trainer does not write heartbeat.json yet (watch stops on it)")
    stub = tmp_path / "gcloud"
    (stub / "bin").mkdir(parents=True)
    (stub / "bin" / "gcloud").write_text(GCLOUD)
    (stub / "bin" / "gcloud").chmod(0o755)
    workdir = tmp_path / "workdir"
    workdir.mkdir()  # mounted "here" too: the pin and the heartbeat are read directly
    env = {**os.environ, "MUSICFLAX_SSH_OPTS": sshd.opts, "STUB": str(stub),
           "PORT": str(free_port()), "TRAINER_ENV": " ".join(TRAINER_ENV), "TMPDIR": str(stub),
           "PATH": f"{stub / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("XLA_FLAGS", None)
    pidfiles = [stub / f"worker{w}" / "musicflax" / f"train_worker_{w}.pid" for w in range(2)]
    logs = [stub / f"worker{w}" / "musicflax" / f"train_worker_{w}.log" for w in range(2)]
    watch_log = tmp_path / "watch.log"
    command = ["bash", str(LAUNCH / "tpu_vm.sh"), "watch", "--name", "mf", "--zone", "z",
               "--type", "v4-16", "--workdir", str(workdir), "--python", sys.executable,
               "--interval", "1", "--retries", "2", "--delete-when-done", "--max-polls", "900",
               "--", f"--config.data.tfds_data_dir={tfds_dir}",
               f"--config.num_train_steps={STEPS}", *TINY]
    with open(watch_log, "w") as out:
        watch = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: latest_checkpoint(workdir) >= 3, "a checkpoint at step 3", 300,
                 [watch_log, *logs], while_=lambda: watch.poll() is None and not failed(workdir))
        # A maintenance reboot: the trainers and their tmux sessions are gone.
        kill_all(pidfiles)
        kill_tmux(stub / "tmux")
        assert watch.wait(timeout=400) == 0, watch_log.read_text()[-5000:]
    finally:
        if watch.poll() is None:
            watch.kill()
        kill_all(pidfiles)
        kill_tmux(stub / "tmux")
    text = watch_log.read_text()
    calls = [shlex.split(line) for line in (stub / "calls").read_text().splitlines()]

    def kind(argv):
        if argv[3] != "ssh":
            return argv[3]
        remote = argv[argv.index("--command") + 1]
        return next((w for w in ("check", "setup", "start", "stop") if f"worker.sh {w} " in remote),
                    "ssh")
    kinds = [kind(c) for c in calls if c[3] != "describe"]
    checks = lambda ks: [k for k in ks if k != "check"]  # noqa: E731
    # Set up once, started, found dead after the "reboot", restarted on the same slice,
    # finished, deleted: never recreated.
    assert checks(kinds) == ["scp", "setup", "start", "stop", "start", "delete"], kinds
    assert "trainer not running" in text and f"finished: step {STEPS} saved; deleting" in text
    assert latest_checkpoint(workdir) == STEPS
    beat = read_heartbeat(workdir)
    assert (beat["state"], beat["step"]) == ("finished", STEPS)
    for w in range(2):
        copy = workdir / "logs" / f"train_worker_{w}.log"
        assert "resumed from step" in copy.read_text(), copy.read_text()[-3000:]
    # The workers ran the pinned code, unpacked in their own run folder.
    assert (workdir / "code" / "musicflax-src.tar.gz").is_file()
    assert (stub / "worker1" / "musicflax" / "src" / "PINNED").is_file()
