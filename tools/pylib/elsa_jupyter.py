"""A small, dependency-light client for a Jupyter server's REST API and kernel websocket.

Used by the demo and the end-to-end tests. It speaks the Jupyter messaging protocol over
`/api/kernels/<id>/channels?session_id=<sid>` (JSON frames) with Debian's websocket-client,
and the REST API with urllib. Errors raise JupyterError with what went wrong.
"""

import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import websocket  # python3-websocket (websocket-client)


class JupyterError(RuntimeError):
    pass


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class JupyterServer:
    """A Jupyter server reachable at http://host:port with a token."""

    def __init__(self, host, port, token, prefix=""):
        """`prefix`: the server's base_url without its trailing slash (e.g. "/user/alice"),
        for a server behind a proxy route."""
        self.host, self.port, self.token, self.prefix = host, port, token, prefix
        self.base = f"http://{host}:{port}{prefix}"

    def _request(self, method, path, body=None, timeout=10):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"token {self.token}")
        req.add_header("Connection", "close")  # no idle keep-alive sockets across a checkpoint
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                text = resp.read()
                return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            raise JupyterError(f"{method} {path}: HTTP {e.code}: {e.read()[:200]!r}") from e
        except (urllib.error.URLError, OSError) as e:
            raise JupyterError(f"{method} {path}: {e}") from e

    def status(self, timeout=5):
        return self._request("GET", "/api/status", timeout=timeout)

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                return self.status(timeout=2)
            except JupyterError as e:
                last = e
                time.sleep(0.2)
        raise JupyterError(f"Jupyter server at {self.base} not ready after {timeout}s: {last}")

    def start_kernel(self, name="python3"):
        return self._request("POST", "/api/kernels", {"name": name})["id"]

    def kernels(self):
        return self._request("GET", "/api/kernels")

    def connect(self, kernel_id, session_id=None, timeout=30):
        return KernelConnection(self, kernel_id, session_id or uuid.uuid4().hex, timeout)


class KernelConnection:
    """One kernel websocket. execute() runs code and returns its text output and result."""

    def __init__(self, server, kernel_id, session_id, timeout):
        self.kernel_id, self.session_id = kernel_id, session_id
        url = (f"ws://{server.host}:{server.port}{server.prefix}/api/kernels/{kernel_id}/channels"
               f"?session_id={session_id}")
        try:
            self.ws = websocket.create_connection(
                url, header=[f"Authorization: token {server.token}"], timeout=timeout)
        except (websocket.WebSocketException, OSError) as e:
            raise JupyterError(f"cannot open kernel websocket {url}: {e}") from e

    def _message(self, msg_type, content, channel="shell"):
        return {
            "header": {"msg_id": uuid.uuid4().hex, "username": "elsa", "session": self.session_id,
                       "msg_type": msg_type, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "content": content, "channel": channel,
            "buffers": [],
        }

    def execute(self, code, timeout=60):
        """Runs `code`; returns {"status", "stdout", "result", "error"} once the kernel is idle."""
        msg = self._message("execute_request", {
            "code": code, "silent": False, "store_history": True, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": True})
        msg_id = msg["header"]["msg_id"]
        self.ws.send(json.dumps(msg))
        out = {"status": None, "stdout": "", "result": None, "error": None}
        got_reply = got_idle = False
        deadline = time.monotonic() + timeout
        while not (got_reply and got_idle):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JupyterError(f"no reply to execute_request within {timeout}s: {code[:60]!r}")
            self.ws.settimeout(remaining)
            try:
                frame = self.ws.recv()
            except (websocket.WebSocketException, OSError) as e:
                raise JupyterError(f"kernel websocket failed: {e}") from e
            reply = json.loads(frame)
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = reply["msg_type"], reply["content"]
            if kind == "stream":
                out["stdout"] += content.get("text", "")
            elif kind in ("execute_result", "display_data"):
                out["result"] = content["data"].get("text/plain")
            elif kind == "error":
                out["error"] = f"{content.get('ename')}: {content.get('evalue')}"
            elif kind == "execute_reply":
                out["status"] = content["status"]
                got_reply = True
            elif kind == "status" and content.get("execution_state") == "idle":
                got_idle = True
        return out

    def eval(self, expression, timeout=60):
        """The text/plain value of an expression; raises on a kernel error."""
        out = self.execute(expression, timeout)
        if out["status"] != "ok":
            raise JupyterError(f"{expression!r} failed in the kernel: {out['error']}")
        return out["result"]

    def close(self):
        try:
            self.ws.close()
        except (websocket.WebSocketException, OSError):
            pass


class CellLoop(threading.Thread):
    """Runs `i += 1; i` every 100 ms on one kernel connection (the kernel holds `i`), as a user
    working through a migration would; every reply must be the next i. Records each cell's start
    and wait (`latencies`), the values (`results`) and what went wrong (`errors`)."""

    def __init__(self, conn):
        super().__init__(daemon=True)
        self.conn = conn
        self.stop = threading.Event()
        self.results, self.errors, self.latencies = [], [], []

    def run(self):
        expected = int(self.conn.eval("i")) + 1
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                value = int(self.conn.eval("i += 1; i", timeout=120))
            except Exception as e:  # noqa: BLE001 - recorded; the caller fails on it
                self.errors.append(f"{time.monotonic():.3f}: {e}")
                return
            self.latencies.append((started, time.monotonic() - started))
            if value != expected:
                self.errors.append(f"cell returned {value}, expected {expected}")
            self.results.append(value)
            expected += 1
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
