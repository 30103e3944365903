"""The migration API with a real jupyter-server checkpointed and restored by elsad (CRIU):
200 kernel websockets held open by elsa-proxy across pause -> checkpoint -> restore -> resume,
each executing cells in a loop. No browser-side close, every execute_request gets exactly one
execute_reply, in order, with the right value (the kernels' state survives the restore)."""

import asyncio
import json
import os
import sys
import tempfile
import urllib.request
import uuid

import pytest
import websockets

from proxy_util import REPO

sys.path.insert(0, os.path.join(REPO, "tools", "pylib"))
from elsa_agent import ElsaAgent  # noqa: E402
from elsa_jupyter import JupyterServer, free_port  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = 10
SOCKETS = 200
TOKEN = "elsa-proxy-test"  # the Jupyter server's
PROXY_TOKEN = "proxy-api-token"


@pytest.fixture
def agent():
    if os.geteuid() != 0:
        pytest.fail("this test checkpoints a session with CRIU: run it as root")
    bin_dir = os.environ.get("ELSA_BIN_DIR", os.path.join(REPO, "build", "engine"))
    if not os.path.exists(os.path.join(bin_dir, "elsad")):
        pytest.fail(f"no elsad in {bin_dir}: build the engine first, or set ELSA_BIN_DIR")
    with ElsaAgent(bin_dir, criu_prefix=os.environ.get("ELSA_CRIU_PREFIX")) as a:
        yield a


class Client:
    """One kernel websocket running `n_<id> += 1` in a loop; checks every reply."""

    def __init__(self, index, url, kernel):
        self.index, self.url, self.kernel = index, url, kernel
        self.session = uuid.uuid4().hex
        self.done = 0
        self.errors = []
        self.closed_early = None

    def request(self):
        msg_id = uuid.uuid4().hex
        var = f"n_{self.index}"
        return msg_id, json.dumps({
            "header": {"msg_id": msg_id, "username": "t", "session": self.session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": f"{var} = globals().get('{var}', 0) + 1", "silent": True,
                        "store_history": False, "user_expressions": {"v": var},
                        "allow_stdin": False, "stop_on_error": False}})

    async def run(self, stop):
        ws = await websockets.connect(
            f"{self.url}/api/kernels/{self.kernel}/channels?session_id={self.session}",
            extra_headers={"Authorization": f"token {TOKEN}"}, max_size=None, open_timeout=60,
            ping_interval=None)
        try:
            while not stop.is_set():
                msg_id, text = self.request()
                await ws.send(text)
                while True:
                    frame = await ws.recv()
                    if '"execute_reply"' not in frame:
                        continue  # iopub status of this and the kernel's other clients
                    reply = json.loads(frame)
                    if reply.get("msg_type") != "execute_reply":
                        continue
                    parent = reply["parent_header"].get("msg_id")
                    if parent != msg_id:
                        self.errors.append(f"reply to {parent}, expected {msg_id} (duplicate or out of order)")
                        continue
                    value = reply["content"].get("user_expressions", {}).get("v", {}).get("data", {}).get("text/plain")
                    if reply["content"]["status"] != "ok" or value != str(self.done + 1):
                        self.errors.append(f"request {self.done + 1}: {reply['content'].get('status')} {value!r}")
                    self.done += 1
                    break
        except websockets.ConnectionClosed as e:
            self.closed_early = f"closed with {e.code} {e.reason!r} after {self.done} executions"
        finally:
            await ws.close()


def api(port, method, path, body=None, token=TOKEN, timeout=120):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


async def wait_until(predicate, timeout, what):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_200_kernel_websockets_survive_pause_checkpoint_restore_resume(agent, proxy_factory):
    with tempfile.TemporaryDirectory(prefix="elsa-proxy-nb-") as workdir:
        port = free_port()
        agent.run_session("nb", "/usr/bin/python3", os.path.join(HERE, "jupyter_many_sockets.py"),
                          "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.token={TOKEN}", "--no-browser",
                          "--allow-root", "--ServerApp.port_retries=0", workdir=workdir)
        server = JupyterServer("127.0.0.1", port, TOKEN)
        server.wait_ready(timeout=60)
        proxy = proxy_factory("elsa", token=PROXY_TOKEN, extra=["--ws-idle-timeout", "120000"])
        proxy.add_route("/", f"http://127.0.0.1:{server.port}")
        url = f"ws://127.0.0.1:{proxy.port}"
        kernels = [api(proxy.port, "POST", "/api/kernels", {"name": "python3"})["id"] for _ in range(KERNELS)]
        clients = [Client(i, url, kernels[i % KERNELS]) for i in range(SOCKETS)]

        async def scenario():
            stop = asyncio.Event()
            tasks = [asyncio.create_task(c.run(stop)) for c in clients]
            try:
                await wait_until(lambda: all(c.done >= 2 for c in clients) or any(t.done() for t in tasks),
                                 120, "every websocket to execute twice")
                ended = [(c.index, c.closed_early, t.exception() if t.done() else None)
                         for c, t in zip(clients, tasks) if t.done()]
                assert not ended, (f"websockets ended before the pause: {ended[:5]}\n{proxy.log()[-2000:]}\n"
                                   f"{agent.cli('logs', 'nb', check=False).stdout[-5000:]}")
                # The route's backend websockets are closed cleanly (after in-flight replies);
                # the browsers' stay open and what they send now is held.
                paused = await asyncio.to_thread(api, proxy.api_port, "POST", "/api/migration/pause/",
                                                 {"quiet_ms": 300, "quiet_max_ms": 20000}, PROXY_TOKEN)
                assert paused["state"] == "paused" and paused["websockets"] == SOCKETS, paused
                assert paused["cut"] == 0, paused
                before = {c.index: c.done for c in clients}
                checkpoint = (await asyncio.to_thread(agent.json, "checkpoint", "nb"))["checkpoint"]
                await asyncio.to_thread(agent.json, "restore", checkpoint["id"])
                resumed = await asyncio.to_thread(api, proxy.api_port, "POST", "/api/migration/resume/",
                                                  {"timeout_ms": 60000}, PROXY_TOKEN)
                assert resumed["reconnected"] == SOCKETS and resumed["failed"] == 0, resumed
                await wait_until(lambda: all(c.done >= before[c.index] + 2 for c in clients)
                                 or any(t.done() for t in tasks), 120, "every websocket to execute after the resume")
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
            for t in tasks:
                if t.exception():
                    raise t.exception()

        asyncio.run(scenario())
        closed = [f"#{c.index}: {c.closed_early}" for c in clients if c.closed_early]
        assert not closed, (f"{len(closed)} browser websockets closed: {closed[:5]}\n{proxy.log()[-3000:]}\n"
                            f"jupyter-server: {agent.cli('logs', 'nb', check=False).stdout[-6000:]}")
        errors = [f"#{c.index}: {e}" for c in clients for e in c.errors]
        assert not errors, errors[:10]
        assert all(c.done >= 4 for c in clients)
        assert "could not reconnect" not in proxy.log()
