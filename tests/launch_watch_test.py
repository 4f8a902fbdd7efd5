"""`launch/tpu_vm.sh watch` (and the code pinning of `setup`) against a stubbed `gcloud`.

The stub replays, per kind of call, a scripted sequence of answers (the last one repeats)
and records every call, so each scenario asserts exactly which gcloud calls `watch` made:
preempted, deleted (NOT_FOUND), unhealthy, trainer dead or hung, finished, transient setup
failures, queued resources (Spot), and a second watch on the same slice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU = ["--name", "mf", "--zone", "us-central2-b"]
WORKDIR = "gs://bucket/runs/a"
DEFAULT_SIGINT_EXEC = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                       "os.execvp(sys.argv[1], sys.argv[1:])")

STUB = r'''#!PYTHON
"""A fake gcloud: answers from script.json, records calls in calls.jsonl."""
import json, os, shutil, sys
root = os.environ["GCLOUD_STUB"]
argv = sys.argv[1:]
with open(os.path.join(root, "calls.jsonl"), "a") as f:
    f.write(json.dumps(argv) + "\n")

def gcs(url):
    return os.path.join(root, "gcs", url[len("gs://"):])

def kind():
    if argv[:3] == ["compute", "tpus", "tpu-vm"]:
        if argv[3] == "ssh":
            command = argv[argv.index("--command") + 1]
            for word in ("check", "setup", "start", "stop"):
                if f"worker.sh {word} " in command:
                    return word
            return "ssh"
        return argv[3]
    if argv[:3] == ["compute", "tpus", "queued-resources"]:
        return "qr-" + argv[3]
    return "-".join(argv[:2])

def answer(key, default):
    script = json.load(open(os.path.join(root, "script.json")))
    counts_path = os.path.join(root, "counts.json")
    counts = json.load(open(counts_path)) if os.path.exists(counts_path) else {}
    answers = script.get(key)
    if not answers:
        return default
    n = counts.get(key, 0)
    counts[key] = n + 1
    json.dump(counts, open(counts_path, "w"))
    return answers[min(n, len(answers) - 1)]

def finish(out="", err="", rc=0):
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(rc)

NOT_FOUND = "ERROR: (gcloud) NOT_FOUND: Resource 'projects/p/locations/z/nodes/mf' was not found\n"
LINE = "musicflax-worker {w} on t1v-w-{w}: setup={setup} trainer={trainer}\n"
k = kind()
if k in ("describe", "qr-describe"):
    a = answer(k, "READY HEALTHY")
    if a == "NOT_FOUND":
        finish(err=NOT_FOUND, rc=1)
    if a == "ERROR":
        finish(err="ERROR: (gcloud) There was a problem refreshing your current auth tokens\n", rc=1)
    finish(out=a.replace(" ", "\t") + "\n")
if k == "check":
    a = answer(k, "running")
    if a == "unreachable":
        finish(err="ssh: connect to host 10.0.0.2 port 22: Connection timed out\n", rc=255)
    lines = {"running": [("ok", "running pid=7"), ("ok", "running pid=8")],
             "dead": [("ok", "running pid=7"), ("ok", "stopped")],
             "missing": [("missing", "stopped"), ("missing", "stopped")]}[a]
    finish(out="".join(LINE.format(w=w, setup=s, trainer=t) for w, (s, t) in enumerate(lines)),
           rc=0 if a == "running" else 4 if a == "missing" else 0)
if k == "scp":
    os.makedirs(os.path.join(root, "remote"), exist_ok=True)
    for path in argv[4:]:
        if os.path.isfile(path):
            shutil.copy(path, os.path.join(root, "remote"))
if k == "storage-cat":
    a = answer("heartbeat", None)
    if a is None:
        url = argv[2]
        if not os.path.exists(gcs(url)):
            finish(err="ERROR: (gcloud.storage.cat) The following URLs matched no objects or files\n", rc=1)
        finish(out=open(gcs(url)).read())
    finish(out=json.dumps(a) if isinstance(a, dict) else a)
if k == "storage-ls":
    if not os.path.exists(gcs(argv[2])):
        finish(err="ERROR: (gcloud.storage.ls) One or more URLs matched no objects.\n", rc=1)
    finish(out=argv[2] + "\n")
if k == "storage-cp":
    src, dst = [a for a in argv[2:] if not a.startswith("-")]
    src = gcs(src) if src.startswith("gs://") else src
    if dst.startswith("gs://"):
        os.makedirs(os.path.dirname(gcs(dst)), exist_ok=True)
        dst = gcs(dst)
    if not os.path.exists(src):
        finish(err="ERROR: not found\n", rc=1)
    shutil.copy(src, dst)
    finish()
a = answer(k, "ok")
finish(err="ERROR: (gcloud) it failed\n" if a == "fail" else "", rc=1 if a == "fail" else 0)
'''


class Gcloud:
    """A stub gcloud on PATH with a script of answers; `calls` lists what was called."""

    def __init__(self, root: Path):
        self.root = root
        (root / "bin").mkdir(parents=True)
        stub = root / "bin" / "gcloud"
        stub.write_text(STUB.replace("PYTHON", sys.executable, 1))
        stub.chmod(0o755)
        self.script({})

    def script(self, answers: dict) -> None:
        (self.root / "script.json").write_text(json.dumps(answers))
        for name in ("counts.json", "calls.jsonl"):
            (self.root / name).unlink(missing_ok=True)

    @property
    def env(self) -> dict:
        environ = {**os.environ, "GCLOUD_STUB": str(self.root), "TMPDIR": str(self.root),
                   "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        environ.pop("XLA_FLAGS", None)
        return environ

    def calls(self) -> list[list[str]]:
        path = self.root / "calls.jsonl"
        return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []

    def kinds(self, skip=("storage-cat",)) -> list[str]:
        """The calls in short: describe, create, delete, scp, check, setup, start, stop, qr-*."""
        out = []
        for argv in self.calls():
            if argv[:3] == ["compute", "tpus", "tpu-vm"]:
                k = argv[3]
                if k == "ssh":
                    command = argv[argv.index("--command") + 1]
                    k = next((w for w in ("check", "setup", "start", "stop")
                              if f"worker.sh {w} " in command), "ssh")
            elif argv[:3] == ["compute", "tpus", "queued-resources"]:
                k = "qr-" + argv[3]
            else:
                k = "-".join(argv[:2])
            if k not in skip:
                out.append(k)
        return out

    def calls_of(self, kind: str) -> list[list[str]]:
        return [c for c, k in zip(self.calls(), self.kinds(skip=())) if k == kind]

    def call(self, kind: str) -> list[str]:
        """The one call of that kind."""
        matches = self.calls_of(kind)
        assert len(matches) == 1, (kind, self.kinds(skip=()))
        return matches[0]


@pytest.fixture
def gcloud(tmp_path) -> Gcloud:
    return Gcloud(tmp_path / "gcloud")


def watch(gcloud: Gcloud, *args: str, polls: int = 3, script=None, repo: Path = REPO,
          timeout: float = 60) -> subprocess.CompletedProcess:
    if script is not None:
        gcloud.script(script)
    return subprocess.run(
        ["bash", str(repo / "launch" / "tpu_vm.sh"), "watch", *TPU, "--type", "v5p-8", "--spot",
         "--workdir", WORKDIR, "--interval", "0.01", "--max-polls", str(polls), *args],
        env=gcloud.env, capture_output=True, text=True, timeout=timeout)


def heartbeat(state: str, step: int, total: int = 100, age: float = 0.0) -> dict:
    return {"step": step, "num_train_steps": total, "state": state,
            "time": time.time() - age, "host": "t1v-w-0", "pid": 7}


PIN = ["storage-ls", "storage-cp"]              # first watch of a run: no pin yet, upload one
BRING_UP = ["scp", "setup", "start"]
RUNNING = ["describe", "check"]                 # a poll that finds everything fine


def test_preempted_is_recreated_and_resumed(gcloud):
    result = watch(gcloud, "--", "--config.num_train_steps=100", polls=2, script={
        "describe": ["PREEMPTED", "READY HEALTHY"], "heartbeat": [heartbeat("running", 40)]})
    assert result.returncode == 3, result.stderr  # --max-polls ends it
    assert gcloud.kinds() == [*PIN, "describe", "delete", "create", *BRING_UP, *RUNNING]
    assert gcloud.call("delete")[3:] == ["delete", "mf", "--zone=us-central2-b", "--quiet"]
    assert gcloud.call("create")[3:] == [
        "create", "mf", "--zone=us-central2-b", "--accelerator-type=v5p-8",
        "--version=v2-alpha-tpuv5", "--spot"]
    start = gcloud.call("start")
    assert "--worker=all" in start
    command = start[start.index("--command") + 1]
    assert f"--workdir {WORKDIR}" in command and "--config.num_train_steps=100" in command
    assert "PREEMPTED: recreating" in result.stderr and "stopping after 2 polls" in result.stderr


@pytest.mark.parametrize("state", ["TERMINATED", "STOPPED"])
def test_terminated_is_recreated(gcloud, state):
    result = watch(gcloud, polls=1, script={"describe": [state]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "describe", "delete", "create", *BRING_UP]


def test_not_found_is_created_without_delete(gcloud):
    result = watch(gcloud, polls=2, script={"describe": ["NOT_FOUND", "READY HEALTHY"]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "describe", "create", *BRING_UP, *RUNNING]


def test_describe_error_is_not_a_deletion(gcloud):
    """An auth or network hiccup of describe is waited out, not taken for NOT_FOUND."""
    result = watch(gcloud, polls=3, script={"describe": ["ERROR", "ERROR", "READY HEALTHY"]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "describe", "describe", *RUNNING]
    assert "describe failed" in result.stderr


def test_unhealthy_is_recreated_after_consecutive_polls(gcloud):
    result = watch(gcloud, "--unhealthy-polls", "2", polls=5, script={"describe": [
        "READY UNHEALTHY_TENSORFLOW", "READY HEALTHY", "READY TIMEOUT", "READY TIMEOUT",
        "READY HEALTHY"]})
    assert result.returncode == 3, result.stderr
    # One unhealthy poll is tolerated (the count restarts after a healthy one); two recreate.
    assert gcloud.kinds() == [*PIN, "describe", *RUNNING, "describe", "describe", "delete",
                              "create", *BRING_UP, *RUNNING]
    assert "health TIMEOUT for 2 polls" in result.stderr


def test_ready_but_not_set_up_is_set_up(gcloud):
    result = watch(gcloud, polls=2, script={"check": ["missing", "running"]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "describe", "check", *BRING_UP, *RUNNING]


def test_dead_trainer_is_restarted_on_the_same_slice(gcloud):
    result = watch(gcloud, polls=2, script={
        "check": ["dead", "running"], "heartbeat": [heartbeat("stopped", 30)]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "describe", "check", "stop", "start", *RUNNING]
    stop = gcloud.call("stop")
    assert "--kill-after 60" in stop[stop.index("--command") + 1]
    assert "trainer not running (heartbeat: stopped at step 30)" in result.stderr


def test_hung_trainer_is_restarted(gcloud):
    """Every session alive, but the heartbeat has not moved for longer than --stale-after."""
    result = watch(gcloud, "--stale-after", "600", polls=2, script={
        "heartbeat": [heartbeat("running", 30, age=700), heartbeat("running", 31)]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "describe", "check", "stop", "start", *RUNNING]
    assert "heartbeat at step 30 is 70" in result.stderr


def test_a_trainer_that_keeps_dying_is_given_up(gcloud):
    result = watch(gcloud, "--max-restarts", "2", polls=10, script={
        "check": ["dead"], "heartbeat": [heartbeat("failed", 30)]})
    assert result.returncode == 1, result.stderr
    assert gcloud.kinds() == [*PIN, *(["describe", "check", "stop", "start"] * 2),
                              "describe", "check"]
    assert "stopped 2 times without progress" in result.stderr.splitlines()[-1]


def test_finished_run_stops_and_keeps_the_slice(gcloud):
    result = watch(gcloud, "--", "--config.num_train_steps=100", polls=5, script={
        "heartbeat": [heartbeat("finished", 100)]})
    assert result.returncode == 0, result.stderr
    assert gcloud.kinds() == PIN  # nothing else: no describe, no recreate, no delete
    assert "finished: step 100 saved; the slice is kept" in result.stderr


def test_finished_run_deletes_the_slice_when_asked(gcloud):
    result = watch(gcloud, "--delete-when-done", polls=5, script={
        "heartbeat": [heartbeat("running", 99), heartbeat("finished", 100)],
        "check": ["running", "running", "dead"]})
    assert result.returncode == 0, result.stderr
    # The trainers are given time to exit (their logs go to the workdir at exit), then delete.
    assert gcloud.kinds() == [*PIN, *RUNNING, "check", "check", "delete"]
    assert gcloud.call("delete")[3:] == ["delete", "mf", "--zone=us-central2-b", "--quiet"]


def test_finished_at_an_older_target_is_continued(gcloud):
    """The heartbeat says finished at 100, but this watch asks for 200 steps: train on."""
    result = watch(gcloud, "--", "--config.num_train_steps", "200", polls=1, script={
        "heartbeat": [heartbeat("finished", 100)], "check": ["dead"]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "describe", "check", "stop", "start"]


def test_transient_setup_failures_are_retried(gcloud):
    result = watch(gcloud, "--retries", "3", polls=2, script={
        "describe": ["NOT_FOUND", "READY HEALTHY"], "setup": ["fail", "fail", "ok"]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "describe", "create", "scp", "setup", "scp", "setup",
                              *BRING_UP, *RUNNING]


def test_setup_that_keeps_failing_gives_the_slice_up(gcloud):
    result = watch(gcloud, "--retries", "2", polls=2, script={
        "describe": ["NOT_FOUND", "NOT_FOUND", "READY HEALTHY"], "setup": ["fail", "fail", "ok"],
        "start": ["fail", "ok"]})
    assert result.returncode == 3, result.stderr
    # Two failed setups: delete the new slice; the next poll creates another one, whose
    # setup works and whose first start fails once.
    assert gcloud.kinds() == [*PIN, "describe", "create", "scp", "setup", "scp", "setup",
                              "delete", "describe", "create", "scp", "setup", "start",
                              "scp", "setup", "start"]
    assert "giving up on this slice: setup/train failed 2 times" in result.stderr


def test_unreachable_workers_give_the_slice_up(gcloud):
    result = watch(gcloud, "--retries", "2", polls=3, script={
        "check": ["unreachable", "unreachable", "running"]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "describe", "check", "describe", "check", "delete",
                              *RUNNING]


def test_queued_resource_for_spot(gcloud):
    result = watch(gcloud, "--queued", polls=5, script={
        "qr-describe": ["NOT_FOUND", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"],
        "describe": ["READY HEALTHY"], "check": ["missing", "running"]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "qr-describe", "qr-create", "qr-describe", "qr-describe",
                              "qr-describe", "describe", "check", *BRING_UP,
                              "qr-describe", *RUNNING]
    assert gcloud.call("qr-create")[3:] == [
        "create", "mf-qr", "--zone=us-central2-b", "--node-id=mf", "--accelerator-type=v5p-8",
        "--runtime-version=v2-alpha-tpuv5", "--spot"]
    describe = gcloud.calls_of("qr-describe")[0]
    assert describe[3:] == ["describe", "mf-qr", "--zone=us-central2-b",
                            "--format=value(state.state)"]


@pytest.mark.parametrize("qr_state", ["SUSPENDED", "FAILED"])
def test_queued_resource_suspended_or_failed_is_requested_again(gcloud, qr_state):
    result = watch(gcloud, "--queued", "--qr-name", "q1", polls=1, script={
        "qr-describe": [qr_state]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "qr-describe", "qr-delete", "qr-create"]
    assert gcloud.call("qr-delete")[3:] == ["delete", "q1", "--zone=us-central2-b", "--force",
                                            "--quiet"]


def test_queued_resource_suspending_is_waited_out(gcloud):
    result = watch(gcloud, "--queued", polls=3, script={
        "qr-describe": ["SUSPENDING", "SUSPENDED", "ACCEPTED"]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "qr-describe", "qr-describe", "qr-delete", "qr-create",
                              "qr-describe"]


def test_queued_resource_active_without_its_node(gcloud):
    result = watch(gcloud, "--queued", polls=1, script={
        "qr-describe": ["ACTIVE"], "describe": ["NOT_FOUND"]})
    assert result.returncode == 3, result.stderr
    assert gcloud.kinds() == [*PIN, "qr-describe", "describe", "qr-delete", "qr-create"]


def test_a_second_watch_is_refused(gcloud):
    # Ctrl-C must stop a watch, but bash cannot trap a signal ignored when it starts, and
    # whether this process ignores SIGINT depends on how pytest was started (detached: it
    # does) and on what earlier tests did: exec the watch with SIGINT at its default.
    first = subprocess.Popen(
        [sys.executable, "-c", DEFAULT_SIGINT_EXEC,
         "bash", str(REPO / "launch" / "tpu_vm.sh"), "watch", *TPU, "--type", "v5p-8",
         "--workdir", WORKDIR, "--interval", "0.2"],
        env=gcloud.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    locks = lambda: list(gcloud.root.glob("musicflax-watch-*.lock"))  # noqa: E731
    try:
        deadline = time.time() + 20
        while not locks() or not any("check" == k for k in gcloud.kinds()):
            assert time.time() < deadline and first.poll() is None, "the first watch did not start"
            time.sleep(0.05)
        (lock,) = locks()
        assert os.readlink(lock) == str(first.pid)
        second = watch(gcloud, polls=1)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"launch/tpu_vm.sh: error: another watch (pid {first.pid}) is watching mf: stop it "
            f"first (lock {lock})"]
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=20)
    assert not locks()  # the lock goes with its watch
    # A lock left by a watch that died (kill -9) does not block the next one.
    os.symlink("999999999", gcloud.root / "musicflax-watch-default-us-central2-b-mf.lock")
    assert watch(gcloud, polls=1).returncode == 3


# ------------------------------------------------------------------ pinned code

@pytest.fixture
def small_repo(tmp_path) -> Path:
    """A repository of a few files with the real launch scripts (not a git checkout)."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "launch", repo / "launch")
    (repo / "configs").mkdir()
    (repo / "configs" / "default.py").write_text("# config\n")
    (repo / "musicflax").mkdir()
    (repo / "musicflax" / "version.txt").write_text("A\n")
    (repo / ".venv").mkdir()
    (repo / ".venv" / "big").write_text("not shipped\n")
    return repo


def shipped(gcloud: Gcloud) -> dict[str, str]:
    with tarfile.open(gcloud.root / "remote" / "musicflax-src.tar.gz") as tar:
        return {m.name.removeprefix("./"): tar.extractfile(m).read().decode()
                for m in tar.getmembers() if m.isfile()}


def setup(gcloud: Gcloud, repo: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(repo / "launch" / "tpu_vm.sh"), "setup", *TPU,
                             "--workdir", WORKDIR, *args],
                            env=gcloud.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def test_setup_ships_the_code_pinned_at_the_runs_start(gcloud, small_repo):
    setup(gcloud, small_repo)
    assert gcloud.kinds() == ["storage-ls", "storage-cp", "scp", "setup"]
    pin = gcloud.root / "gcs" / "bucket" / "runs" / "a" / "code" / "musicflax-src.tar.gz"
    assert pin.is_file()
    files = shipped(gcloud)
    assert files["musicflax/version.txt"] == "A\n" and "configs/default.py" in files
    assert not any(name.startswith(".venv") for name in files)
    assert files["PINNED"].startswith("packed ")
    assert (gcloud.root / "remote" / "musicflax-worker.sh").read_bytes() == (
        small_repo / "launch" / "worker.sh").read_bytes()

    # Code edited after the run started does not enter it: the pin is shipped again ...
    (small_repo / "musicflax" / "version.txt").write_text("B\n")
    gcloud.script({})
    setup(gcloud, small_repo)
    assert gcloud.kinds() == ["storage-ls", "storage-cp", "scp", "setup"]
    assert gcloud.calls()[1][2] == f"{WORKDIR}/code/musicflax-src.tar.gz"  # downloaded
    assert shipped(gcloud)["musicflax/version.txt"] == "A\n"
    # ... and the same in watch's recreate.
    result = watch(gcloud, polls=1, script={"describe": ["PREEMPTED"]}, repo=small_repo)
    assert result.returncode == 3, result.stderr
    assert shipped(gcloud)["musicflax/version.txt"] == "A\n"
    # --repin replaces the pin on purpose.
    gcloud.script({})
    setup(gcloud, small_repo, "--repin")
    assert shipped(gcloud)["musicflax/version.txt"] == "B\n"
    with tarfile.open(pin) as tar:
        assert tar.extractfile("./musicflax/version.txt").read() == b"B\n"


def test_setup_command_on_the_workers(gcloud, small_repo):
    setup(gcloud, small_repo, "--python", "/opt/py/bin/python3.12", "--remote-dir", "/data/mf")
    scp, ssh = gcloud.call("scp"), gcloud.call("setup")
    assert scp[-3:] == ["mf:", "--zone=us-central2-b", "--worker=all"]
    assert [Path(p).name for p in scp[4:6]] == ["musicflax-src.tar.gz", "musicflax-worker.sh"]
    assert ssh[ssh.index("--command") + 1] == (
        "bash musicflax-worker.sh setup --dir /data/mf --tarball musicflax-src.tar.gz "
        "--jax-spec 'jax[tpu]==0.10.2' --python /opt/py/bin/python3.12")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
