"""Debian's real JupyterHub 3.0 with c.ConfigurableHTTPProxy.command = elsa-proxy: a user logs in
through the proxy, starts a server, opens a kernel websocket through it and runs code."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests
import websocket

from proxy_util import REPO, SYSTEM_PATH, elsa_proxy_bin, free_port, wait_port

sys.path.insert(0, os.path.join(REPO, "tools", "pylib"))
from elsa_agent import tree_pids as tree  # noqa: E402


@pytest.fixture
def hub(tmp_path):
    if not os.path.exists("/usr/bin/jupyterhub"):
        pytest.fail("/usr/bin/jupyterhub missing: tools/bootstrap installs Debian's jupyterhub")
    port, hub_port, api_port = free_port(), free_port(), free_port()
    (tmp_path / "home").mkdir()
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(f"""
c.JupyterHub.bind_url = 'http://127.0.0.1:{port}'
c.JupyterHub.hub_bind_url = 'http://127.0.0.1:{hub_port}'
c.JupyterHub.authenticator_class = 'jupyterhub.auth.DummyAuthenticator'
c.JupyterHub.spawner_class = 'jupyterhub.spawner.SimpleLocalProcessSpawner'
c.SimpleLocalProcessSpawner.home_dir_template = '{tmp_path}/home/{{username}}'
c.Spawner.args = ['--allow-root']
c.Spawner.default_url = '/api/status'  # no notebook UI needed
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60
c.ConfigurableHTTPProxy.command = ['{elsa_proxy_bin()}']
c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{api_port}'
c.JupyterHub.db_url = 'sqlite:///{tmp_path}/jupyterhub.sqlite'
c.JupyterHub.cookie_secret_file = '{tmp_path}/cookie_secret'
c.JupyterHub.cleanup_servers = True
""")
    log = open(tmp_path / "hub.log", "wb")
    env = dict(os.environ, PATH=SYSTEM_PATH)
    proc = subprocess.Popen(["/usr/bin/jupyterhub", "-f", str(config)], cwd=tmp_path, env=env,
                            stdout=log, stderr=log, start_new_session=True)
    log.close()
    pids = set()
    try:
        wait_port(port, proc, timeout=60, what="jupyterhub (through elsa-proxy)")
        deadline = time.monotonic() + 60  # the hub adds its routes after the proxy is up
        while requests.get(f"http://127.0.0.1:{port}/hub/api", timeout=10).status_code != 200:
            assert time.monotonic() < deadline and proc.poll() is None, "hub not reachable through elsa-proxy"
            time.sleep(0.2)
        pids.update(tree(proc.pid))
        yield {"base": f"http://127.0.0.1:{port}", "log": tmp_path / "hub.log", "pids": pids, "proc": proc}
    finally:
        pids.update(tree(proc.pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in pids:  # the proxy and the user's server, if the hub left them
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def hub_log(hub):
    return hub["log"].read_text(errors="replace")[-4000:]


def test_jupyterhub_login_spawn_and_kernel_websocket_through_elsa_proxy(hub):
    base = hub["base"]
    s = requests.Session()
    r = s.get(base + "/hub/login", timeout=30)
    assert r.status_code == 200, hub_log(hub)
    r = s.post(base + "/hub/login", data={"username": "alice", "password": "pw",
                                          "_xsrf": s.cookies.get("_xsrf", "")},
               allow_redirects=False, timeout=30)
    assert r.status_code == 302 and s.cookies.get("jupyterhub-session-id"), f"login failed: {r.status_code}\n{hub_log(hub)}"
    # Spawning: /hub/spawn starts the server and redirects through spawn-pending to it; the
    # singleuser server's OAuth handshake with the hub also runs through the proxy.
    r = s.get(base + "/hub/spawn", timeout=90)
    deadline = time.monotonic() + 90
    status = None
    while time.monotonic() < deadline:
        hub["pids"].update(tree(hub["proc"].pid))
        # An authenticated page (not /api: that answers 403) runs the OAuth dance with the hub.
        s.get(base + "/user/alice/files/probe", timeout=30)
        r = s.get(base + "/user/alice/api/status", timeout=30)
        if r.status_code == 200 and r.headers.get("content-type", "").startswith("application/json"):
            status = r.json()
            break
        time.sleep(0.5)
    assert status is not None, f"alice's server never answered through the proxy\n{hub_log(hub)}"
    hub["pids"].update(tree(hub["proc"].pid))

    xsrf = s.cookies.get("_xsrf", path="/user/alice/") or s.cookies.get("_xsrf", "")
    r = s.post(base + "/user/alice/api/kernels", json={"name": "python3"},
               headers={"X-XSRFToken": xsrf, "Referer": base + "/user/alice/"}, timeout=60)
    assert r.status_code == 201, f"{r.status_code} {r.text[:300]}"
    kernel = r.json()["id"]

    session = uuid.uuid4().hex
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    ws = websocket.create_connection(
        base.replace("http", "ws") + f"/user/alice/api/kernels/{kernel}/channels?session_id={session}",
        header=[f"Cookie: {cookie}"], timeout=60)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "alice", "session": session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": "6 * 7", "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
        result = reply = None
        # The reply (shell) and the result (iopub) come on different kernel channels: either may
        # be first; a loaded machine shows both orders. Wait for both (ws's 60 s timeout bounds it).
        while reply is None or (result is None and reply == "ok"):
            m = json.loads(ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "execute_result":
                result = m["content"]["data"]["text/plain"]
            elif m["msg_type"] == "execute_reply":
                reply = m["content"]["status"]
        assert reply == "ok" and result == "42"
    finally:
        ws.close()

    # The hub's routes are in elsa-proxy, with the hub's route data kept.
    proxy_log = hub_log(hub)
    assert "ElsaProxy" in proxy_log, "the hub must have started elsa-proxy"
