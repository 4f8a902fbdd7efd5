"""The launch scripts (launch/*.sh): what --dry-run prints, argument errors, --help.

Nothing here reaches the network: the scripts run with --dry-run (or --help, or fail on
their arguments), and `gcloud`, `ssh` and `rsync` on PATH are replaced by stubs that
record any call, so a script that ran one instead of printing it fails the test.
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
SCRIPTS = ["local.sh", "tpu_vm.sh", "gpu_vms.sh"]
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
    assert "--dry-run" in result.stdout
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


def test_tpu_setup_copies_and_installs_on_all_workers(stub_bin):
    tar, scp, ssh = dry("tpu_vm.sh", "setup", *TPU, stub_bin=stub_bin)
    assert tar[:2] == ["tar", "-czf"] and option(tar, "-C") == str(REPO) and tar[-1] == "."
    assert "--exclude=.venv" in tar and "--exclude=.git" in tar
    assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tar[2], "mf:musicflax-src.tar.gz",
                   "--zone=us-central2-b", "--worker=all"]
    assert ssh[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mf", "--zone=us-central2-b"]
    assert "--worker=all" in ssh
    remote = option(ssh, "--command")
    assert "tar -xzf ~/musicflax-src.tar.gz -C ~/musicflax" in remote
    assert "python3.11 -m venv .venv" in remote
    assert ".venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'" in shlex.join(shlex.split(remote))


def tpu_train_inner(cmd: list[str]) -> str:
    """The command tmux runs on each worker, out of `gcloud ... ssh --command '...'`."""
    remote = shlex.split(option(cmd, "--command"))
    assert remote[:3] == ["cd", "~/musicflax", "&&"]
    assert remote[3:8] == ["tmux", "new-session", "-d", "-s", "musicflax"]
    assert len(remote) == 9
    return remote[8]


def test_tpu_train(stub_bin):
    cmds = dry("tpu_vm.sh", "train", *TPU, "--config", "configs/waveform.py", "--workdir", GS,
               "--", "--config.num_train_steps=100", "--config.note=a b", stub_bin=stub_bin)
    assert len(cmds) == 1
    cmd = cmds[0]
    assert cmd[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mf", "--zone=us-central2-b"]
    assert "--worker=all" in cmd
    inner = tpu_train_inner(cmd)
    words = shlex.split(inner)
    i = words.index("exec")
    assert words[i + 1:i + 9] == [
        ".venv/bin/python", "-m", "musicflax.train", "--config=configs/waveform.py",
        f"--workdir={GS}", "--config.distributed.enabled=True", "--config.num_train_steps=100",
        "--config.note=a b"]
    assert words[i + 9:] == [">>", "~/musicflax/train_worker_$W.log", "2>&1"]
    assert "agent-worker-number" in inner and "|| hostname" in inner
    assert "python -m musicflax.train" in option(cmd, "--command")


def test_tpu_train_needs_gs_workdir(stub_bin):
    fails("tpu_vm.sh", "train", *TPU, stub_bin=stub_bin, match="missing --workdir")
    fails("tpu_vm.sh", "train", *TPU, "--workdir", "/tmp/run", stub_bin=stub_bin,
          match="gs://")
    fails("tpu_vm.sh", "train", *TPU, "--workdir", GS, "--config", "configs/nope.py",
          stub_bin=stub_bin, match="configs/nope.py")


def test_tpu_logs_stop_delete(stub_bin):
    (logs,) = dry("tpu_vm.sh", "logs", *TPU, stub_bin=stub_bin)
    assert logs == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mf", "--zone=us-central2-b",
                    "--worker=0", "--command", "tail -n 200 -F ~/musicflax/train_worker_0.log"]
    (logs3,) = dry("tpu_vm.sh", "logs", *TPU, "--worker", "3", stub_bin=stub_bin)
    assert "--worker=3" in logs3 and option(logs3, "--command").endswith("train_worker_3.log")
    (stop,) = dry("tpu_vm.sh", "stop", *TPU, stub_bin=stub_bin)
    assert "--worker=all" in stop and "kill -TERM" in option(stop, "--command")
    (delete,) = dry("tpu_vm.sh", "delete", *TPU, stub_bin=stub_bin)
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "mf",
                      "--zone=us-central2-b"]


def test_tpu_watch(stub_bin):
    cmds = dry("tpu_vm.sh", "watch", *TPU, "--type", "v5p-8", "--spot", "--workdir", GS,
               "--", "--config.num_train_steps=100", stub_bin=stub_bin)
    describe, delete, create, _tar, scp, setup, train = cmds
    assert describe == ["gcloud", "compute", "tpus", "tpu-vm", "describe", "mf",
                        "--zone=us-central2-b", "--format=value(state)"]
    assert delete[4:] == ["delete", "mf", "--zone=us-central2-b", "--quiet"]
    assert create[4:] == ["create", "mf", "--zone=us-central2-b", "--accelerator-type=v5p-8",
                          "--version=v2-alpha-tpuv5", "--spot"]
    assert scp[4] == "scp" and setup[4] == "ssh" and "--worker=all" in setup
    inner = tpu_train_inner(train)
    assert f"--workdir={GS}" in inner and "--config.num_train_steps=100" in inner


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
])
def test_tpu_errors(args, match, stub_bin):
    fails("tpu_vm.sh", *args, stub_bin=stub_bin, match=match)


# ------------------------------------------------------------------------------ gpu_vms.sh

def test_gpu_one_command_per_host(stub_bin):
    hosts = ["me@10.0.0.2", "gpu-b", "gpu-c"]
    cmds = dry("gpu_vms.sh", "--hosts", ",".join(hosts), "--ssh-user", "ops", "--workdir", GS,
               "--config", "configs/waveform.py", "--port", "4321", "--",
               "--config.batch_size=64", stub_bin=stub_bin)
    assert len(cmds) == 3
    dests = ["me@10.0.0.2", "ops@gpu-b", "ops@gpu-c"]
    for i, cmd in enumerate(cmds):
        assert cmd[:3] == ["ssh", "-n", dests[i]] and len(cmd) == 4
        remote = cmd[3]
        assert "MUSICFLAX_COORDINATOR=10.0.0.2:4321 " in remote
        assert "MUSICFLAX_NUM_PROCESSES=3 " in remote
        assert f"MUSICFLAX_PROCESS_ID={i} nohup .venv/bin/python -m musicflax.train " in remote
        assert ("--config=configs/waveform.py --workdir=gs://bucket/runs/default "
                "--config.distributed.enabled=True --config.batch_size=64 "
                f"> ~/musicflax/train_host_{i}.log 2>&1 < /dev/null &") in remote
        assert "CUDA_VISIBLE_DEVICES" not in remote
        assert [w for w in remote.split() if w.startswith("MUSICFLAX_PROCESS_ID=")] == [
            f"MUSICFLAX_PROCESS_ID={i}"]


def test_gpu_options(stub_bin):
    cmds = dry("gpu_vms.sh", "--hosts=a,b", f"--workdir={GS}", "--gpus-per-host=4",
               "--coordinator-host=10.1.2.3", stub_bin=stub_bin)
    for cmd in cmds:
        assert "CUDA_VISIBLE_DEVICES=0,1,2,3 " in cmd[3]
        assert "MUSICFLAX_COORDINATOR=10.1.2.3:1234 " in cmd[3]


def test_gpu_remote_command_starts_and_stops(stub_bin, tmp_path):
    """The per-host command, run here by sh with a fake home and python: env, log, pid, stop."""
    home = tmp_path / "home"
    (home / "musicflax" / ".venv" / "bin").mkdir(parents=True)
    fake = home / "musicflax" / ".venv" / "bin" / "python"
    fake.write_text("#!/bin/sh\necho \"$MUSICFLAX_COORDINATOR $MUSICFLAX_NUM_PROCESSES "
                    "$MUSICFLAX_PROCESS_ID $*\"\ntrap 'echo saved; exit 0' TERM\n"
                    "while :; do sleep 0.05; done\n")
    fake.chmod(0o755)
    (start,) = [c for c in dry("gpu_vms.sh", "--hosts", "h0,h1", "--workdir", GS,
                                stub_bin=stub_bin) if c[2] == "h1"]
    (stop,) = [c for c in dry("gpu_vms.sh", "--hosts", "h0,h1", "--stop", stub_bin=stub_bin)
               if c[2] == "h1"]
    env = {**os.environ, "HOME": str(home)}
    log = home / "musicflax" / "train_host_1.log"
    pidfile = home / "musicflax" / "train_host_1.pid"
    subprocess.run(["sh", "-c", start[3]], env=env, check=True, timeout=10)
    try:
        deadline = time.time() + 10
        while not (log.exists() and log.read_text()):
            assert time.time() < deadline
            time.sleep(0.05)
        assert log.read_text().startswith(
            "h0:1234 2 1 -m musicflax.train --config=configs/default.py "
            "--workdir=gs://bucket/runs/default --config.distributed.enabled=True")
        # A second start on the same host is refused while the first one runs.
        again = subprocess.run(["sh", "-c", start[3]], env=env, capture_output=True, text=True)
        assert again.returncode == 1 and "already running" in again.stderr
        subprocess.run(["sh", "-c", stop[3]], env=env, check=True, timeout=10)
        while "saved" not in log.read_text():
            assert time.time() < deadline
            time.sleep(0.05)
    finally:  # never leave the fake training behind
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def test_gpu_setup(stub_bin):
    cmds = dry("gpu_vms.sh", "--hosts", "a,b", "--ssh-user", "me", "--setup", stub_bin=stub_bin)
    assert [c[0] for c in cmds] == ["rsync", "ssh", "rsync", "ssh"]
    for dest, (rsync, ssh) in zip(["me@a", "me@b"], [cmds[:2], cmds[2:]]):
        assert rsync[-2:] == [f"{REPO}/", f"{dest}:musicflax/"]
        assert "--exclude=.venv" in rsync and "--delete" in rsync
        assert ssh[:2] == ["ssh", dest]
        assert ".venv/bin/pip install -q -e . 'jax[cuda12]==0.10.2'" in shlex.join(
            shlex.split(ssh[2]))


@pytest.mark.parametrize("args,match", [
    (["--workdir", GS], "missing --hosts"),
    (["--hosts", "a,b"], "missing --workdir"),
    (["--hosts", "a,b", "--workdir", "/mnt/shared/run"], "gs://"),
    (["--hosts", "a,,b", "--workdir", GS], "empty"),
    (["--hosts", "a", "--workdir", GS, "--port", "http"], "--port"),
    (["--hosts", "a", "--workdir", GS, "--gpus-per-host", "0"], "--gpus-per-host"),
    (["--hosts", "a", "--setup", "--stop"], "don't go together"),
    (["--hosts", "a", "--workdir", GS, "--config", "configs/nope.py"], "configs/nope.py"),
])
def test_gpu_errors(args, match, stub_bin):
    fails("gpu_vms.sh", *args, stub_bin=stub_bin, match=match)


def test_readme_mentions_every_script():
    text = (LAUNCH / "README.md").read_text()
    for script in SCRIPTS:
        assert f"launch/{script}" in text
    assert "jax[cuda12]==0.10.2" in text and "jax[tpu]==0.10.2" in text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
