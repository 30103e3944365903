"""The README's operator guide, run as written: `tools/hub-demo --check` stands the whole stack up on
simulated hosts from the guide's own files (tools/jupyterhub/examples/) and checks that a user gets
the notebook UI from a server on another host, runs a cell, and keeps it across a move. This runs
it and removes whatever it might leave (namespaces, processes, files), whatever happens. Also: the
guide's config loads as the README says, and the README shows what the files hold.

ctest runs this file on its own (e2e_hub_demo): it must not share a process with the `stack`
fixture, whose thread lives on another deployment's h3."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from hubstack import REPO, artifacts_dir
from elsa_agent import tree_pids  # noqa: E402 - tools/pylib, put on the path by hubstack
from elsa_hosts import SimulatedHosts  # noqa: E402

DEMO = os.path.join(REPO, "tools", "hub-demo")
EXAMPLES = os.path.join(REPO, "tools", "jupyterhub", "examples")
DEMO_TIMEOUT_S = 240  # about 25 s on 2 cores; the rest is for a loaded CI machine


def _leftovers(prefix, paths):
    """Ends and removes what a demo run left: its hosts (and everything running in them), any
    process naming its files. Returns what had to be cleaned, for the test to report."""
    left = []
    hosts = SimulatedHosts.discover(prefix)
    if hosts is not None:
        left.append(f"namespaces {hosts.exists()}")
        hosts.remove()
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        if pid != os.getpid() and any(p in cmdline for p in paths):
            left.append(f"process {pid} {cmdline.replace(chr(0), ' ')[:120]}")
            for p in tree_pids(pid):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
    for p in paths:
        if os.path.exists(p):
            left.append(f"files {p}")
            subprocess.run(["rm", "-rf", "--one-file-system", p], check=False)
    return left


def test_the_operators_guide_gives_a_user_a_notebook_on_another_host():
    if os.geteuid() != 0:
        pytest.fail("tools/hub-demo needs root (network namespaces, CRIU): run the tests as root")
    prefix = f"hdt{os.getpid() % 10000}"
    logs = os.path.join(artifacts_dir(), "hub-demo")
    proc = subprocess.Popen([DEMO, "--check", "--prefix", prefix, "--logs", logs], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.send_signal(signal.SIGTERM)  # its own teardown first
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            for p in tree_pids(proc.pid):
                os.kill(p, signal.SIGKILL)
            out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Its work folder and the agents' folders, as it printed them.
    paths = sorted(set(re.findall(r"(/tmp/elsa-hub-demo-[A-Za-z0-9_]+)", out or "")) |
                   {os.path.dirname(s) for s in re.findall(r"--socket (/tmp/elsa-[A-Za-z0-9_]+/elsad\.sock)", out or "")})
    left = _leftovers(prefix, paths)
    assert not timed_out, f"tools/hub-demo --check took over {DEMO_TIMEOUT_S} s:\n{out[-6000:]}"
    assert proc.returncode == 0, f"tools/hub-demo --check failed ({proc.returncode}); logs in {logs}:\n{out[-8000:]}"
    for what in ("the classic notebook's file browser", "answer = 6 * 7 -> 42", "answer + 1 -> 43", "== all good"):
        assert what in out, f"tools/hub-demo said nothing like {what!r}:\n{out[-4000:]}"
    assert re.search(r"ready in [\d.]+ s, on h[12]:", out), out[-4000:]
    assert not left, f"tools/hub-demo left behind (now removed): {left}"
    # The install and run commands it ran are the README's, but for where things are.
    work = re.search(r"(/tmp/elsa-hub-demo-[A-Za-z0-9_]+)", out).group(1)
    proxy_bin = os.environ.get("ELSA_PROXY_BIN", os.path.join(REPO, "build", "proxy", "elsa-proxy"))
    guide = _guide()
    ran = re.findall(r"^  \$ (.*)$", out[out.index("== the hub machine"):out.index("the hub answers at")], re.M)
    assert len(ran) == 5, ran
    for line in ran:
        for here, there in [(f"{work}/elsa-hub", "/opt/elsa-hub"), (f"{work}/src/jupyterhub", "tools/jupyterhub"),
                            (f"{work}/hub.env", "/etc/elsa/hub.env"), (proxy_bin, "elsa-proxy"),
                            (os.path.join(EXAMPLES, "jupyterhub_config.py"), "/etc/elsa/jupyterhub_config.py")]:
            line = line.replace(here, there)
        assert line in guide, f"tools/hub-demo ran `{line}`, which the README's operator guide does not show"


# The guide's config, loaded the way JupyterHub loads it --------------------------------------------
def _load_config(monkeypatch, **env):
    from traitlets.config.loader import PyFileConfigLoader

    for k in list(os.environ):
        if k.startswith("ELSA_HUB_") or k == "CONFIGPROXY_AUTH_TOKEN":
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return PyFileConfigLoader("jupyterhub_config.py", path=EXAMPLES).load_config()


BASE_ENV = {"ELSA_HUB_IP": "10.0.0.3", "ELSA_HUB_ADMINS": "ops-alice", "ELSA_HUB_USERS": "alice,bob",
            "CONFIGPROXY_AUTH_TOKEN": "t" * 64}


def test_the_guides_config_puts_the_hub_where_other_hosts_reach_it(monkeypatch):
    c = _load_config(monkeypatch, **BASE_ENV)
    assert c.JupyterHub.hub_bind_url == "http://10.0.0.3:8081"
    assert c.JupyterHub.hub_connect_ip == "10.0.0.3"
    assert c.JupyterHub.spawner_class == "elsa" and c.ElsaSpawner.config_file == "/etc/elsa/hub.json"
    assert c.ConfigurableHTTPProxy.should_start is False and c.ConfigurableHTTPProxy.auth_token == "t" * 64
    # PAM by default: the hub machine's accounts, only those named, the admins among them.
    assert c.JupyterHub.authenticator_class == "pam" and c.PAMAuthenticator.open_sessions is False
    assert c.Authenticator.admin_users == {"ops-alice"}
    assert c.Authenticator.allowed_users == {"ops-alice", "alice", "bob"}
    assert "api_tokens" not in c.JupyterHub
    (service,) = c.JupyterHub.services
    assert service["command"][:3] == [sys.executable, "-m", "elsa_jupyterhub.service"]
    assert service["environment"] == {"CONFIGPROXY_AUTH_TOKEN": "t" * 64}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["elsa-admin"]["users"] == ["ops-alice"]


def test_the_guides_config_takes_the_demo_authenticator_and_an_admin_token(monkeypatch):
    c = _load_config(monkeypatch, **BASE_ENV, ELSA_HUB_AUTHENTICATOR="dummy", ELSA_HUB_PASSWORD="pw",
                     ELSA_HUB_ADMIN_TOKEN="a" * 64, ELSA_HUB_CONFIG="/srv/hub.json", ELSA_HUB_DATA="/srv/hub")
    assert c.JupyterHub.authenticator_class == "dummy" and c.DummyAuthenticator.password == "pw"
    assert c.JupyterHub.api_tokens == {"a" * 64: "ops-alice"}
    assert c.ElsaSpawner.config_file == "/srv/hub.json"
    assert c.JupyterHub.db_url == "sqlite:////srv/hub/jupyterhub.sqlite"


@pytest.mark.parametrize("missing", ["ELSA_HUB_IP", "CONFIGPROXY_AUTH_TOKEN", "ELSA_HUB_ADMINS"])
def test_the_guides_config_says_which_setting_is_missing(monkeypatch, missing):
    env = {k: v for k, v in BASE_ENV.items() if k != missing}
    with pytest.raises(SystemExit, match=missing):
        _load_config(monkeypatch, **env)


# The README shows what the files hold -----------------------------------------------------------------
def _guide():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    start = readme.index("## JupyterHub: the operator's guide")
    return readme[start:readme.index("\n## ", start + 1)]


def test_the_readme_shows_the_guides_files_as_they_are():
    guide = _guide()
    blocks = re.findall(r"```(\w*)\n(.*?)```", guide, re.S)
    with open(os.path.join(EXAMPLES, "hub.json")) as f:
        hub_json = json.load(f)
    shown_json = [json.loads(b) for lang, b in blocks if lang == "json"]
    assert shown_json == [hub_json], "the README's hub.json is not tools/jupyterhub/examples/hub.json"
    with open(os.path.join(EXAMPLES, "jupyterhub_config.py")) as f:
        config_lines = {line.strip() for line in f}
    with open(os.path.join(EXAMPLES, "hub.env")) as f:
        env_lines = {line.strip() for line in f}
    for lang, block in blocks:
        lines = [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
        if lang == "python":
            assert not [line for line in lines if line not in config_lines and line != "..."], \
                "lines of the README's jupyterhub_config.py excerpt are not in the file"
        if lang == "ini":  # hub.env
            assert not [line for line in lines if line not in env_lines], \
                "lines of the README's hub.env excerpt are not in the file"
    for needed in ("tools/jupyterhub/examples/jupyterhub_config.py", "tools/jupyterhub/examples/hub.env",
                   "tools/jupyterhub/examples/hub.json", "tools/hub-demo",
                   "/usr/bin/python3 -m venv --system-site-packages /opt/elsa-hub",
                   "/opt/elsa-hub/bin/pip install --no-build-isolation --no-deps --no-index tools/jupyterhub",
                   "set -a; . /etc/elsa/hub.env; set +a",
                   "--error-target \"http://$ELSA_HUB_IP:8081/hub/error\"",
                   "/opt/elsa-hub/bin/python3 -m jupyterhub -f /etc/elsa/jupyterhub_config.py"):
        assert needed in guide, f"the README's operator guide lacks {needed!r} (tools/hub-demo runs it)"
