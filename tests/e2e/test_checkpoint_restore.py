"""A real jupyter-server + ipykernel session, checkpointed and restored by elsad with CRIU."""

import glob
import os
import subprocess

from elsa_agent import alive, start_jupyter, tree_pids

ARRAY_MIB = 200
SET_STATE = """
import hashlib, numpy as np
x = 41
arr = np.random.default_rng(7).random({mib} * 1024 * 1024 // 8)
digest = hashlib.sha256(arr.tobytes()).hexdigest()
"""
CHECK_ARRAY = "hashlib.sha256(arr.tobytes()).hexdigest() == digest"


def nft_tables():
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return {line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("table ")}


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x20]))


def set_state(server, mib=ARRAY_MIB):
    kernel = server.start_kernel()
    conn = server.connect(kernel, session_id="e2e-session")
    out = conn.execute(SET_STATE.format(mib=mib), timeout=120)
    assert out["status"] == "ok", out
    assert conn.eval("x") == "41"
    conn.close()  # the kernel's last websocket: the server buffers its output until we return
    return kernel


def assert_state(server, kernel):
    server.wait_ready(timeout=30)
    conn = server.connect(kernel, session_id="e2e-session")
    try:
        assert conn.eval("x + 1") == "42"
        assert conn.eval(CHECK_ARRAY) == "True"
        assert conn.eval("arr.nbytes") == str(ARRAY_MIB * 1024 * 1024)
    finally:
        conn.close()


def test_checkpoint_then_restore_keeps_kernel_state(agent, workdir):
    server = start_jupyter(agent, "nb", workdir)
    kernel = set_state(server)
    session = agent.sessions()["nb"]
    pids = tree_pids(session["pid"])
    assert len(pids) >= 2, "jupyter-server and its kernel"
    assert session["rss_bytes"] > ARRAY_MIB * 1024 * 1024

    report = agent.json("checkpoint", "nb")
    checkpoint = report["checkpoint"]
    assert checkpoint["pages"]["in_store"]
    assert checkpoint["pages"]["count"] * 4096 > ARRAY_MIB * 1024 * 1024
    assert checkpoint["size_bytes"] < ARRAY_MIB * 1024 * 1024 / 4, "pages live in the page store"
    assert not [p for p in pids if alive(p)], "the checkpointed tree must be gone"
    assert agent.sessions()["nb"]["state"] == "checkpointed"
    assert [c["id"] for c in agent.json("checkpoints")] == [checkpoint["id"]]
    assert agent.json("verify", checkpoint["id"])["files"] == checkpoint["files"]

    assert checkpoint["network_lock_table"] in nft_tables()
    restored = agent.json("restore", checkpoint["id"])
    assert checkpoint["network_lock_table"] not in nft_tables(), "restore unlocks the connections"
    assert restored["session"]["state"] == "running"
    assert restored["session"]["restored_from"] == checkpoint["id"]
    assert_state(server, kernel)
    # Output still reaches the session's log after the restore (the agent's pipe was handed back).
    assert "Restoring connection" in agent.cli("logs", "nb").stdout


def test_leave_running_then_restore_after_stop(agent, workdir):
    server = start_jupyter(agent, "lr", workdir)
    kernel = set_state(server)
    pid = agent.sessions()["lr"]["pid"]

    checkpoint = agent.json("checkpoint", "lr", "--leave-running")["checkpoint"]
    assert checkpoint["leave_running"]
    assert alive(pid), "--leave-running keeps the original"
    assert_state(server, kernel)
    # Change the original: the restored session must come back with the checkpointed state.
    conn = server.connect(kernel, session_id="e2e-session")
    conn.execute("x = 1000")
    conn.close()

    agent.cli("stop", "lr")
    assert not alive(pid)
    agent.json("restore", checkpoint["id"])
    assert_state(server, kernel)


def test_restore_under_a_new_name_while_the_name_is_taken(agent, workdir):
    agent.run_session("busy", "sh", "-c", "while :; do sleep 0.2; done")
    checkpoint = agent.json("checkpoint", "busy", "--leave-running")["checkpoint"]
    taken = agent.cli("restore", checkpoint["id"], check=False)
    assert taken.returncode != 0
    assert "is running" in taken.stderr and "--name" in taken.stderr


def test_bad_input_gets_clear_errors_and_leaves_nothing_behind(agent, workdir):
    def fails(*args, expect):
        result = agent.cli(*args, check=False)
        assert result.returncode != 0, f"elsa {args} should fail"
        assert expect in result.stderr, f"elsa {args}: {result.stderr!r} lacks {expect!r}"
        return result.stderr

    fails("checkpoint", "nobody", expect="no session named 'nobody'")
    fails("restore", "no-such-checkpoint", expect="no checkpoint 'no-such-checkpoint'")
    for bad in ("../etc", "a/b", "..", "x/../../y"):
        fails("restore", bad, expect="invalid checkpoint id")
        fails("rm", bad, expect="invalid checkpoint id")
        fails("verify", bad, expect="invalid checkpoint id")
    fails("run", "--name", "../evil", "--", "true", expect="invalid session name")
    fails("run", "--name", "ghost", "--", "no-such-command-xyz", expect="not found")

    # A checkpoint with one flipped byte in a refs file is refused, naming the file.
    agent.run_session("victim", "sh", "-c", "while :; do sleep 0.2; done")
    checkpoint = agent.json("checkpoint", "victim")["checkpoint"]
    refs = max(glob.glob(os.path.join(agent.checkpoint_dir(checkpoint["id"]), "pages-*.refs")),
               key=os.path.getsize)
    flip_byte(refs, os.path.getsize(refs) // 2)
    err = fails("restore", checkpoint["id"], expect=os.path.basename(refs))
    assert "damaged" in err
    fails("verify", checkpoint["id"], expect=os.path.basename(refs))
    fails("restore", checkpoint["id"], "--lazy", expect=os.path.basename(refs))
    flip_byte(refs, os.path.getsize(refs) // 2)  # repaired

    # A flipped byte in the page store itself: the page is never served, and the error says where.
    segment = max(glob.glob(os.path.join(agent.state_dir, "pages", "seg-*.pack")), key=os.path.getsize)
    flip_byte(segment, 100)  # inside the first record's bytes
    err = fails("verify", checkpoint["id"], expect="is damaged in")
    assert os.path.basename(segment) in err
    err = fails("restore", checkpoint["id"], expect="is damaged in")
    flip_byte(segment, 100)
    assert agent.sessions()["victim"]["state"] == "checkpointed", "nothing was restored"
    store = os.path.join(agent.state_dir, "checkpoints")
    assert sorted(os.listdir(store)) == [checkpoint["id"]], "no half-written directories"
    lock_table = checkpoint["network_lock_table"]
    assert lock_table.startswith("inet CRIU-"), checkpoint
    assert lock_table in nft_tables(), "CRIU keeps the dumped connections locked until restore"
    agent.cli("rm", checkpoint["id"])
    assert os.listdir(store) == []
    assert lock_table not in nft_tables(), "removing an unrestored checkpoint drops its lock"
    assert agent.json("agent")["page_store"]["unique_pages"] == 0, "rm reclaims the pages only it named"


def test_missing_criu_names_the_bootstrap(agent_factory):
    env = {k: v for k, v in os.environ.items() if k != "ELSA_CRIU"}
    env["PATH"] = "/usr/bin:/bin"  # Debian's broken criu is never installed by the bootstrap
    lonely = agent_factory(criu_prefix="/nonexistent-prefix", env=env)
    lonely.run_session("s", "sh", "-c", "while :; do sleep 0.2; done")
    result = lonely.cli("checkpoint", "s", check=False)
    assert result.returncode != 0
    assert "CRIU not found" in result.stderr and "tools/bootstrap" in result.stderr, result.stderr
    assert lonely.sessions()["s"]["state"] == "running", "a failed checkpoint leaves the session running"
    assert os.listdir(os.path.join(lonely.state_dir, "checkpoints")) == []


def test_the_agent_says_how_to_start_it(bin_dir, tmp_path):
    result = subprocess.run([os.path.join(bin_dir, "elsa"), "--socket", str(tmp_path / "none.sock"), "ps"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "elsad --daemon" in result.stderr

