"""Store-backed checkpoints of a real Jupyter session: incremental checkpoints that write only
what changed, removal that keeps what others still use, and lazy restore (`elsa restore --lazy`:
the session runs before its memory is in, pages served from the store to `criu lazy-pages`)."""

import glob
import json
import os
import struct
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


# A session whose memory comes in marked, incompressible regions: each page of region R starts
# with b"ELSA-R" (so its record can be found in the page store) and is random after that. It adds
# a region when `phase` in its working directory names it; "C" also unmaps B, so the checkpoint
# after it names A and C but not B.
MARKED_REGIONS = """
import mmap, os, sys, time
regions = {}
def fill(name):
    m = mmap.mmap(-1, 16 << 20)
    for at in range(0, len(m), 4096):
        m[at:at + 4096] = b"ELSA-" + name.encode() + os.urandom(4090)
    regions[name] = m
fill("A")
print("A ready", flush=True)
done = {"A"}
while True:
    try:
        want = open("phase").read().strip()
    except OSError:
        want = ""
    if want and want not in done:
        if want == "C":
            regions.pop("B").close()
        fill(want)
        done.add(want)
        print(want + " ready", flush=True)
    time.sleep(0.05)
"""

RECORD_MAGIC, PADDING_MAGIC, RAW_PAGE = 0x31475045, 0x44415045, 2


def records_of(segment):
    """(offset, flags, first bytes of the data) of every record in a page-store segment, in order
    (page-server/src/page_store.cc: a 40-byte header, then the stored bytes)."""
    out = []
    with open(segment, "rb") as f:
        data = f.read()
    at = 0
    while at + 40 <= len(data):
        magic, length = struct.unpack_from("<II", data, at)
        if magic not in (RECORD_MAGIC, PADDING_MAGIC):
            break
        if magic == RECORD_MAGIC:
            flags = struct.unpack_from("<I", data, at + 24)[0]
            out.append((at, flags, data[at + 40:at + 46]))
        at += 40 + length
    return out


def wait_for_output(agent, name, line):
    deadline = time.time() + 60
    while line not in agent.cli("logs", name).stdout:
        assert time.time() < deadline, f"session {name} never printed {line!r}"
        time.sleep(0.05)


def test_verify_names_exactly_the_checkpoints_that_lost_a_page(agent, workdir):
    """One damaged record in the middle of the page store costs only the pages stored there:
    after the agent reopens the store, `elsa verify` (all checkpoints) names the one checkpoint
    that needed that page, and the later checkpoint whose pages follow it in the segment restores
    (the store used to cut the segment off at the damage, losing every page after it)."""
    agent.run_session("marked", "/usr/bin/python3", "-c", MARKED_REGIONS, workdir=workdir)
    wait_for_output(agent, "marked", "A ready")
    made = [agent.json("checkpoint", "marked", "--leave-running")["checkpoint"]["id"]]
    for phase in ("B", "C"):
        with open(os.path.join(workdir, "phase"), "w") as f:
            f.write(phase)
        wait_for_output(agent, "marked", f"{phase} ready")
        made.append(agent.json("checkpoint", "marked", "--leave-running")["checkpoint"]["id"])
    first, with_b, with_c = made
    agent.cli("stop", "marked")
    agent.proc.terminate()
    agent.proc.wait(timeout=20)

    segments = sorted(glob.glob(os.path.join(agent.state_dir, "**", "seg-*.pack"), recursive=True))
    assert len(segments) == 1, f"the pages fit one segment: {segments}"
    records = records_of(segments[0])
    only_b = [r for r in records if r[1] & RAW_PAGE and r[2] == b"ELSA-B"]
    after = [r for r in records if r[2] == b"ELSA-C"]
    assert len(only_b) == 4096, f"every page of B is stored raw, once: {len(only_b)}"
    assert after and after[0][0] > only_b[-1][0], "C's pages follow B's in the segment"
    damaged_at = only_b[len(only_b) // 2][0] + 40 + 100
    with open(segments[0], "r+b") as f:
        f.seek(damaged_at)
        byte = f.read(1)
        f.seek(damaged_at)
        f.write(bytes([byte[0] ^ 0xFF]))

    agent.start()
    result = agent.cli("--json", "verify", check=False)
    assert result.returncode == 1, f"a damaged checkpoint fails verification: {result}"
    verdicts = json.loads(result.stdout)
    assert verdicts["damaged"] == [with_b], verdicts
    assert {c["id"] for c in verdicts["checkpoints"]} == set(made)
    assert "damaged" in agent.agent_log(), "the agent says what it found on opening the store"
    lost = next(c for c in verdicts["checkpoints"] if c["id"] == with_b)["error"]
    assert lost.startswith("1 of the "), lost
    plain = agent.cli("verify", check=False)
    assert plain.returncode == 1 and with_b in plain.stderr and "1 of 3 checkpoints are damaged" in plain.stderr

    single = agent.cli("verify", with_b, check=False)
    assert single.returncode == 1 and "1 of the" in single.stderr, single
    assert agent.json("verify", with_c)["id"] == with_c
    assert agent.json("verify", first)["id"] == first
    restored = agent.json("restore", with_c)
    assert restored["session"]["name"] == "marked"
    agent.cli("stop", "marked")
