"""A whole deployment for the tests: three simulated hosts, elsad on h1 and h2 (sessions live
there), and on h3 elsa-proxy (external, as the README recommends), Debian's JupyterHub 3.0 with
ElsaSpawner, and elsa-hub-service started by the hub. Everything started here is ended by close(),
also when a test fails."""

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools", "pylib"))
PKG = os.path.join(REPO, "tools", "jupyterhub")

from elsa_agent import ElsaAgent, tree_pids  # noqa: E402
from elsa_hosts import SimulatedHosts  # noqa: E402
import elsa_hub  # noqa: E402

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROXY_PORT, PROXY_API_PORT, HUB_PORT, SERVICE_PORT = 8000, 8001, 8081, 10101
CULLER_TOKEN = secrets.token_hex(16)  # the scopes jupyterhub-idle-culler asks for, see the hub config
USERS = ["admin", "alice", "bob", "carol", "dave", "erin", "frank", "gina", "hana", "ivan", "judy"]


def artifacts_dir():
    d = os.environ.get("ELSA_TEST_ARTIFACTS", os.path.join(REPO, "build", "test-artifacts", "jupyterhub"))
    os.makedirs(d, exist_ok=True)
    return d


class HubStack:
    def __init__(self, bin_dir, proxy_bin, criu_prefix=None, route_check_interval=1, poll_interval=2):
        self.bin_dir, self.proxy_bin, self.criu_prefix = bin_dir, proxy_bin, criu_prefix
        self.route_check_interval, self.poll_interval = route_check_interval, poll_interval
        self.tmp = tempfile.mkdtemp(prefix="elsa-hub-test-")
        pid = os.getpid()
        self.hosts = SimulatedHosts(3, prefix=f"j{pid % 100000}", subnet=10 + pid % 80)
        self.agents, self.procs, self.pids = {}, [], set()
        self.proxy_token = secrets.token_hex(16)
        self.user_tokens = {u: secrets.token_hex(16) for u in USERS}
        self.hub_proc = None
        self._netns = contextlib.ExitStack()

    # Life cycle ------------------------------------------------------------------------------
    def start(self):
        try:
            self.hosts.create()
            # This thread (the tests' client sockets, and threads it starts) lives on h3, next to
            # the hub and the proxy: the hosts' addresses exist only inside their namespaces.
            self._netns.enter_context(self.hosts.inside("h3"))
            secret = os.path.join(self.tmp, "peer-secret")
            with open(secret, "w") as f:
                f.write(secrets.token_hex(24))
            os.chmod(secret, 0o600)
            for h in ("h1", "h2"):
                self.agents[h] = ElsaAgent(self.bin_dir, criu_prefix=self.criu_prefix, netns=self.hosts.netns(h),
                                           extra_args=["--listen", f"{self.hosts.address(h)}:7077",
                                                       "--peer-secret-file", secret]).start()
            self.h3 = self.hosts.address("h3")
            self.base = f"http://{self.h3}:{PROXY_PORT}"
            self.proxy_api = f"http://127.0.0.1:{PROXY_API_PORT}"
            self._spawn("proxy", [self.proxy_bin, "--ip", self.h3, "--port", str(PROXY_PORT), "--api-ip", "127.0.0.1",
                                  "--api-port", str(PROXY_API_PORT), "--error-target",
                                  f"http://{self.h3}:{HUB_PORT}/hub/error"])
            self.write_configs()
            self.start_hub()
        except Exception:
            self.close()
            raise
        return self

    def _spawn(self, name, cmd, env=None):
        log = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        full_env = dict(os.environ if env is None else env, PATH=SYSTEM_PATH, CONFIGPROXY_AUTH_TOKEN=self.proxy_token)
        proc = subprocess.Popen(self.hosts.exec_prefix("h3") + cmd, stdout=log, stderr=log, env=full_env,
                                cwd=self.tmp, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def write_configs(self):
        self.elsa_config = os.path.join(self.tmp, "elsa-hub.json")
        with open(self.elsa_config, "w") as f:
            json.dump({
                "hosts": [
                    {"name": "h1", "socket": self.agents["h1"].socket, "address": self.hosts.address("h1"),
                     "capacity_mib": 2048, "size": "small"},
                    {"name": "h2", "socket": self.agents["h2"].socket, "address": self.hosts.address("h2"),
                     "capacity_mib": 8192, "size": "large"},
                ],
                "state_dir": os.path.join(self.tmp, "elsa-hub"),
                "port_base": 20000,
                "proxy_api_url": self.proxy_api,
                "retention": {"keep": 2, "interval_s": 0},
                # h1 is "small": a server with a 256 MiB array (about 300 MiB) crosses 10% of it.
                "rightsizing": {"threshold": 0.1, "act": False},
            }, f, indent=1)
        tokens = {t: u for u, t in self.user_tokens.items()}
        self.hub_config = os.path.join(self.tmp, "jupyterhub_config.py")
        with open(self.hub_config, "w") as f:
            f.write(f"""
c.JupyterHub.bind_url = {self.base!r}
c.JupyterHub.hub_bind_url = 'http://{self.h3}:{HUB_PORT}'
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = {self.proxy_api!r}
c.ConfigurableHTTPProxy.auth_token = {self.proxy_token!r}
c.JupyterHub.authenticator_class = 'jupyterhub.auth.DummyAuthenticator'
c.Authenticator.admin_users = {{'admin'}}
c.Authenticator.allowed_users = {set(USERS)!r}  # made before their tokens, so they get the 'user' role
c.JupyterHub.api_tokens = {tokens!r}
c.JupyterHub.spawner_class = 'elsa_jupyterhub.ElsaSpawner'
c.ElsaSpawner.config_file = {self.elsa_config!r}
c.ElsaSpawner.poll_interval = {self.poll_interval}
c.Spawner.start_timeout = 120
# Answer spawn requests at once (202) so clients follow the progress stream, as browsers do.
c.JupyterHub.tornado_settings = {{'slow_spawn_timeout': 0}}
c.Spawner.http_timeout = 90
# The hub checks the proxy's routes every last_activity_interval (300 s by default).
c.JupyterHub.last_activity_interval = {self.route_check_interval}
c.JupyterHub.log_level = 'DEBUG'
c.JupyterHub.cleanup_servers = False  # a hub restart leaves the servers running
c.JupyterHub.db_url = 'sqlite:///{self.tmp}/jupyterhub.sqlite'
c.JupyterHub.cookie_secret_file = '{self.tmp}/cookie_secret'
c.JupyterHub.custom_scopes = {{'custom:elsa:admin': {{'description': 'Elsa: act on every user\\'s sessions'}}}}
c.JupyterHub.load_roles = [
    # Users' own API tokens may call the service too (OAuth tokens get this from the login).
    {{'name': 'user', 'scopes': ['self', 'access:services!service=elsa']}},
    {{'name': 'elsa-admin', 'scopes': ['custom:elsa:admin'], 'users': ['admin']}},
    {{'name': 'elsa-service', 'services': ['elsa'],
     'scopes': ['list:users', 'read:users', 'read:servers', 'admin:server_state', 'delete:servers']}},
    {{'name': 'idle-culler', 'services': ['idle-culler'],
     'scopes': ['list:users', 'read:users:activity', 'read:servers', 'delete:servers']}},
]
c.JupyterHub.services = [
    {{'name': 'elsa', 'url': 'http://127.0.0.1:{SERVICE_PORT}', 'oauth_no_confirm': True,
     'oauth_client_allowed_scopes': ['custom:elsa:admin'],
     'command': ['/usr/bin/python3', '-m', 'elsa_jupyterhub.service', '--config', {self.elsa_config!r}],
     'environment': {{'PYTHONPATH': {PKG!r}, 'CONFIGPROXY_AUTH_TOKEN': {self.proxy_token!r}}}}},
    {{'name': 'idle-culler', 'api_token': {CULLER_TOKEN!r}}},
]
""")

    def start_hub(self):
        env = dict(os.environ, PYTHONPATH=PKG)
        self.hub_proc = self._spawn("hub", ["/usr/bin/jupyterhub", "-f", self.hub_config], env=env)
        deadline = time.monotonic() + 90
        while True:
            try:
                if requests.get(self.base + "/hub/api", timeout=5).status_code == 200 and \
                        self.api("GET", "/services/elsa/api/me", user="admin", check=False).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if self.hub_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the hub or elsa-hub-service did not come up:\n{self.hub_log()[-3000:]}")
            time.sleep(0.3)
        self.pids.update(tree_pids(self.hub_proc.pid))

    def stop_hub(self):
        self.pids.update(tree_pids(self.hub_proc.pid))
        self.hub_proc.send_signal(signal.SIGTERM)
        try:
            self.hub_proc.wait(30)
        except subprocess.TimeoutExpired:
            self.hub_proc.kill()
            self.hub_proc.wait()

    def restart_hub(self):
        self.stop_hub()
        self.start_hub()

    def close(self):
        """Never raises: the hub, its service, the proxy, the agents (and their sessions), the hosts."""
        for proc in self.procs:
            try:
                self.pids.update(tree_pids(proc.pid))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(20)
            except Exception:  # noqa: BLE001 - cleanup goes on
                proc.kill()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for a in self.agents.values():
            a.close()
        self._netns.close()
        self.hosts.remove()
        # The logs go with the other artefacts (screenshots, the timeline); the rest goes.
        try:
            for name in os.listdir(self.tmp):
                if name.endswith(".log"):
                    shutil.copy(os.path.join(self.tmp, name), artifacts_dir())
        except OSError:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    # Clients -------------------------------------------------------------------------------------
    def log(self, name):
        try:
            with open(os.path.join(self.tmp, f"{name}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def hub_log(self):
        return self.log("hub")

    def api(self, method, path, user=None, token=None, check=True, json_body=None, timeout=300, **kw):
        """A hub or service API call with a user's API token (path from the proxy's root)."""
        headers = {}
        if user or token:
            headers["Authorization"] = f"token {token or self.user_tokens[user]}"
        r = requests.request(method, self.base + path, headers=headers, json=json_body, timeout=timeout, **kw)
        if check and r.status_code >= 400:
            raise AssertionError(f"{method} {path} as {user}: {r.status_code} {r.text[:500]}\n{self.hub_log()[-2000:]}")
        return r

    def proxy_routes(self):
        r = requests.get(self.proxy_api + "/api/routes", headers={"Authorization": f"token {self.proxy_token}"},
                         timeout=10)
        r.raise_for_status()
        return r.json()

    def proxy_state(self, route):
        r = requests.get(self.proxy_api + "/api/migration/state" + route,
                         headers={"Authorization": f"token {self.proxy_token}"}, timeout=10)
        r.raise_for_status()
        return r.json()

    def where(self, session):
        """Which agent runs `session` (h1, h2 or None)."""
        found = [h for h, a in self.agents.items() if a.sessions().get(session, {}).get("state") == "running"]
        assert len(found) <= 1, f"{session} runs on {found}"
        return found[0] if found else None

    def start_server(self, user, options=None, timeout=120):
        """Starts a user's server through the hub's API, as the spawn page does; waits until ready."""
        r = self.api("POST", f"/hub/api/users/{user}/server", user=user, json_body=options or {})
        assert r.status_code in (201, 202), r.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/hub/api/users/{user}", user="admin").json()
            srv = model["servers"].get("")
            if srv and srv["ready"]:
                self.pids.update(tree_pids(self.hub_proc.pid))
                return srv
            if not srv or not srv.get("pending"):
                raise AssertionError(f"{user}'s server failed to start: {model}\n{self.hub_log()[-3000:]}")
            time.sleep(0.3)
        raise AssertionError(f"{user}'s server not ready after {timeout} s")

    def hub_server(self, user):
        return self.api("GET", f"/hub/api/users/{user}", user="admin").json()["servers"].get("")

    def login(self, user):
        """A browser-like session: logged in to the hub (cookies), through the proxy."""
        return elsa_hub.login(self.base, user)


def open_kernel(stack, browser, user, kernel_id=None, timeout=90):
    """Authenticates `browser` with the user's server (OAuth through the hub), starts a kernel
    unless one is given, and opens its websocket (tools/pylib/elsa_hub.py)."""
    return elsa_hub.open_kernel(stack.base, browser, user, kernel_id=kernel_id, timeout=timeout)
