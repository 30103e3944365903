# JupyterHub with Elsa: the README's operator guide, as a file. Copy it to /etc/elsa/ unchanged;
# tools/hub-demo runs this very file on simulated hosts. Whatever differs per deployment comes
# from the environment, normally /etc/elsa/hub.env (see hub.env next to this file):
#   set -a; . /etc/elsa/hub.env; set +a
#   /opt/elsa-hub/bin/python3 -m jupyterhub -f /etc/elsa/jupyterhub_config.py
import os
import sys

c = get_config()  # noqa: F821 - JupyterHub's config loader provides it


def setting(name, default=None):
    value = os.environ.get(name, "").strip() or default
    if value is None:
        sys.exit(f"jupyterhub_config.py: set {name} (in /etc/elsa/hub.env, see the README's operator guide)")
    return value


def names(name):
    return [n.strip() for n in setting(name, "").split(",") if n.strip()]


hub_ip = setting("ELSA_HUB_IP")                           # this machine, as the hosts' servers reach it
elsa_config = setting("ELSA_HUB_CONFIG", "/etc/elsa/hub.json")
data_dir = setting("ELSA_HUB_DATA", "/var/lib/elsa-jupyterhub")
admins, users = names("ELSA_HUB_ADMINS"), names("ELSA_HUB_USERS")
proxy_token = setting("CONFIGPROXY_AUTH_TOKEN")             # elsa-proxy's API token (the same variable)

# The hub's API where servers on other hosts reach it (JupyterHub's default, 127.0.0.1:8081, is
# this machine only: a server elsewhere never reaches it and its spawn times out). Servers are
# told to connect to the same address (JUPYTERHUB_API_URL).
c.JupyterHub.hub_bind_url = f"http://{hub_ip}:8081"
c.JupyterHub.hub_connect_ip = hub_ip
c.JupyterHub.db_url = f"sqlite:///{data_dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{data_dir}/jupyterhub_cookie_secret"

# Who logs in. pam (JupyterHub's default, offline): the hub machine's accounts and passwords (the
# hub runs as root, so PAM may read them). dummy: any allowed name with ELSA_HUB_PASSWORD, for a
# demo or a test only (tools/hub-demo: it adds no accounts to the machine).
authenticator = setting("ELSA_HUB_AUTHENTICATOR", "pam")
if authenticator == "pam":
    c.JupyterHub.authenticator_class = "pam"
    c.PAMAuthenticator.open_sessions = False  # servers run on other hosts, not in a session here
elif authenticator == "dummy":
    c.JupyterHub.authenticator_class = "dummy"
    c.DummyAuthenticator.password = setting("ELSA_HUB_PASSWORD")
else:
    sys.exit(f"jupyterhub_config.py: ELSA_HUB_AUTHENTICATOR is pam or dummy, not {authenticator!r}")
if not admins:
    sys.exit("jupyterhub_config.py: set ELSA_HUB_ADMINS (at least one admin user)")
c.Authenticator.admin_users = set(admins)
c.Authenticator.allowed_users = set(users) | set(admins)  # nobody else, not even other system accounts
if os.environ.get("ELSA_HUB_ADMIN_TOKEN"):
    # An API token of the first admin, for scripts (drain, migrate). Or log in and make one at /hub/token.
    c.JupyterHub.api_tokens = {os.environ["ELSA_HUB_ADMIN_TOKEN"]: admins[0]}

# Users' servers are Elsa sessions on the hosts of hub.json: stopping one checkpoints it,
# starting restores it. ElsaSpawner starts the classic notebook UI (ElsaSpawner.singleuser_app).
c.JupyterHub.spawner_class = "elsa"                        # elsa_jupyterhub.ElsaSpawner
c.ElsaSpawner.config_file = elsa_config
c.ElsaSpawner.poll_interval = 10      # how soon the hub records a server another host now runs
c.Spawner.start_timeout = 120         # a large checkpoint restored, then moved to the host asked for
c.Spawner.http_timeout = 60
c.JupyterHub.cleanup_servers = False  # a hub restart leaves servers running (else: checkpoints them all)

# elsa-proxy runs on its own (started before the hub), so hub restarts do not cut browsers' websockets.
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:8001"
c.ConfigurableHTTPProxy.auth_token = proxy_token

# elsa-hub-service (admin page, migrations, drain), started by the hub with this Python.
c.JupyterHub.custom_scopes = {"custom:elsa:admin": {"description": "Elsa: act on every user's sessions"}}
c.JupyterHub.load_roles = [
    {"name": "user", "scopes": ["self", "access:services!service=elsa"]},  # users' API tokens may call it
    {"name": "elsa-admin", "scopes": ["custom:elsa:admin"], "users": admins},
    {"name": "elsa-service", "services": ["elsa"],
     "scopes": ["list:users", "read:users", "read:servers", "admin:server_state", "delete:servers"]},
]
c.JupyterHub.services = [{
    "name": "elsa", "url": "http://127.0.0.1:10101", "oauth_no_confirm": True,
    "oauth_client_allowed_scopes": ["custom:elsa:admin"],
    "command": [sys.executable, "-m", "elsa_jupyterhub.service", "--config", elsa_config],
    "environment": {"CONFIGPROXY_AUTH_TOKEN": proxy_token},
}]
