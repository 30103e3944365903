"""The agent's state directory belongs to one agent at a time, and elsad leaves the directory
it is given for its socket as it found it."""

import os
import stat
import subprocess
import time


def test_a_second_agent_on_the_same_state_directory_is_refused(agent, tmp_path):
    agent.run_session("quiet", "/bin/sleep", "600")
    second = subprocess.run([os.path.join(agent.bin_dir, "elsad"), "--socket", str(tmp_path / "second.sock"),
                             "--state-dir", agent.state_dir], capture_output=True, text=True, timeout=60)
    assert second.returncode != 0, second.stderr
    assert "another elsad" in second.stderr and agent.state_dir in second.stderr, second.stderr
    assert not (tmp_path / "second.sock").exists(), "the refused agent must not serve"
    # The first agent and what it holds are untouched.
    assert agent.sessions()["quiet"]["state"] == "running"
    agent.cli("stop", "quiet")


def test_a_socket_in_an_existing_directory_leaves_its_mode_alone(bin_dir, tmp_path):
    shared = tmp_path / "shared"  # like /tmp: world-writable, sticky
    shared.mkdir()
    os.chmod(shared, 0o1777)
    socket = shared / "elsad.sock"
    proc = subprocess.Popen([os.path.join(bin_dir, "elsad"), "--socket", str(socket), "--state-dir",
                             str(tmp_path / "state")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while not socket.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "elsad did not listen"
            time.sleep(0.05)
        assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777, oct(os.stat(shared).st_mode)
        assert stat.S_IMODE(os.stat(socket).st_mode) == 0o600
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# A session holding open a file whose name is not UTF-8 (the name is made inside the session, so
# it reaches CRIU's log, and the agent's error, as raw bytes).
OPENS_A_LATIN1_NAME = """
import time
f = open(b"data-\\xff\\xfe.txt", "wb")
f.write(b"x")
f.flush()
print("ready", flush=True)
time.sleep(600)
"""


def test_a_failed_restore_naming_a_file_that_is_not_utf8_is_a_clean_error(agent, workdir):
    """CRIU's log quotes the file's name in the error; JSON cannot carry those bytes, and the
    agent's reply once threw outside its handler. Now the bytes are replaced, the client gets a
    clear error, and the agent stays up."""
    agent.run_session("latin", "/usr/bin/python3", "-c", OPENS_A_LATIN1_NAME, workdir=workdir)
    deadline = time.time() + 60
    while "ready" not in agent.cli("logs", "latin").stdout:
        assert time.time() < deadline, "the session never opened its file"
        time.sleep(0.1)
    checkpoint = agent.json("checkpoint", "latin")["checkpoint"]
    os.unlink(os.path.join(os.fsencode(workdir), b"data-\xff\xfe.txt"))  # the restore cannot reopen it
    failed = agent.cli("restore", checkpoint["id"], check=False)
    assert failed.returncode != 0, failed.stdout
    assert "restore of " + checkpoint["id"] in failed.stderr, failed.stderr
    assert "data-\ufffd\ufffd.txt" in failed.stderr, f"the error names the file, its odd bytes replaced: {failed.stderr!r}"
    assert agent.sessions().get("latin", {}).get("state") != "running", "nothing half-restored runs"
    assert agent.json("checkpoints")[0]["id"] == checkpoint["id"], "the agent is up and the checkpoint kept"
