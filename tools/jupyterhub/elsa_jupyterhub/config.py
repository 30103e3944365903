"""The deployment's shape, read by both ElsaSpawner (inside the hub) and elsa-hub-service (its own
process): one JSON file, so the two never disagree about hosts, ports or policies.

    {
      "hosts": [
        {"name": "h1", "socket": "/run/elsa/h1.sock", "address": "10.0.0.1",
         "peer_port": 7077, "capacity_mib": 65536, "size": "large"}
      ],
      "state_dir": "/var/lib/elsa-hub",
      "port_base": 20000,
      "proxy_api_url": "http://127.0.0.1:8001",
      "migration": {"mode": "hybrid", "max_downtime_ms": 150},
      "retention": {"keep": 3, "max_age_days": 30, "interval_s": 3600},
      "rightsizing": {"threshold": 0.8, "act": false, "interval_s": 60},
      "checkpoint_after_s": 0
    }

Each host's agent is reached one of two ways:
- `"api": "tls://10.0.0.1:7443"`: the agent's API over TLS 1.3 (`elsad --api-listen`), with
  `"ca"` (the CA of the agent's certificate, which must name that address) and the hub's
  credentials: `"token_file"` (a token of the agent's --api-tokens, scope hub) and/or `"cert"`
  and `"key"` (a client certificate from the agent's --api-client-ca). No tunnels needed.
- `"socket"`: the agent's Unix socket as the hub machine sees it (root only; a local agent, or
  one forwarded with `ssh -nNT -L /run/elsa/h1.sock:/run/elsa/elsad.sock root@h1`).
`address` is where the host's sessions answer and where its elsad listens for migrations
(`elsad --listen ADDRESS`).
"""

import dataclasses
import json
import os
import re

DEFAULT_CONFIG = "/etc/elsa/hub.json"


class ConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    socket: str = ""       # the agent's Unix socket, or
    address: str = ""
    api: str = ""          # tls://HOST:PORT of its TLS API, with:
    ca: str = ""           #   the CA of the agent's certificate
    cert: str = ""         #   the hub's client certificate and key (mutual TLS), and/or
    key: str = ""
    token_file: str = ""   #   a file holding the hub's token
    peer_port: int = 7077
    capacity_mib: int = 0  # 0: not set (no rightsizing for this host)
    size: str = ""         # a label users may ask for ("small", "large", "gpu", ...)

    @property
    def peer(self):
        return f"{self.address}:{self.peer_port}"

    @property
    def capacity_bytes(self):
        return self.capacity_mib * 2**20


@dataclasses.dataclass
class HubConfig:
    hosts: list
    state_dir: str = "/var/lib/elsa-hub"
    port_base: int = 20000
    proxy_api_url: str = "http://127.0.0.1:8001"
    migration: dict = dataclasses.field(default_factory=lambda: {"mode": "hybrid", "max_downtime_ms": 150})
    retention: dict = dataclasses.field(default_factory=lambda: {"keep": 3, "max_age_days": 0, "interval_s": 3600})
    rightsizing: dict = dataclasses.field(default_factory=lambda: {"threshold": 0.8, "act": False, "interval_s": 60})
    checkpoint_after_s: int = 0

    def host(self, name):
        for h in self.hosts:
            if h.name == name:
                return h
        raise ConfigError(f"no host named {name!r} (configured: {', '.join(h.name for h in self.hosts)})")

    @property
    def migrations_dir(self):
        return os.path.join(self.state_dir, "migrating")

    def home_for(self, username):
        return os.path.join(self.state_dir, "home", username)


def _check_reach(host, where):
    if not host.address:
        raise ConfigError(f"{where}: needs 'address' (where its sessions answer)")
    if bool(host.socket) == bool(host.api):
        raise ConfigError(f"{where}: give exactly one of 'socket' (a Unix socket) and 'api' (tls://HOST:PORT)")
    if not host.api:
        return
    if not re.fullmatch(r"tls://(\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+):[0-9]{1,5}", host.api):
        raise ConfigError(f"{where}: 'api' must be tls://HOST:PORT, not {host.api!r} (plain TCP is never offered)")
    if not host.ca:
        raise ConfigError(f"{where}: 'api' needs 'ca', the CA of the agent's certificate")
    if bool(host.cert) != bool(host.key):
        raise ConfigError(f"{where}: a client certificate needs both 'cert' and 'key'")
    if not host.cert and not host.token_file:
        raise ConfigError(f"{where}: 'api' needs the hub's credentials: 'token_file' and/or 'cert' and 'key'")


def load(path=None):
    path = path or os.environ.get("ELSA_HUB_CONFIG", DEFAULT_CONFIG)
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read Elsa's hub config {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    return parse(raw, path)


def parse(raw, where="config"):
    if not isinstance(raw, dict) or not isinstance(raw.get("hosts"), list) or not raw["hosts"]:
        raise ConfigError(f"{where}: needs a non-empty list 'hosts'")
    hosts = []
    for i, h in enumerate(raw["hosts"]):
        try:
            host = Host(**h)
        except TypeError as e:
            raise ConfigError(f"{where}: host #{i + 1}: {e}") from None
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", host.name):
            raise ConfigError(f"{where}: host name {host.name!r}: letters, digits, '.', '_', '-' only")
        _check_reach(host, f"{where}: host {host.name!r}")
        hosts.append(host)
    if len({h.name for h in hosts}) != len(hosts):
        raise ConfigError(f"{where}: host names must be unique")
    fields = {f.name for f in dataclasses.fields(HubConfig)} - {"hosts"}
    unknown = set(raw) - fields - {"hosts"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    cfg = HubConfig(hosts=hosts, **{k: v for k, v in raw.items() if k in fields and not isinstance(v, dict)})
    for k in ("migration", "retention", "rightsizing"):
        getattr(cfg, k).update(raw.get(k, {}))
    return cfg


# Session names. elsad names are [A-Za-z0-9._-]; JupyterHub names are anything. Everything
# outside [a-z0-9.] is written as _XX (hex), so the mapping is reversible and two users can
# never share a session; '--' separates a named server.
_SAFE = re.compile(r"[a-z0-9.]")


def _escape(text):
    return "".join(c if _SAFE.fullmatch(c) else "".join(f"_{b:02x}" for b in c.encode()) for c in text)


def _unescape(text):
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "_":
            out += bytes.fromhex(text[i + 1:i + 3])
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode()


def session_name(username, server_name=""):
    name = "jh-" + _escape(username) + (("--" + _escape(server_name)) if server_name else "")
    if len(name) > 100:  # elsad allows 128, and checkpoint ids append a 20-character time
        raise ConfigError(f"user/server name too long for a session: {username!r} {server_name!r}")
    return name


def parse_session_name(name):
    """(username, server_name) for a hub session name, None for any other session."""
    if not name.startswith("jh-"):
        return None
    user, _, server = name[3:].partition("--")
    try:
        return _unescape(user), _unescape(server)
    except (ValueError, UnicodeDecodeError):
        return None


def route_path(username, server_name=""):
    """The proxy route of a user's server (CHP path, no trailing slash), as JupyterHub adds it
    with the default base_url '/'."""
    from urllib.parse import quote

    path = "/user/" + quote(username, safe="")
    return path + ("/" + quote(server_name, safe="") if server_name else "")
