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
