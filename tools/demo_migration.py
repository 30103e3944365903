"""The live-migration half of the demo: a Jupyter session on simulated host h1, behind
elsa-proxy on h3, with a client executing a cell every 100 ms through the proxy; the session
moves to h2 (elsa migrate) while the proxy holds the client's websocket open; the client's cells
keep returning the right results; the timeline is printed.

Called by tools/demo.py; everything it starts is ended, and the hosts removed, even on failure.
"""

import json
import os
import secrets
import subprocess
import tempfile
import time
import urllib.request

from elsa_agent import ElsaAgent, start_jupyter
from elsa_hosts import SimulatedHosts
from elsa_jupyter import CellLoop, JupyterServer

JUPYTER_PORT = 8888
PROXY_PORT, PROXY_API_PORT = 8000, 8001
PEER_PORT = 7077
ELSA_CA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "elsa-ca")
ROUTE = "/user/bob"


class ProxyOnHost:
    """elsa-proxy in a host's network namespace; its API on that host's loopback."""

    def __init__(self, binary, hosts, host):
        self.hosts, self.host = hosts, host
        self.token = secrets.token_hex(16)
        self.log = tempfile.NamedTemporaryFile(prefix="elsa-proxy-", suffix=".log", delete=False)
        env = dict(os.environ, CONFIGPROXY_AUTH_TOKEN=self.token)
        self.proc = subprocess.Popen(hosts.exec_prefix(host) + [
            binary, "--ip", hosts.address(host), "--port", str(PROXY_PORT), "--api-ip", "127.0.0.1",
            "--api-port", str(PROXY_API_PORT)], stdout=self.log, stderr=self.log, env=env, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                self.api("GET", "/api/routes")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"elsa-proxy did not start; log: {self.log.name}")
                time.sleep(0.1)

    def api(self, method, path, body=None):
        req = urllib.request.Request(f"http://127.0.0.1:{PROXY_API_PORT}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Authorization", f"token {self.token}")
        with self.hosts.inside(self.host), urllib.request.urlopen(req, timeout=60) as r:
            text = r.read()
        return json.loads(text) if text else None

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)


def run(step, show, bin_dir, proxy_bin, array_mib):
    """Runs the migration demo; returns a summary line."""
    hosts = SimulatedHosts(3, prefix="edemo", subnet=77)
    with hosts, tempfile.TemporaryDirectory(prefix="elsa-demo-") as tmp:
        # Each agent proves itself with a certificate from the fleet's CA; the pages cross in TLS 1.3.
        ca_dir = os.path.join(tmp, "elsa-ca")
        for cmd in (["init", ca_dir], *(["issue", ca_dir, h, "--peer", "--ip", hosts.address(h)] for h in ("h1", "h2"))):
            subprocess.run([ELSA_CA, *cmd], check=True, capture_output=True, text=True)

        def agent(host):
            return ElsaAgent(bin_dir, netns=hosts.netns(host), extra_args=[
                "--listen", f"{hosts.address(host)}:{PEER_PORT}", "--peer-cert", os.path.join(ca_dir, f"{host}.crt"),
                "--peer-key", os.path.join(ca_dir, f"{host}.key"), "--peer-ca", os.path.join(ca_dir, "ca.crt")])

        with step("three simulated hosts: h1 and h2 run elsad (mutual TLS between them, certificates from "
                  "tools/elsa-ca), h3 runs elsa-proxy (the hub's proxy)"):
            hosts.shape("10gbit")
            a1, a2 = agent("h1").start(), agent("h2").start()
            proxy = ProxyOnHost(proxy_bin, hosts, "h3")
        try:
            with step(f"a Jupyter server on h1 behind the proxy at {ROUTE}; a client on h3 sets state"):
                with hosts.inside("h1"):
                    start_jupyter(a1, "bob", tmp, host="0.0.0.0", port=JUPYTER_PORT, prefix=ROUTE)
                proxy.api("POST", "/api/routes" + ROUTE, {"target": f"http://{hosts.address('h1')}:{JUPYTER_PORT}"})
                via_proxy = JupyterServer(hosts.address("h3"), PROXY_PORT, "elsa-demo-token", ROUTE)
                with hosts.inside("h3"):
                    kernel = via_proxy.start_kernel()
                    conn = via_proxy.connect(kernel, session_id="demo-browser")
                conn.execute("import hashlib, numpy as np\ni = 0\nx = 41\n"
                             f"arr = np.random.default_rng(7).random({array_mib} * 1024 * 1024 // 8)\n"
                             "digest = hashlib.sha256(arr.tobytes()).hexdigest()", timeout=120)
                digest = conn.eval("digest")
                print(f"    client -> {via_proxy.base} -> h1; x = 41, {array_mib} MiB array, sha256 {digest[1:17]}")

            loop = CellLoop(conn)
            loop.start()
            time.sleep(1.0)
            with step("live-migrate h1 -> h2 while the client runs a cell every 100 ms"):
                # As elsa-hub-service does it: pre-copy while the client works; the route paused
                # at the agent's freeze gate; resumed to h2 once the session runs there, while
                # post-copy still brings what changed.
                t0 = time.monotonic()
                at = {}
                target = f"http://{hosts.address('h2')}:{JUPYTER_PORT}"

                def on_event(event, answer):
                    if event["event"] == "freeze-gate":
                        at["gate"] = time.monotonic()
                        at["drained"] = proxy.api("POST", f"/api/migration/pause{ROUTE}", {}).get("drained", 0)
                        at["paused"] = time.monotonic()
                        answer({"freeze": True})
                    elif event.get("phase") == "running":
                        at["running"] = time.monotonic()
                        at["reconnected"] = proxy.api("POST", f"/api/migration/resume{ROUTE}",
                                                      {"target": target}).get("reconnected", 0)
                        at["resumed"] = time.monotonic()
                reply = a1.api({"op": "migrate", "name": "bob", "to": hosts.address("h2"), "freeze_gate": True},
                               on_event)
                if not reply.get("ok"):
                    raise SystemExit(f"    the migration failed: {reply.get('error')}")
                report = reply["result"]
                t_resumed = at["resumed"]
                ph, pages = report["phases"], report["pages"]
                for r in report["precopy_rounds"]:
                    print(f"    pre-copy round while the client works: {r['pages_scanned']} pages scanned, "
                          f"{r['pages_sent']} sent, {r['seconds']:.3f} s")
                print(f"    freeze gate at {at['gate'] - t0:.3f} s: proxy paused the route in "
                      f"{at['paused'] - at['gate']:.3f} s ({at['drained']} backend websocket closed cleanly; "
                      "the client's stays open)")
                print(f"    freeze + dump {ph['dump_seconds']:.3f} s (without the memory), transfer "
                      f"{ph['transfer_seconds']:.3f} s, restore on h2 {ph['restore_seconds']:.3f} s: "
                      f"session downtime {report['downtime_seconds']:.3f} s")
                print(f"    proxy resumed to h2 in {at['resumed'] - at['running']:.3f} s "
                      f"({at['reconnected']} websocket reconnected, queued cells replayed); "
                      f"the client's route was paused {at['resumed'] - at['paused']:.3f} s")
                print(f"    post-copy: {pages['lazy']} pages followed in {ph['postcopy_seconds']:.3f} s, "
                      f"{pages['postcopy']} sent ({report['bytes']['postcopy'] / 2**20:.1f} MiB, the rest already "
                      f"on h2 from pre-copy), {pages['faulted']} asked for first by the session")
            time.sleep(1.0)
            loop.stop.set()
            loop.join(130)
            with step("the client's cells kept returning the right results; the state is on h2"):
                if loop.errors:
                    raise SystemExit(f"    the client saw: {loop.errors[0]}")
                gaps = [took for started, took in loop.latencies if t0 - 0.2 <= started <= t_resumed]
                print(f"    {len(loop.results)} cells, i = {loop.results[0]}..{loop.results[-1]} in order, "
                      f"none lost; the longest wait for a reply was {max(gaps or [0]):.3f} s")
                same = conn.eval("hashlib.sha256(arr.tobytes()).hexdigest() == digest")
                x1 = conn.eval("x + 1")
                print(f"    x + 1 = {x1}; array checksum matches: {same}")
                if x1 != "42" or same != "True":
                    raise SystemExit("    state was not carried over")
                show(a2.cli("ps").stdout)
                print(f"    h1 runs {len(a1.sessions())} sessions now")
            conn.close()
            return (f"migrated {array_mib} MiB session h1 -> h2 with {report['downtime_seconds']:.2f} s downtime, "
                    f"client connected throughout")
        finally:
            proxy.close()
            a1.close()
            a2.close()
