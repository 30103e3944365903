"""Start elsa-proxy and Debian's configurable-http-proxy for the tests, and talk to their APIs.

Every process started here is ended by close() (the fixtures call it, also on failure).
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHP = "/usr/bin/configurable-http-proxy"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=15, what="server"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port} after {timeout}s")


def raw_request(port, data, read_timeout=10):
    """Sends raw bytes to 127.0.0.1:port; returns everything read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        chunks = []
        try:
            s.sendall(data)
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        except OSError:  # timeout, or a reset once the proxy gave up on us
            pass
        return b"".join(chunks)


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def elsa_proxy_bin():
    path = os.environ.get("ELSA_PROXY_BIN", os.path.join(REPO, "build", "proxy", "elsa-proxy"))
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no elsa-proxy at {path}: build first (cmake --build build), or set ELSA_PROXY_BIN")
    return path


class Proxy:
    """elsa-proxy (kind="elsa") or configurable-http-proxy (kind="chp") on random local ports."""

    def __init__(self, kind="elsa", token="test-token", extra=(), env=None):
        self.kind, self.token = kind, token
        self.port, self.api_port = free_port(), free_port()
        self.log_path = tempfile.mktemp(prefix=f"{kind}-proxy-", suffix=".log")
        if kind == "elsa":
            cmd = [elsa_proxy_bin()]
        else:
            if not os.path.exists(CHP):
                raise RuntimeError(f"{CHP} missing: tools/bootstrap installs node-configurable-http-proxy")
            cmd = [CHP]
        cmd += ["--ip", "127.0.0.1", "--port", str(self.port), "--api-ip", "127.0.0.1",
                "--api-port", str(self.api_port), *extra]
        full_env = dict(os.environ if env is None else env, PATH=SYSTEM_PATH,
                        NODE_PATH="/usr/share/nodejs")
        if token is not None:
            full_env["CONFIGPROXY_AUTH_TOKEN"] = token
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=full_env, start_new_session=True)
        log.close()
        try:
            wait_port(self.port, self.proc, what=kind)
            wait_port(self.api_port, self.proc, what=kind)
        except Exception:
            self.close()
            raise
        self.base = f"http://127.0.0.1:{self.port}"
        self.api_base = f"http://127.0.0.1:{self.api_port}"

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def api(self, method, path, body=None, token="default", raw_body=None, headers=None, timeout=30):
        """(status, parsed JSON or text or None) of an API call."""
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.api_base + path, data=data, method=method)
        tok = self.token if token == "default" else token
        if tok is not None:
            req.add_header("Authorization", f"token {tok}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, text = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        text = text.decode(errors="replace")
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    def add_route(self, path, target, **data):
        status, _ = self.api("POST", "/api/routes" + path, dict(data, target=target))
        assert status == 201, f"adding route {path}: {status}"

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass


class Processes:
    """Background helper processes (backends), all killed at the end."""

    def __init__(self):
        self.procs = []

    def start(self, *cmd, port=None, **kwargs):
        env = dict(os.environ, PATH=SYSTEM_PATH)
        proc = subprocess.Popen(list(cmd), env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        self.procs.append(proc)
        if port:
            wait_port(port, proc, what=cmd[0])
        return proc

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass
                p.wait()
