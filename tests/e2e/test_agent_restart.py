"""An agent killed (`kill -9`) at any moment loses nothing: its sessions run on, each held by its
own monitor (elsa-monitor: output and exit status), and a new elsad on the same state directory
adopts them. Before the monitor, the agent held each session's output pipe: a session writing to
stdout (jupyter-server logs every request) died of SIGPIPE with its agent, and a new agent did
not list the survivors."""

import contextlib
import os
import signal
import threading
import time

from elsa_agent import alive, start_jupyter
from elsa_jupyter import JupyterError
from test_checkpoint_restore import assert_state, set_state
from test_page_store import FRESH_GIB, wait_for_output

QUIET = "import time\nwhile True:\n    time.sleep(1)\n"


def kill_agent(agent):
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait(timeout=20)


def test_sessions_outlive_a_killed_agent_and_a_new_one_adopts_them(agent, workdir):
    server = start_jupyter(agent, "chatty", workdir)
    kernel = set_state(server)
    agent.run_session("quiet", "/usr/bin/python3", "-c", QUIET, workdir=workdir)
    agent.run_session("doomed", "/usr/bin/python3", "-c", QUIET, workdir=workdir)
    before = agent.sessions()
    kill_agent(agent)

    # Without its agent, the chatty one keeps logging: each 404 is a warning on its stderr.
    for i in range(20):
        with contextlib.suppress(JupyterError):
            server._request("GET", f"/api/no-such-thing-{i}")
    server.status()
    time.sleep(0.5)
    for name in ("chatty", "quiet", "doomed"):
        assert alive(before[name]["pid"]), f"{name} died with its agent"
    os.kill(before["doomed"]["pid"], signal.SIGKILL)  # ends while no agent watches
    time.sleep(0.5)

    agent.start()
    now = agent.sessions()
    assert now["chatty"]["state"] == "running" and now["chatty"]["pid"] == before["chatty"]["pid"]
    assert now["quiet"]["state"] == "running" and now["quiet"]["pid"] == before["quiet"]["pid"]
    assert now["quiet"]["uptime_seconds"] >= before["quiet"]["uptime_seconds"] + 1, "its uptime goes on"
    assert now["doomed"]["state"] == "exited", now["doomed"]
    assert now["doomed"]["exit_signal"] == signal.SIGKILL, "its monitor recorded how it ended"
    assert "no-such-thing-19" in agent.cli("logs", "chatty").stdout, "output written while no agent ran is in the log"
    assert_state(server, kernel)

    # The adopted session is a session like any other: checkpoint, stop, restore.
    made = agent.json("checkpoint", "chatty")["checkpoint"]
    agent.json("restore", made["id"])
    assert_state(server, kernel)

    # A restored session outlives its agent too.
    restored_pid = agent.sessions()["chatty"]["pid"]
    kill_agent(agent)
    server.status()
    assert alive(restored_pid)
    agent.start()
    assert agent.sessions()["chatty"]["pid"] == restored_pid
    assert_state(server, kernel)
    agent.cli("stop", "doomed")
    assert "doomed" not in agent.sessions(), "a stopped session is forgotten, also by the next agent"
    kill_agent(agent)
    agent.start()
    assert set(agent.sessions()) == {"chatty", "quiet"}


def test_an_agent_killed_mid_checkpoint_leaves_the_session_running_and_no_half_checkpoint(agent, workdir):
    """The dump's pages flow into the agent: killed mid-dump, CRIU's dump fails and it resumes
    the tree; the new agent adopts the session and lists no checkpoint it cannot restore."""
    agent.run_session("big", "/usr/bin/python3", "-c", FRESH_GIB, workdir=workdir)
    wait_for_output(agent, "big", "ready")
    pid = agent.sessions()["big"]["pid"]
    done = {}

    def checkpoint():
        done["result"] = agent.cli("checkpoint", "big", check=False)

    writer = threading.Thread(target=checkpoint)
    writer.start()
    time.sleep(0.5)
    kill_agent(agent)
    writer.join(timeout=120)
    deadline = time.time() + 30
    while not alive(pid) or _stopped(pid):
        assert time.time() < deadline, "the session did not resume after its checkpoint's agent died"
        time.sleep(0.2)

    agent.start()
    assert agent.sessions()["big"]["state"] == "running"
    assert agent.sessions()["big"]["pid"] == pid
    for checkpoint_info in agent.json("checkpoints"):
        assert agent.json("verify", checkpoint_info["id"])["id"] == checkpoint_info["id"], "a listed checkpoint is whole"
    made = agent.json("checkpoint", "big", "--leave-running")["checkpoint"]
    assert made["pages"]["count"] * 4096 >= 1 << 30


def _stopped(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_a_lazy_restore_whose_agent_dies_is_ended_not_left_with_holes(agent, workdir):
    """A lazily restored session's missing pages come from its agent: if the agent dies first,
    the session would read zeroes where its memory was. Its monitor ends it instead, and says
    why; the checkpoint is intact and restores again."""
    agent.run_session("big", "/usr/bin/python3", "-c", FRESH_GIB, workdir=workdir)
    wait_for_output(agent, "big", "ready")
    made = agent.json("checkpoint", "big")["checkpoint"]
    restored = agent.json("restore", made["id"], "--lazy")
    assert agent.sessions()["big"]["lazy"]["paging_in"], "1 GiB takes longer than this to page in"
    kill_agent(agent)

    deadline = time.time() + 30
    while alive(restored["session"]["pid"]):
        assert time.time() < deadline, "the session with holes runs on without its agent"
        time.sleep(0.1)
    agent.start()
    ended = agent.sessions()["big"]
    assert ended["state"] == "exited"
    assert "the agent died" in ended.get("exit_note", ""), ended
    assert agent.json("verify", made["id"])["id"] == made["id"]
    again = agent.json("restore", made["id"])
    assert again["session"]["name"] == "big"


COUNTER = """
import itertools, time
for i in itertools.count():
    print("tick", i, flush=True)
    time.sleep(0.1)
"""


def ticks(agent, name):
    lines = [line for line in agent.cli("logs", name).stdout.splitlines() if line.startswith("tick ")]
    return int(lines[-1].split()[1]) if lines else -1


def test_an_agent_killed_between_a_checkpoints_dump_and_its_commit_loses_neither(agent, workdir):
    """`elsa checkpoint NAME` (no --leave-running) used to have CRIU kill the tree at the end of
    the dump, before the checkpoint was committed: an agent dying in between lost the session
    (killed) and its checkpoint (dropped as unfinished by the next agent). The tree now stays
    stopped until the commit; the next agent finds it stopped and resumes it."""
    agent.run_session("counter", "/usr/bin/python3", "-c", COUNTER, workdir=workdir)
    wait_for_output(agent, "counter", "tick 3")
    pid = agent.sessions()["counter"]["pid"]
    kill_agent(agent)
    agent.extra_args = ["--test-fault", "die-before-checkpoint-commit"]
    agent.start()
    failed = agent.cli("checkpoint", "counter", check=False)
    assert failed.returncode != 0, "the agent died before the commit"
    agent.proc.wait(timeout=20)
    assert _stopped(pid), "between the dump and the commit the session is stopped, not killed"

    agent.extra_args = []
    agent.start()
    assert agent.sessions()["counter"]["pid"] == pid
    assert agent.json("checkpoints") == [], "the unfinished checkpoint is not listed"
    before = ticks(agent, "counter")
    time.sleep(1)
    assert not _stopped(pid) and ticks(agent, "counter") > before, "the session runs on"
    made = agent.json("checkpoint", "counter")["checkpoint"]
    agent.json("restore", made["id"])
    resumed_at = ticks(agent, "counter")
    time.sleep(1)
    assert ticks(agent, "counter") > resumed_at
