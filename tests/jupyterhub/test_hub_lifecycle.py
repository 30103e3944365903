"""Stop -> checkpoint, start -> restore, across a hub restart; the idle culler's stop is the same
call (DELETE /hub/api/users/NAME/server with the culler's scopes: jupyterhub-idle-culler is not
packaged by Debian, so the test makes the very request it makes)."""

import json
import time

from hubstack import CULLER_TOKEN, open_kernel


def progress_events(stack, user, timeout=120):
    """The hub's progress stream for a pending server (what the spawn page shows)."""
    r = stack.api("GET", f"/hub/api/users/{user}/server/progress", user=user, stream=True, timeout=timeout)
    events = []
    for line in r.iter_lines(decode_unicode=True):
        if line.startswith("data:"):
            events.append(json.loads(line[5:]))
            if events[-1].get("ready") or events[-1].get("failed"):
                break
    return events


def test_stop_checkpoints_and_start_restores_across_a_hub_restart(stack):
    user, session = "bob", "jh-bob"
    srv = stack.start_server(user, {"host": "h1"})
    assert stack.where(session) == "h1"
    state = stack.hub_server(user)["state"]
    assert state["host"] == "h1" and state.get("resume_token"), state

    browser = stack.login(user)
    k = open_kernel(stack, browser, user)
    k.execute("import os, numpy as np\nsecret = 'kept-' + str(6 * 7)\npid_before = os.getpid()\n"
              "arr = np.ones(32 * 2**20 // 8)")  # enough memory that restoring it takes a moment
    kernel_id = k.kernel_id
    k.close()

    # The culler's call: the hub stops the server, ElsaSpawner checkpoints it.
    r = stack.api("DELETE", f"/hub/api/users/{user}/server", token=CULLER_TOKEN)
    assert r.status_code in (202, 204), r.text
    deadline = time.monotonic() + 120
    while stack.hub_server(user) is not None:
        assert time.monotonic() < deadline, "the server did not stop"
        time.sleep(0.3)
    assert stack.where(session) is None, "a stopped server must not run anywhere"
    cps = [c for c in stack.agents["h1"].json("checkpoints") if c["session"] == session]
    assert cps, "stopping must have checkpointed the server on h1"
    newest = max(cps, key=lambda c: c["created_at"])

    stack.restart_hub()
    state = stack.api("GET", f"/hub/api/users/{user}", user="admin").json()
    assert state["servers"] == {}, "after the restart the hub still knows the server is stopped"

    # Start: the newest checkpoint is restored (the hub's progress stream shows the agent's phases).
    r = stack.api("POST", f"/hub/api/users/{user}/server", user=user, json_body={})
    assert r.status_code in (201, 202), r.text
    events = progress_events(stack, user)
    assert events and events[-1].get("ready"), events
    phases = [e.get("phase") for e in events]
    assert "verify" in phases and "restore" in phases, phases
    assert any(e.get("bytes") for e in events), "restore progress carries the agent's byte counts"
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events), "progress never goes back"
    assert stack.where(session) == "h1"
    restored = stack.agents["h1"].sessions()[session]
    assert restored["restored_from"] == newest["id"]

    # The same kernel, with its variables; the restored server still authenticates the browser
    # (will_resume kept its API token and OAuth client).
    browser = stack.login(user)
    k = open_kernel(stack, browser, user, kernel_id=kernel_id)
    try:
        assert k.eval("secret") == "'kept-42'"
        assert k.eval("os.getpid() == pid_before") == "True"
    finally:
        k.close()

    # A fresh start on request: new state, and the old token is revoked.
    stack.api("DELETE", f"/hub/api/users/{user}/server", user="admin")
    deadline = time.monotonic() + 120
    while stack.hub_server(user) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    stack.start_server(user, {"fresh": True, "host": "h2"})
    assert stack.where(session) == "h2"
    assert stack.agents["h2"].sessions()[session]["restored_from"] == "", "fresh means not restored"


def test_checkpoint_after_stops_idle_servers_into_checkpoints(stack):
    """elsa-hub-service's --checkpoint-after round (the culler's job where Debian has no culler),
    run here with the culler's token and scopes against the live hub."""
    import asyncio
    import sys

    from hubstack import PKG, HUB_PORT

    sys.path.insert(0, PKG)
    from elsa_jupyterhub import config as elsa_config
    from elsa_jupyterhub.hub import HubClient
    from elsa_jupyterhub.operations import Operations
    from elsa_jupyterhub.service import checkpoint_idle_round

    user = "hana"
    stack.start_server(user, {"host": "h2"})
    hub = HubClient(f"http://{stack.h3}:{HUB_PORT}/hub/api", CULLER_TOKEN)
    ops = Operations(elsa_config.load(stack.elsa_config), None, hub)
    asyncio.run(checkpoint_idle_round(ops, 3600))
    assert stack.hub_server(user) is not None, "not idle for an hour: left running"
    time.sleep(4)
    asyncio.run(checkpoint_idle_round(ops, 3))
    deadline = time.monotonic() + 60
    while stack.hub_server(user) is not None:
        assert time.monotonic() < deadline, "the idle server was not stopped"
        time.sleep(0.3)
    assert stack.where("jh-hana") is None
    assert any(c["session"] == "jh-hana" for c in stack.agents["h2"].json("checkpoints")), "it was checkpointed"
    stack.start_server(user)
    assert stack.where("jh-hana") == "h2" and stack.agents["h2"].sessions()["jh-hana"]["restored_from"]
