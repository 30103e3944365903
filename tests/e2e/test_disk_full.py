"""A checkpoint that meets a full disk: the agent's state directory is a small tmpfs the test
mounts, filled up by the test. Both a checkpoint with --leave-running and one without (a stop)
must fail with a clear error while the session keeps running, nothing half-written may be left
in the store, and once space is freed the same checkpoint succeeds and restores."""

import contextlib
import os
import shutil
import subprocess

import pytest

from conftest import _bin_dir
from elsa_agent import ElsaAgent, start_jupyter
from test_checkpoint_restore import set_state

ARRAY_MIB = 64
DISK_MIB = 512


@contextlib.contextmanager
def small_tmpfs(path, mib):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "elsa-e2e-disk", path], check=True)
    try:
        yield path
    finally:
        # Lazily: a process the test could not stop must not leave the mount behind.
        subprocess.run(["umount", "-l", path], check=False)


@pytest.fixture
def agent_on_small_disk():
    agent = ElsaAgent(_bin_dir(), criu_prefix=os.environ.get("ELSA_CRIU_PREFIX"), keep_state=True)
    try:
        with small_tmpfs(agent.state_dir, DISK_MIB):
            try:
                yield agent.start()
            finally:
                agent.close()
    finally:
        shutil.rmtree(agent.root, ignore_errors=True)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_leaving(path, leave):
    """Takes all but `leave` bytes of the filesystem's free space; returns the filler's path."""
    filler = os.path.join(path, "filler")
    block = b"\xa5" * (1 << 20)
    with open(filler, "ab") as f:
        while free_bytes(path) > leave + len(block):
            f.write(block)
            f.flush()
    return filler


def kernel_eval(server, kernel, expr):
    server.wait_ready(timeout=30)
    conn = server.connect(kernel, session_id="e2e-session")
    try:
        return conn.eval(expr)
    finally:
        conn.close()


def assert_running_with_state(agent, server, kernel, pid):
    session = agent.sessions()["full"]
    assert session["state"] == "running" and session["pid"] == pid, session
    os.kill(pid, 0)
    assert kernel_eval(server, kernel, "x + 1") == "42"
    assert kernel_eval(server, kernel, "hashlib.sha256(arr.tobytes()).hexdigest() == digest") == "True"


def test_a_checkpoint_on_a_full_disk_fails_cleanly_and_a_retry_succeeds(agent_on_small_disk, workdir):
    agent = agent_on_small_disk
    server = start_jupyter(agent, "full", workdir)
    kernel = set_state(server, mib=ARRAY_MIB)
    pid = agent.sessions()["full"]["pid"]
    filler = fill_leaving(agent.state_dir, 16 << 20)

    for args in (["--leave-running"], []):
        failed = agent.cli("checkpoint", "full", *args, check=False, timeout=120)
        print(f"checkpoint {args or 'stop'} on a full disk:", failed.stderr.strip())
        assert failed.returncode != 0, failed.stdout
        assert "No space left on device" in failed.stderr, failed.stderr
        assert_running_with_state(agent, server, kernel, pid)
        assert agent.json("checkpoints") == [], "a failed checkpoint leaves none behind"
        leftovers = os.listdir(os.path.join(agent.state_dir, "checkpoints"))
        assert leftovers == [], f"nothing half-written in the store: {leftovers}"

    os.unlink(filler)
    kept = agent.json("checkpoint", "full", "--leave-running")["checkpoint"]
    assert agent.json("verify", kept["id"])["id"] == kept["id"]
    stopped = agent.json("checkpoint", "full")["checkpoint"]
    assert agent.json("verify", stopped["id"])["id"] == stopped["id"]
    assert agent.sessions()["full"]["state"] == "checkpointed"
    agent.json("restore", stopped["id"])
    assert kernel_eval(server, kernel, "x + 1") == "42"
    assert kernel_eval(server, kernel, "hashlib.sha256(arr.tobytes()).hexdigest() == digest") == "True"
    # The pages the failed attempts put in the store are reclaimable, and the rest stays whole.
    agent.cli("stop", "full")
    agent.json("gc")
    assert agent.json("verify", kept["id"])["id"] == kept["id"]
