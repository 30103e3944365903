"""The hub side of data safety: a stop that cannot save the server leaves it running, and a host
that does not answer is "unknown", never "stopped" or "nothing saved"."""

import os
import time

from hubstack import open_kernel

# An fd CRIU cannot dump (an anonymous inode it has no support for): every checkpoint of this
# kernel fails, for real, in CRIU.
HOLD_A_USERFAULTFD = "import ctypes\nuffd = ctypes.CDLL(None).syscall(323, 0x80000)\nassert uffd >= 0, uffd\n"


def wait_until_forgotten(stack, user, timeout=120):
    deadline = time.monotonic() + timeout
    while stack.hub_server(user) is not None:
        assert time.monotonic() < deadline, "the hub still lists the server"
        time.sleep(0.3)


def test_a_stop_whose_checkpoint_fails_leaves_the_server_running_with_its_work(stack):
    user, session = "ivan", "jh-ivan"
    stack.start_server(user, {"host": "h1"})
    browser = stack.login(user)
    k = open_kernel(stack, browser, user)
    k.execute(HOLD_A_USERFAULTFD + "unsaved = 'work since the last save'")
    kernel_id = k.kernel_id
    k.close()
    try:
        stack.api("DELETE", f"/hub/api/users/{user}/server", user="admin", check=False)
        wait_until_forgotten(stack, user)
        assert "checkpoint of jh-ivan on h1 failed; it keeps running there" in stack.hub_log(), stack.hub_log()[-3000:]
        assert stack.where(session) == "h1", "a server whose checkpoint failed must run on"
        # The next start takes it over, unsaved work and all.
        stack.start_server(user)
        assert stack.where(session) == "h1"
        k = open_kernel(stack, stack.login(user), user, kernel_id=kernel_id)
        try:
            assert k.eval("unsaved") == "'work since the last save'"
        finally:
            k.close()
    finally:
        stack.agents["h1"].cli("stop", session, check=False)


def test_an_unreachable_host_is_unknown_not_stopped_and_no_fresh_start_replaces_it(stack):
    user, session = "judy", "jh-judy"
    stack.start_server(user, {"host": "h2"})
    stack.api("DELETE", f"/hub/api/users/{user}/server", user="admin")
    wait_until_forgotten(stack, user)
    assert stack.where(session) is None
    assert [c for c in stack.agents["h2"].json("checkpoints") if c["session"] == session], "checkpointed on h2"
    # h2's agent stops answering (its socket is moved away); its checkpoint is there.
    socket = stack.agents["h2"].socket
    os.rename(socket, socket + ".away")
    try:
        r = stack.api("POST", f"/hub/api/users/{user}/server", user=user, json_body={}, check=False)
        deadline = time.monotonic() + 60
        while (srv := stack.hub_server(user)) and srv.get("pending") and time.monotonic() < deadline:
            time.sleep(0.3)
        assert stack.hub_server(user) is None or not stack.hub_server(user)["ready"], r.text
        assert "may be running on, or saved on, a host that does not answer" in stack.hub_log(), \
            stack.hub_log()[-3000:]
        assert session not in stack.agents["h1"].sessions(), "no fresh server was started elsewhere"
    finally:
        os.rename(socket + ".away", socket)
    # Back: the checkpoint on h2 is restored, with the token its process holds.
    stack.start_server(user)
    assert stack.where(session) == "h2"
    assert stack.agents["h2"].sessions()[session]["restored_from"], "restored, not fresh"
