"""The launch scripts (launch/*.sh): what --dry-run prints, argument errors, --help, and
what runs on each host (launch/worker.sh, and gpu_vms.sh through a local stand-in for ssh).

Nothing here reaches the network: the scripts run with --dry-run (or --help, or fail on
their arguments), and `gcloud`, `ssh` and `rsync` on PATH are replaced by stubs that
record any call, so a script that ran one instead of printing it fails the test. The
stubbed-gcloud scenarios of `tpu_vm.sh watch` are in launch_watch_test.py, the real
two-host runs over sshd in launch_ssh_test.py.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["local.sh", "tpu_vm.sh", "gpu_vms.sh", "worker.sh"]
TPU = ["--name", "mf", "--zone", "us-central2-b"]
GS = "gs://bucket/runs/default"


@pytest.fixture(scope="module")
def stub_bin(tmp_path_factory) -> Path:
    """A folder of stubs for the network tools; each call leaves a file in calls/."""
    root = tmp_path_factory.mktemp("stubs")
    (root / "calls").mkdir()
    for tool in ("gcloud", "ssh", "rsync", "scp"):
        path = root / tool
        path.write_text(f"#!/bin/sh\necho \"$@\" >> {root}/calls/{tool}\nexit 97\n")
        path.chmod(0o755)
    return root


def run(script: str, *args: str, stub_bin: Path, cwd: Path = REPO, env: dict | None = None):
    environ = {**os.environ, "PATH": f"{stub_bin}{os.pathsep}{os.environ['PATH']}"}
    environ.pop("XLA_FLAGS", None)
    environ.update(env or {})
    result = subprocess.run(["bash", str(LAUNCH / script), *args], cwd=cwd, env=environ,
                            capture_output=True, text=True, timeout=30)
    assert not list((stub_bin / "calls").iterdir()), "a network tool was called"
    return result


def dry(script: str, *args: str, stub_bin: Path, **kw) -> list[list[str]]:
    """The commands --dry-run prints, each split as a shell would (comments dropped)."""
    result = run(script, "--dry-run", *args, stub_bin=stub_bin, **kw)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [l for l in result.stdout.splitlines() if l and not l.startswith("#")]
    # Every printed line is valid shell.
    syntax = subprocess.run(["bash", "-n"], input=result.stdout, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    return [shlex.split(l) for l in lines]


def fails(script: str, *args: str, stub_bin: Path, match: str) -> str:
    result = run(script, *args, stub_bin=stub_bin)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"launch/{script}: error: ") and match in lines[0], lines[0]
    return lines[0]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# ------------------------------------------------------------------------------ all three

@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, stub_bin):
    result = run(script, "--help", stub_bin=stub_bin)
    assert result.returncode == 0 and result.stderr == ""
    assert f"Usage: launch/{script}" in result.stdout
    assert "--dry-run" in result.stdout or script == "worker.sh"  # it runs on the hosts
    assert run(script, "-h", stub_bin=stub_bin).stdout == result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_header_and_strict_mode(script):
    text = (LAUNCH / script).read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and lines[1].startswith("# ")
    assert "set -euo pipefail" in lines
    assert os.access(LAUNCH / script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(LAUNCH / script)]).returncode == 0


@pytest.mark.parametrize("script,args", [
    ("local.sh", ["--bogus"]),
    ("tpu_vm.sh", ["create", *TPU, "--type", "v4-8", "--bogus"]),
    ("gpu_vms.sh", ["--hosts", "a", "--workdir", GS, "--bogus"]),
    ("worker.sh", ["check", "--dir", "/tmp/x", "--bogus"]),
])
def test_unknown_option(script, args, stub_bin):
    fails(script, *args, stub_bin=stub_bin, match="'--bogus'")


# ------------------------------------------------------------------------------ local.sh

def test_local_devices_and_tee(stub_bin, tmp_path):
    workdir = tmp_path / "wd"
    cmds = dry("local.sh", "--config", "configs/default.py:runlocal", "--workdir", str(workdir),
               "--devices", "4", "--", "--config.num_train_steps=3", "--config.name=it's a b",
               stub_bin=stub_bin)
    assert cmds[0] == ["cd", str(REPO)]
    assert cmds[1] == ["mkdir", "-p", str(workdir)]
    train = cmds[2]
    assert train[:2] == ["env", "XLA_FLAGS=--xla_force_host_platform_device_count=4"]
    i = train.index("-m")
    assert train[i:i + 2] == ["-m", "musicflax.train"] and train[i - 1].endswith("python")
    assert train[i + 2:i + 7] == ["--config=configs/default.py:runlocal", f"--workdir={workdir}",
                                  "--config.num_train_steps=3", "--config.name=it's a b", "2>&1"]
    assert train[-5:] == ["|", "tee", "-i", "-a", str(workdir / "train.log")]


def test_local_defaults(stub_bin):
    cmds = dry("local.sh", stub_bin=stub_bin)
    train = cmds[-1]
    assert not any("XLA_FLAGS" in w for w in train)
    assert "--config=configs/default.py" in train
    assert f"--workdir={REPO}/workdirs/default" in train
    assert train[-1] == f"{REPO}/workdirs/default/train.log"


def test_local_relative_paths_from_elsewhere(stub_bin, tmp_path):
    cmds = dry("local.sh", "--config=configs/waveform.py", "--workdir=runs/w", stub_bin=stub_bin,
               cwd=tmp_path)
    train = cmds[-1]
    # configs/ is found in the repository; the workdir is relative to where one stands.
    assert "--config=configs/waveform.py" in train
    assert f"--workdir={tmp_path}/runs/w" in train


def test_local_gs_workdir_logs_in_repo(stub_bin):
    cmds = dry("local.sh", "--workdir", GS, stub_bin=stub_bin)
    assert cmds[1] == ["mkdir", "-p", f"{REPO}/workdirs/default"]
    assert f"--workdir={GS}" in cmds[2] and cmds[2][-1] == f"{REPO}/workdirs/default/train.log"


def test_local_python_override(stub_bin):
    cmds = dry("local.sh", stub_bin=stub_bin, env={"PYTHON": "/opt/py/bin/python3.11"})
    assert cmds[-1][0] == "/opt/py/bin/python3.11"


def test_local_errors(stub_bin):
    fails("local.sh", "--devices", "0", stub_bin=stub_bin, match="--devices")
    fails("local.sh", "--devices", "x", stub_bin=stub_bin, match="--devices")
    fails("local.sh", "--config", "configs/nope.py", stub_bin=stub_bin, match="configs/nope.py")
    fails("local.sh", "--workdir", stub_bin=stub_bin, match="--workdir needs a value")


def test_local_runs_and_logs(stub_bin, tmp_path):
    """Without --dry-run: training replaces the script (signals reach it), output is teed."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho \"args: $*\"; echo \"xla: $XLA_FLAGS\"\n"
                    "trap 'echo saved; exit 0' TERM\necho ready\nwhile :; do sleep 0.05; done\n")
    fake.chmod(0o755)
    workdir = tmp_path / "wd"
    environ = {**os.environ, "PYTHON": str(fake), "PATH": f"{stub_bin}:{os.environ['PATH']}"}
    environ.pop("XLA_FLAGS", None)
    proc = subprocess.Popen(["bash", str(LAUNCH / "local.sh"), "--workdir", str(workdir),
                             "--devices", "2", "--", "--config.x=1"], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = workdir / "train.log"
    try:
        deadline = time.time() + 10
        while not (log.exists() and "ready" in log.read_text()):
            assert time.time() < deadline, "training never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # to the script's pid: the training process now
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    deadline = time.time() + 5
    while "saved" not in log.read_text():
        assert time.time() < deadline, log.read_text()
        time.sleep(0.05)
    text = log.read_text()
    assert "args: -m musicflax.train --config=configs/default.py" in text
    assert f"--workdir={workdir} --config.x=1" in text
    assert "xla: --xla_force_host_platform_device_count=2" in text
    assert "ready" in out


# ------------------------------------------------------------------------------ tpu_vm.sh

@pytest.mark.parametrize("tpu_type,runtime", [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_tpu_create_default_runtime(tpu_type, runtime, stub_bin):
    cmds = dry("tpu_vm.sh", "create", *TPU, "--type", tpu_type, stub_bin=stub_bin)
    assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "create", "mf", "--zone=us-central2-b",
                     f"--accelerator-type={tpu_type}", f"--version={runtime}"]]


def test_tpu_create_spot_runtime_project(stub_bin):
    cmds = dry("tpu_vm.sh", "create", "--name=mf", "--zone=europe-west4-a", "--type=v6e-8",
               "--runtime=my-runtime", "--spot", "--project=proj", stub_bin=stub_bin)
    assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "create", "mf",
                     "--zone=europe-west4-a", "--project=proj", "--accelerator-type=v6e-8",
                     "--version=my-runtime", "--spot"]]


def test_tpu_unknown_family_needs_runtime(stub_bin):
    fails("tpu_vm.sh", "create", *TPU, "--type", "v9x-16", stub_bin=stub_bin, match="--runtime")
    cmds = dry("tpu_vm.sh", "create", *TPU, "--type", "v9x-16", "--runtime", "rt",
               stub_bin=stub_bin)
    assert "--version=rt" in cmds[0]


def worker_call(remote: str) -> list[str]:
    """The worker.sh call in a launcher's remote command, as the remote shell splits it
    (from `bash .../worker.sh` to the next `;`)."""
    lex = shlex.shlex(remote, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    words = list(lex)
    start = words.index("bash")
    return words[start:words.index(";", start) if ";" in words[start:] else len(words)]


TPU_SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mf", "--zone=us-central2-b"]
WORKER_SH = ["bash", "~/musicflax/worker.sh"]
ON_TPU = ["--dir", "~/musicflax", "--name", "train_worker_{i}"]


def test_tpu_create_queued(stub_bin):
    cmds = dry("tpu_vm.sh", "create", *TPU, "--type", "v6e-8", "--spot", "--queued",
               stub_bin=stub_bin)
    assert cmds == [["gcloud", "compute", "tpus", "queued-resources", "create", "mf-qr",
                     "--zone=us-central2-b", "--node-id=mf", "--accelerator-type=v6e-8",
                     "--runtime-version=v2-alpha-tpuv6e", "--spot"]]


def test_tpu_setup_pins_copies_and_installs_on_all_workers(stub_bin):
    fetch, scp, ssh = dry("tpu_vm.sh", "setup", *TPU, "--workdir", GS, stub_bin=stub_bin)
    # The run's pinned code (made from this tree on the run's first setup) is what ships.
    tarball = fetch[4]
    assert fetch == ["gcloud", "storage", "cp", f"{GS}/code/musicflax-src.tar.gz", tarball]
    stage = str(Path(tarball).parent)
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball,
                   f"{stage}/musicflax-worker.sh", "mf:", "--zone=us-central2-b", "--worker=all"]
    assert ssh[:7] == TPU_SSH and "--worker=all" in ssh
    assert worker_call(option(ssh, "--command")) == [
        "bash", "musicflax-worker.sh", "setup", "--dir", "~/musicflax", "--tarball",
        "musicflax-src.tar.gz", "--jax-spec", "jax[tpu]==0.10.2"]
    # --repin packs this tree and replaces the pin.
    up, _, _ = dry("tpu_vm.sh", "setup", *TPU, "--workdir", GS, "--repin", stub_bin=stub_bin)
    assert up[:3] == ["gcloud", "storage", "cp"] and up[4] == f"{GS}/code/musicflax-src.tar.gz"


def test_tpu_setup_needs_workdir(stub_bin):
    fails("tpu_vm.sh", "setup", *TPU, stub_bin=stub_bin, match="missing --workdir")


def test_tpu_train(stub_bin):
    cmds = dry("tpu_vm.sh", "train", *TPU, "--config", "configs/waveform.py", "--workdir", GS,
               "--env", "LIBTPU_INIT_ARGS=--xla_x", "--", "--config.num_train_steps=100",
               "--config.note=a b", stub_bin=stub_bin)
    assert len(cmds) == 1
    cmd = cmds[0]
    assert cmd[:7] == TPU_SSH and "--worker=all" in cmd
    assert worker_call(option(cmd, "--command")) == [
        *WORKER_SH, "start", *ON_TPU, "--config", "configs/waveform.py", "--workdir", GS,
        "--env", "LIBTPU_INIT_ARGS=--xla_x", "--", "--config.distributed.enabled=True",
        "--config.num_train_steps=100", "--config.note=a b"]
    # Before setup there is no worker.sh: the command says so instead of failing obscurely.
    assert "setup=missing" in option(cmd, "--command")


def test_tpu_train_python_and_remote_dir(stub_bin):
    (cmd,) = dry("tpu_vm.sh", "train", *TPU, "--workdir", GS, "--python", "/opt/py/bin/python3.12",
                 "--remote-dir", "/data/run a", stub_bin=stub_bin)
    call = worker_call(option(cmd, "--command"))
    assert call[:8] == ["bash", "/data/run a/worker.sh", "start", "--dir", "/data/run a",
                        "--name", "train_worker_{i}", "--python"]
    assert call[8] == "/opt/py/bin/python3.12"


def test_tpu_workdir(stub_bin):
    fails("tpu_vm.sh", "train", *TPU, stub_bin=stub_bin, match="missing --workdir")
    fails("tpu_vm.sh", "train", *TPU, "--workdir", "runs/a", stub_bin=stub_bin,
          match="absolute path")
    fails("tpu_vm.sh", "train", *TPU, "--workdir", GS, "--config", "configs/nope.py",
          stub_bin=stub_bin, match="configs/nope.py")
    # A filesystem every worker mounts (e.g. Filestore) is a workdir too.
    (cmd,) = dry("tpu_vm.sh", "train", *TPU, "--workdir", "/mnt/filestore/run/", stub_bin=stub_bin)
    assert "/mnt/filestore/run" in worker_call(option(cmd, "--command"))


def test_tpu_logs_stop_delete_status(stub_bin):
    (logs,) = dry("tpu_vm.sh", "logs", *TPU, stub_bin=stub_bin)
    assert logs == [*TPU_SSH, "--worker=0", "--command",
                    "tail -n 200 -F ~/musicflax/train_worker_0.log"]
    (logs3,) = dry("tpu_vm.sh", "logs", *TPU, "--worker", "3", stub_bin=stub_bin)
    assert "--worker=3" in logs3 and option(logs3, "--command").endswith("train_worker_3.log")
    (stop,) = dry("tpu_vm.sh", "stop", *TPU, stub_bin=stub_bin)
    assert "--worker=all" in stop
    assert worker_call(option(stop, "--command")) == [*WORKER_SH, "stop", *ON_TPU]
    (delete,) = dry("tpu_vm.sh", "delete", *TPU, stub_bin=stub_bin)
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "mf",
                      "--zone=us-central2-b"]
    (delete_qr,) = dry("tpu_vm.sh", "delete", *TPU, "--queued", stub_bin=stub_bin)
    assert delete_qr == ["gcloud", "compute", "tpus", "queued-resources", "delete", "mf-qr",
                         "--zone=us-central2-b", "--force"]
    qr, node, hb, check = dry("tpu_vm.sh", "status", *TPU, "--queued", "--workdir", GS,
                              stub_bin=stub_bin)
    assert qr[4:] == ["describe", "mf-qr", "--zone=us-central2-b", "--format=value(state.state)"]
    assert node[4:] == ["describe", "mf", "--zone=us-central2-b", "--format=value(state,health)"]
    assert hb == ["gcloud", "storage", "cat", f"{GS}/heartbeat.json"]
    assert worker_call(option(check, "--command")) == [*WORKER_SH, "check", *ON_TPU]


def test_tpu_watch(stub_bin):
    cmds = dry("tpu_vm.sh", "watch", *TPU, "--type", "v5p-8", "--spot", "--workdir", GS,
               "--", "--config.num_train_steps=100", stub_bin=stub_bin)
    heartbeat, describe, check, stop, start, delete, create, pin, scp, setup, train = cmds
    assert heartbeat == ["gcloud", "storage", "cat", f"{GS}/heartbeat.json"]
    assert describe == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "mf",
                        "--zone=us-central2-b", "--format=value(state,health)"]
    assert worker_call(option(check, "--command")) == [*WORKER_SH, "check", *ON_TPU]
    assert worker_call(option(stop, "--command")) == [*WORKER_SH, "stop", *ON_TPU,
                                                      "--kill-after", "60"]
    assert delete[4:] == ["delete", "mf", "--zone=us-central2-b", "--quiet"]
    assert create[4:] == ["create", "mf", "--zone=us-central2-b", "--accelerator-type=v5p-8",
                          "--version=v2-alpha-tpuv5", "--spot"]
    assert pin[:4] == ["gcloud", "storage", "cp", f"{GS}/code/musicflax-src.tar.gz"]
    assert scp[4] == "scp" and setup[4] == "ssh" and "--worker=all" in setup
    for cmd in (start, train):
        call = worker_call(option(cmd, "--command"))
        assert call[2] == "start" and f"{GS}" in call and "--config.num_train_steps=100" in call


def test_tpu_watch_queued_dry_run(stub_bin):
    cmds = dry("tpu_vm.sh", "watch", *TPU, "--type", "v4-8", "--queued", "--workdir", GS,
               stub_bin=stub_bin)
    assert cmds[1][3:5] == ["queued-resources", "describe"]
    assert ["gcloud", "compute", "tpus", "queued-resources", "delete", "mf-qr",
            "--zone=us-central2-b", "--force", "--quiet"] in cmds
    assert any(c[3:5] == ["queued-resources", "create"] for c in cmds)


def test_tpu_watch_needs_type_and_workdir(stub_bin):
    fails("tpu_vm.sh", "watch", *TPU, "--workdir", GS, stub_bin=stub_bin, match="missing --type")
    fails("tpu_vm.sh", "watch", *TPU, "--type", "v4-8", stub_bin=stub_bin,
          match="missing --workdir")


@pytest.mark.parametrize("args,match", [
    (["create", "--zone", "z", "--type", "v4-8"], "missing --name"),
    (["create", "--name", "mf", "--type", "v4-8"], "missing --zone"),
    (["create", *TPU], "missing --type"),
    (["launch", *TPU], "unknown command 'launch'"),
    (TPU, "missing command"),
    (["create", "setup", *TPU], "one command at a time"),
    (["logs", *TPU, "--worker", "x"], "--worker"),
    (["create", *TPU, "--type"], "--type needs a value"),
    (["watch", *TPU, "--interval", "0"], "--interval"),
    (["watch", *TPU, "--retries", "0"], "--retries"),
    (["watch", *TPU, "--stale-after", "-1"], "--stale-after"),
    (["train", *TPU, "--env", "nonsense"], "--env wants NAME=VALUE"),
])
def test_tpu_errors(args, match, stub_bin):
    fails("tpu_vm.sh", *args, stub_bin=stub_bin, match=match)


# ------------------------------------------------------------------------------ gpu_vms.sh

def test_gpu_checks_every_host_then_starts_each(stub_bin):
    hosts = ["me@10.0.0.2", "gpu-b", "gpu-c"]
    cmds = dry("gpu_vms.sh", "--hosts", ",".join(hosts), "--ssh-user", "ops", "--workdir", GS,
               "--config", "configs/waveform.py", "--port", "4321", "--",
               "--config.batch_size=64", stub_bin=stub_bin)
    assert len(cmds) == 6
    dests = ["me@10.0.0.2", "ops@gpu-b", "ops@gpu-c"]
    for i, (check, start) in enumerate(zip(cmds[:3], cmds[3:])):
        on_host = ["--dir", "~/musicflax", "--id", str(i), "--name", f"train_host_{i}"]
        assert check[:3] == ["ssh", "-n", dests[i]] and len(check) == 4
        assert worker_call(check[3]) == [*WORKER_SH, "preflight", *on_host, "--config",
                                         "configs/waveform.py", "--workdir", GS]
        assert start[:3] == ["ssh", "-n", dests[i]] and len(start) == 4
        assert worker_call(start[3]) == [
            *WORKER_SH, "start", *on_host, "--config", "configs/waveform.py", "--workdir", GS,
            "--detach", "nohup", "--env", "MUSICFLAX_COORDINATOR=10.0.0.2:4321",
            "--env", "MUSICFLAX_NUM_PROCESSES=3", "--env", f"MUSICFLAX_PROCESS_ID={i}", "--",
            "--config.distributed.enabled=True", "--config.batch_size=64"]


def test_gpu_options(stub_bin):
    cmds = dry("gpu_vms.sh", "--hosts=a,b", f"--workdir={GS}", "--gpus-per-host=4",
               "--coordinator-host=10.1.2.3", "--remote-dir=/scratch/mf/host{i}",
               "--python=/opt/py/bin/python3.12", "--env", "NCCL_DEBUG=INFO",
               stub_bin=stub_bin, env={"MUSICFLAX_SSH_OPTS": "-p 2222 -i /k/id"})
    for check in cmds[:2]:  # the preflight sees the trainer's --env (e.g. credentials)
        call = worker_call(check[-1])
        assert call[2] == "preflight" and call[-2:] == ["--env", "NCCL_DEBUG=INFO"]
    for i, cmd in enumerate(cmds[2:]):
        assert cmd[:6] == ["ssh", "-p", "2222", "-i", "/k/id", "-n"]
        call = worker_call(cmd[-1])
        assert call[1] == f"/scratch/mf/host{i}/worker.sh"
        assert option(call, "--dir") == f"/scratch/mf/host{i}"
        assert option(call, "--python") == "/opt/py/bin/python3.12"
        envs = [call[j + 1] for j, w in enumerate(call) if w == "--env"]
        assert envs == ["MUSICFLAX_COORDINATOR=10.1.2.3:1234", "MUSICFLAX_NUM_PROCESSES=2",
                        "CUDA_VISIBLE_DEVICES=0,1,2,3", "NCCL_DEBUG=INFO",
                        f"MUSICFLAX_PROCESS_ID={i}"]
    # --ssh-opts beats the environment.
    cmds = dry("gpu_vms.sh", "--hosts=a", "--stop", "--ssh-opts", "-p 22", stub_bin=stub_bin,
               env={"MUSICFLAX_SSH_OPTS": "-p 2222"})
    assert cmds[0][:4] == ["ssh", "-p", "22", "-n"]


def test_gpu_shared_filesystem_workdir(stub_bin):
    cmds = dry("gpu_vms.sh", "--hosts", "a,b", "--workdir", "/mnt/nfs/run", stub_bin=stub_bin)
    assert all(option(worker_call(c[3]), "--workdir") == "/mnt/nfs/run" for c in cmds)


def test_gpu_setup(stub_bin):
    cmds = dry("gpu_vms.sh", "--hosts", "a,b", "--ssh-user", "me", "--setup", stub_bin=stub_bin)
    assert [c[0] for c in cmds] == ["ssh"] * 6
    for dest, (tarball, script, setup) in zip(["me@a", "me@b"], [cmds[:3], cmds[3:]]):
        assert tarball[:3] == ["ssh", dest, "mkdir -p ~/musicflax && cat > "
                               "~/musicflax/musicflax-src.tar.gz"]
        assert tarball[3] == "<" and tarball[4].endswith("/musicflax-src.tar.gz")
        assert script == ["ssh", dest, "cat > ~/musicflax/worker.sh", "<",
                          str(LAUNCH / "worker.sh")]
        assert setup[:3] == ["ssh", "-n", dest]
        i = "0" if dest == "me@a" else "1"
        assert worker_call(setup[3]) == [
            *WORKER_SH, "setup", "--dir", "~/musicflax", "--id", i, "--name", f"train_host_{i}",
            "--tarball", "~/musicflax/musicflax-src.tar.gz", "--jax-spec", "jax[cuda12]==0.10.2"]


@pytest.mark.parametrize("args,match", [
    (["--workdir", GS], "missing --hosts"),
    (["--hosts", "a,b"], "missing --workdir"),
    (["--hosts", "a,b", "--workdir", "shared/run"], "absolute path"),
    (["--hosts", "a,,b", "--workdir", GS], "empty"),
    (["--hosts", "a,b,", "--workdir", GS], "empty"),
    (["--hosts", "a", "--workdir", GS, "--port", "http"], "--port"),
    (["--hosts", "a", "--workdir", GS, "--gpus-per-host", "0"], "--gpus-per-host"),
    (["--hosts", "a", "--setup", "--stop"], "don't go together"),
    (["--hosts", "a", "--workdir", GS, "--config", "configs/nope.py"], "configs/nope.py"),
    (["--hosts", "a", "--workdir", GS, "--env", "X"], "--env wants NAME=VALUE"),
])
def test_gpu_errors(args, match, stub_bin):
    fails("gpu_vms.sh", *args, stub_bin=stub_bin, match=match)


# ------------------------------------------------------------------------------ worker.sh
# The per-host side, run here: a local "ssh" runs each host's command with HOME=hosts/<dest>,
# and a fake python stands in for training (it echoes, and saves on SIGTERM).

LOCAL_SSH = r'''#!/usr/bin/env bash
while [[ $1 == -* ]]; do case $1 in -p|-i|-o|-l) shift ;; esac; shift; done
dest=$1 command=$2
mkdir -p "$ROOT/hosts/$dest"
if [[ -f $ROOT/down.$dest ]]; then echo "ssh: connect to host $dest port 22: Connection refused" >&2; exit 255; fi
if [[ -f $ROOT/nostart.$dest && $command == *"worker.sh start "* ]]; then echo "$dest: out of memory" >&2; exit 1; fi
HOME=$ROOT/hosts/$dest exec bash -c "$command"
'''

FAKE_PYTHON = r'''#!/bin/sh
if [ "$1" = -c ] || [ "$1" = -V ]; then exec PYTHON "$@"; fi
echo "train $* coordinator=$MUSICFLAX_COORDINATOR n=$MUSICFLAX_NUM_PROCESSES id=$MUSICFLAX_PROCESS_ID x=$X"
trap 'echo saved; exit 0' TERM
while :; do sleep 0.05; done
'''


@pytest.fixture
def hosts(tmp_path):
    """(root, env): a local ssh on PATH, a fake python at root/python."""
    root = tmp_path / "net"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "ssh").write_text(LOCAL_SSH)
    (root / "python").write_text(FAKE_PYTHON.replace("PYTHON", sys.executable))
    for path in (root / "bin" / "ssh", root / "python"):
        path.chmod(0o755)
    env = {**os.environ, "ROOT": str(root), "PATH": f"{root / 'bin'}:{os.environ['PATH']}"}
    env.pop("XLA_FLAGS", None)
    yield root, env
    for pidfile in root.glob("hosts/*/musicflax/*.pid"):  # never leave a fake trainer behind
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def gpu(env, *args, **kw):
    result = subprocess.run(["bash", str(LAUNCH / "gpu_vms.sh"), *args], env=env,
                            capture_output=True, text=True, timeout=60, **kw)
    return result


def wait_for(predicate, what, timeout=15.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_gpu_vms_runs_over_ssh_with_local_hosts(hosts, tmp_path):
    root, env = hosts
    workdir = tmp_path / "wd"
    base = ["--hosts", "h0,h1", "--python", str(root / "python")]
    run_args = [*base, "--workdir", str(workdir), "--env", "X=1", "--", "--config.x=1"]
    home = lambda h: root / "hosts" / h / "musicflax"  # noqa: E731
    running = lambda h: (home(h) / f"train_host_{h[1]}.pid").exists()  # noqa: E731

    # Nothing is set up yet: every host is checked, nothing starts, one line says why.
    result = gpu(env, *run_args)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("launch/gpu_vms.sh: error: nothing started: host 0 (h0): ")
    assert "host 1 (h1): musicflax-worker 1 on" in line and "setup=missing" in line

    result = gpu(env, *base, "--setup")
    assert result.returncode == 0, result.stderr
    for h in ("h0", "h1"):
        assert (home(h) / "src" / "configs" / "default.py").is_file()
        assert (home(h) / "src" / "PINNED").read_text().startswith("packed ")
        assert not (home(h) / "src" / ".venv").exists()
    assert "host 1 (h1): setup ok" in result.stderr

    # One host unreachable: the other is not started either.
    (root / "down.h1").touch()
    result = gpu(env, *run_args)
    assert result.returncode == 2 and "nothing started: host 1 (h1): ssh: connect" in result.stderr
    assert not running("h0") and not running("h1")
    (root / "down.h1").unlink()

    result = gpu(env, *run_args)
    assert result.returncode == 0, result.stderr
    for i, h in enumerate(("h0", "h1")):
        log = home(h) / f"train_host_{i}.log"
        wait_for(lambda: log.exists() and "train " in log.read_text(), f"{h} never started")
        text = log.read_text()
        assert (f"train -m musicflax.train --config=configs/default.py --workdir={workdir} "
                f"--config.distributed.enabled=True --config.x=1 coordinator=h0:1234 n=2 "
                f"id={i} x=1") in text
    # A second start is refused before anything starts.
    result = gpu(env, *run_args)
    assert result.returncode == 2 and "already running" in result.stderr
    status = gpu(env, *base, "--status", "--workdir", str(workdir))
    assert status.returncode == 0
    assert status.stdout.count("setup=ok trainer=running") == 2
    assert "heartbeat: none" in status.stdout

    assert gpu(env, *base, "--stop").returncode == 0
    for i, h in enumerate(("h0", "h1")):
        wait_for(lambda: (workdir / "logs" / f"train_host_{i}.log").exists() and "saved" in (
            workdir / "logs" / f"train_host_{i}.log").read_text(), f"{h}'s log not in the workdir")
    status = gpu(env, *base, "--status")
    assert status.stdout.count("setup=ok trainer=stopped") == 2

    # A host that fails to start: the ones started before it are stopped again.
    (root / "nostart.h1").touch()
    result = gpu(env, *run_args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "launch/gpu_vms.sh: error: host 1 (h1) did not start; stopped hosts 0..0 again")
    wait_for(lambda: home("h0").joinpath("train_host_0.log").read_text().count("saved") == 2,
             "host 0 was not stopped")


def test_worker_setup_replaces_the_code_and_refuses_while_training(tmp_path):
    code = tmp_path / "code"
    (code / "configs").mkdir(parents=True)
    (code / "configs" / "default.py").write_text("")
    (code / "old.py").write_text("")
    tarball = tmp_path / "a.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(code), "."], check=True)
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.replace("PYTHON", sys.executable))
    python.chmod(0o755)
    d = tmp_path / "host"
    w = ["bash", str(LAUNCH / "worker.sh")]
    opts = ["--dir", str(d), "--id", "3", "--python", str(python)]
    env = {**os.environ, "PATH": os.environ["PATH"]}
    sh = lambda *a, **kw: subprocess.run([*w, *a, *opts], capture_output=True, text=True,  # noqa: E731
                                         env=env, timeout=30, **kw)
    assert sh("setup", "--tarball", str(tarball)).returncode == 0
    assert (d / "src" / "old.py").exists() and (d / "worker.sh").exists()
    (d / "src" / "junk").write_text("")
    (code / "old.py").unlink()
    (code / "new.py").write_text("")
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(code), "."], check=True)
    assert sh("setup", "--tarball", str(tarball)).returncode == 0
    assert sorted(p.name for p in (d / "src").iterdir()) == ["configs", "new.py"]
    assert sh("check").stdout == f"musicflax-worker 3 on {os.uname().nodename}: setup=ok trainer=stopped\n"
    try:
        assert sh("start", "--detach", "nohup").returncode == 0
        pid = int((d / "train_3.pid").read_text())
        assert sh("check").stdout.endswith(f"trainer=running pid={pid}\n")
        again = sh("setup", "--tarball", str(tarball))
        assert again.returncode == 2 and f"a trainer runs in {d} (pid {pid})" in again.stderr
        assert sh("preflight", "--workdir", str(tmp_path / "wd")).returncode == 1
        assert sh("stop", "--kill-after", "10").returncode == 0
        assert "trainer=stopped" in sh("check").stdout
        assert sh("preflight", "--workdir", str(tmp_path / "wd")).returncode == 0
    finally:
        try:
            os.kill(int((d / "train_3.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
    # A pid file naming some other live process (pid reuse after a reboot) is not a trainer.
    (d / "train_3.pid").write_text(str(os.getpid()))
    assert "trainer=stopped" in sh("check").stdout


def test_worker_preflight_wants_credentials_for_gs(tmp_path):
    code = tmp_path / "code"
    (code / "configs").mkdir(parents=True)
    (code / "configs" / "default.py").write_text("")
    tarball = tmp_path / "a.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(code), "."], check=True)
    d = tmp_path / "host"
    w = ["bash", str(LAUNCH / "worker.sh")]
    opts = ["--dir", str(d), "--id", "0", "--python", sys.executable]
    home = tmp_path / "home"
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    subprocess.run([*w, "setup", "--tarball", str(tarball), *opts], check=True, env=env,
                   capture_output=True)
    # No key file, no gcloud ADC, no metadata server (the probe is pointed nowhere).
    env["GCE_METADATA_HOST"] = "127.0.0.1:9"
    result = subprocess.run([*w, "preflight", "--workdir", "gs://b/r", *opts], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "gcloud auth application-default login" in result.stderr
    adc = home / ".config" / "gcloud" / "application_default_credentials.json"
    adc.parent.mkdir(parents=True)
    adc.write_text("{}")
    result = subprocess.run([*w, "preflight", "--workdir", "gs://b/r", *opts], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_readme_mentions_every_script():
    text = (LAUNCH / "README.md").read_text()
    for script in SCRIPTS:
        assert f"launch/{script}" in text
    assert "jax[cuda12]==0.10.2" in text and "jax[tpu]==0.10.2" in text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
