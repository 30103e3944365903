"""Store-backed checkpoints of a real Jupyter session: incremental checkpoints that write only
what changed, removal that keeps what others still use, and lazy restore (`elsa restore --lazy`:
the session runs before its memory is in, pages served from the store to `criu lazy-pages`)."""

import threading
import time

from elsa_agent import start_jupyter
from test_checkpoint_restore import ARRAY_MIB, assert_state, set_state

CHANGE_ONE_PERCENT = """
arr[: arr.size // 100] += 1.0
x = 43
digest2 = hashlib.sha256(arr.tobytes()).hexdigest()
"""


def kernel_eval(server, kernel, expr):
    server.wait_ready(timeout=30)
    conn = server.connect(kernel, session_id="e2e-session")
    try:
        return conn.eval(expr)
    finally:
        conn.close()


def checkpoint_bytes(checkpoint):
    """What a checkpoint added to the disk: its image files plus the pages new to the store."""
    return checkpoint["size_bytes"] + checkpoint["pages"]["new"] * 4096


def test_incremental_checkpoint_writes_only_what_changed(agent, workdir):
    server = start_jupyter(agent, "inc", workdir)
    kernel = set_state(server)
    first = agent.json("checkpoint", "inc", "--leave-running")["checkpoint"]
    assert first["pages"]["new"] * 4096 > ARRAY_MIB * 1024 * 1024

    conn = server.connect(kernel, session_id="e2e-session")
    assert conn.execute(CHANGE_ONE_PERCENT, timeout=60)["status"] == "ok"
    conn.close()
    second = agent.json("checkpoint", "inc", "--leave-running")["checkpoint"]
    ratio = checkpoint_bytes(second) / checkpoint_bytes(first)
    print(f"first checkpoint {checkpoint_bytes(first)} B, second {checkpoint_bytes(second)} B ({ratio:.2%})")
    assert ratio < 0.05, "1% of the array changed: the second checkpoint adds at most a few percent"
    assert second["pages"]["count"] >= first["pages"]["count"] * 0.95, "both checkpoints are complete"

    # Each restores to its own state.
    agent.cli("stop", "inc")
    agent.json("restore", second["id"])
    assert kernel_eval(server, kernel, "x") == "43"
    assert kernel_eval(server, kernel, "hashlib.sha256(arr.tobytes()).hexdigest() == digest2") == "True"
    agent.cli("stop", "inc")
    agent.json("restore", first["id"])
    assert_state(server, kernel)
    agent.cli("stop", "inc")

    # Deleting the first keeps every page the second needs.
    removed = agent.json("rm", first["id"])
    assert removed["page_store"]["bytes_reclaimed"] > 0, "pages only the first named are reclaimed"
    assert agent.json("verify", second["id"])["id"] == second["id"]
    agent.json("restore", second["id"])
    assert kernel_eval(server, kernel, "x + 1") == "44"
    assert kernel_eval(server, kernel, "hashlib.sha256(arr.tobytes()).hexdigest() == digest2") == "True"
    assert agent.json("gc")["bytes_reclaimed"] == 0, "nothing left to reclaim"


def test_lazy_restore_runs_before_its_memory_is_in(agent, workdir):
    server = start_jupyter(agent, "lazy", workdir)
    kernel = set_state(server)
    checkpoint = agent.json("checkpoint", "lazy")["checkpoint"]

    restored = agent.json("restore", checkpoint["id"], "--lazy")
    assert restored["lazy"]
    assert restored["pages"]["lazy"] * 4096 > ARRAY_MIB * 1024 * 1024, "the array arrives lazily"
    assert restored["pages"]["materialized"] < restored["pages"]["lazy"] / 10
    assert_state(server, kernel)

    deadline = time.time() + 120
    while agent.sessions()["lazy"]["lazy"]["paging_in"]:
        assert time.time() < deadline, "the background transfer never finished"
        time.sleep(0.2)
    lazy = agent.sessions()["lazy"]["lazy"]
    assert lazy["error"] == "", lazy
    assert lazy["pages_served"] == restored["pages"]["lazy"], "every lazy page, each exactly once"
    assert_state(server, kernel)
    # A lazily restored session checkpoints again like any other.
    again = agent.json("checkpoint", "lazy", "--leave-running")["checkpoint"]
    assert again["pages"]["new"] < again["pages"]["count"] / 20


# A session holding 1 GiB of memory no other checkpoint shares (every page distinct).
FRESH_GIB = """
import sys, time
b = bytearray(1 << 30)
for i in range(0, len(b), 4096):
    b[i:i + 8] = (i + 1).to_bytes(8, "little")
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_gc_during_a_checkpoint_keeps_its_pages(agent, workdir):
    """`elsa gc` while `elsa checkpoint --leave-running` is still writing: collection waits for
    the checkpoint to commit, then counts it, so none of its pages is reclaimed (it used to list
    the committed checkpoints first and delete the new one's pages: verify then failed)."""
    agent.run_session("big", "/usr/bin/python3", "-c", FRESH_GIB, workdir=workdir)
    deadline = time.time() + 120
    while "ready" not in agent.cli("logs", "big").stdout:
        assert time.time() < deadline, "the session never filled its memory"
        time.sleep(0.2)
    result = {}

    def checkpoint():
        result["checkpoint"] = agent.json("checkpoint", "big", "--leave-running")["checkpoint"]

    writer = threading.Thread(target=checkpoint)
    writer.start()
    time.sleep(0.4)
    collected = agent.json("gc")
    writer.join(timeout=300)
    assert "checkpoint" in result, "the checkpoint did not finish"
    made = result["checkpoint"]
    assert made["pages"]["new"] * 4096 >= 1 << 30, made["pages"]
    assert collected["bytes_reclaimed"] == 0, f"gc reclaimed pages while a checkpoint was being written: {collected}"
    assert agent.json("verify", made["id"])["id"] == made["id"]
    agent.cli("stop", "big")
